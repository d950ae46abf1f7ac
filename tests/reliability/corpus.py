"""A corpus of bad inputs to ``run_study.py``: each case is a command line, the files it needs and the
words its refusal must name. tests/reliability/test_bad_inputs.py runs every case and
benchmarks/bad_inputs.py times them; tests/reliability/refusal.py runs and judges one case.

Paths in ``argv`` and text files say ``@TMP@`` for the case's own empty folder and ``@REPO@`` for the
repository. A case with ``bug`` set is a known harness bug: the test expects it to fail (strict xfail).
The Case type and the file writers live in corpus_kit.py, the bad study files in corpus_studies.py;
this module adds the bad command lines (evaluate and tokenize included) and gathers every case.
"""

from __future__ import annotations

import numpy as np
from corpus_data import DATA_CASES
from corpus_kit import (
    RUNS,
    STUDY,
    Case,
    empty_folder,
    images,
    pickled_object,
    plain_pickle,
    samples_npz,
    study,
    truncated,
    zip_without_arrays,
)
from corpus_studies import STUDY_CASES

SAMPLES = "@TMP@/samples"
TRAINS_FIRST = (
    "Evaluator trains digits-cnn into $UNMASK_CACHE (~5 s) before it reads the samples or checks the metric"
)
UNPICKLING = "torch.load(weights_only=True)'s UnpicklingError escapes _validated_state_dict_path: exit 1"
DIGITS_SAMPLES = samples_npz((4, 1, 8, 8))
INCEPTION = ("evaluate", SAMPLES, "--dataset", "digits", "--extractor", "inception-v3-compat")
TOKENIZE = ("tokenize", "@TMP@/images", "@TMP@/out", "--pixel-levels", "4", "--no-progress")
IMAGES = {"images": images()}


CASES: list[Case] = [
    *STUDY_CASES,
    *DATA_CASES,
    # ---- command lines ----
    Case("missing-study-file", ("validate", "@TMP@/nowhere.yaml", *RUNS), ("@TMP@/nowhere.yaml",)),
    Case("unknown-flag", ("validate", STUDY, "--bogus", *RUNS), ("--bogus",), {"study.yaml": study()}),
    Case("unknown-command", ("vaildate", STUDY), ("'vaildate'",)),
    Case("no-command", (), ("command",)),
    Case("gpu-tflops-not-a-number", ("run", STUDY, "--gpu-tflops", "abc", *RUNS), ("--gpu-tflops", "'abc'")),
    Case("gpu-tflops-nan", ("run", STUDY, "--gpu-tflops", "nan", *RUNS), ("--gpu-tflops", "'nan'")),
    Case("gpu-tflops-negative", ("run", STUDY, "--gpu-tflops", "-5", *RUNS), ("--gpu-tflops", "'-5'")),
    Case("dry-run-missing-study", ("run", "@TMP@/nowhere.yaml", "--dry-run", *RUNS), ("nowhere.yaml",)),
    Case("resume-unknown-study", ("resume", "never-ran", *RUNS), ("never-ran",)),
    Case("report-unknown-study", ("report", "never-ran", *RUNS), ("never-ran",)),
    Case(
        "report-from-ledger-of-a-study-never-run",
        ("report", STUDY, "--from-ledger", *RUNS),
        ("bad",),
        {"study.yaml": study()},
    ),
    # ---- evaluate ----
    Case(
        "evaluate-missing-samples",
        ("evaluate", SAMPLES, "--dataset", "digits"),
        (SAMPLES, "samples.npz"),
    ),
    Case(
        "evaluate-video-extractor-on-images",
        ("evaluate", SAMPLES, "--dataset", "digits", "--extractor", "moving-digits-cnn3d"),
        ("--extractor", "moving-digits-cnn3d", "videos"),
        {"samples/samples.npz": DIGITS_SAMPLES},
    ),
    Case(
        "evaluate-precision-of-three-samples",
        ("evaluate", SAMPLES, "--dataset", "digits", "--metrics", "fid", "precision"),
        ("samples: 3", "precision", "4"),
        {"samples/samples.npz": samples_npz((3, 1, 8, 8))},
    ),
    Case(
        "evaluate-default-metrics-of-three-samples",
        ("evaluate", SAMPLES, "--dataset", "digits"),
        ("samples: 3", "--metrics"),
        {"samples/samples.npz": samples_npz((3, 1, 8, 8))},
    ),
    Case(
        "evaluate-truncated-npz",
        ("evaluate", SAMPLES, "--dataset", "digits"),
        ("samples.npz",),
        {"samples/samples.npz": truncated(DIGITS_SAMPLES)},
    ),
    Case(
        "evaluate-text-named-npz",
        ("evaluate", SAMPLES, "--dataset", "digits"),
        ("samples.npz",),
        {"samples/samples.npz": "these are not samples\n"},
    ),
    Case(
        "evaluate-zip-without-arrays",
        ("evaluate", SAMPLES, "--dataset", "digits"),
        ("samples.npz", "images"),
        {"samples/samples.npz": zip_without_arrays},
    ),
    Case(
        "evaluate-wrong-image-shape",
        ("evaluate", SAMPLES, "--dataset", "digits"),
        ("samples.npz", "(4, 3, 32, 32)"),
        {"samples/samples.npz": samples_npz((4, 3, 32, 32), n_tokens=1024)},
    ),
    Case(
        "evaluate-one-sample",
        ("evaluate", SAMPLES, "--dataset", "digits"),
        ("samples.npz", "2 samples"),
        {"samples/samples.npz": samples_npz((1, 1, 8, 8))},
    ),
    Case(
        "evaluate-nan-images",
        ("evaluate", SAMPLES, "--dataset", "digits", "--metrics", "fid"),
        ("samples.npz", "NaN"),
        {"samples/samples.npz": samples_npz((4, 1, 8, 8), images=np.full((4, 1, 8, 8), np.nan, np.float32))},
    ),
    Case(
        "evaluate-meta-not-json",
        ("evaluate", SAMPLES, "--dataset", "digits"),
        ("samples.npz", "meta_json"),
        {"samples/samples.npz": samples_npz((4, 1, 8, 8), meta_json=np.array("{not json"))},
    ),
    Case(
        "evaluate-labels-too-few",
        ("evaluate", SAMPLES, "--dataset", "digits"),
        ("samples.npz", "labels"),
        {"samples/samples.npz": samples_npz((4, 1, 8, 8), labels=np.zeros(2, np.int64))},
    ),
    Case("evaluate-shards-without-path", ("evaluate", SAMPLES, "--dataset", "shards"), ("path",)),
    Case("evaluate-unknown-dataset", ("evaluate", SAMPLES, "--dataset", "digitz"), ("'digitz'", "'digits'")),
    Case(
        "evaluate-unknown-metric",
        ("evaluate", SAMPLES, "--dataset", "digits", "--metrics", "fidd"),
        ("'fidd'", "did you mean 'fid'"),
    ),
    Case(
        "evaluate-fvd-on-digits",
        ("evaluate", SAMPLES, "--dataset", "digits", "--metrics", "fvd"),
        ("fvd",),
        {"samples/samples.npz": DIGITS_SAMPLES},
    ),
    Case(
        "evaluate-pickled-weights",
        (*INCEPTION, "--weights", "@TMP@/weights.pt"),
        ("@TMP@/weights.pt",),
        {"samples/samples.npz": DIGITS_SAMPLES, "weights.pt": pickled_object},
    ),
    Case(
        "evaluate-plain-pickle-weights",
        (*INCEPTION, "--weights", "@TMP@/weights.pkl"),
        ("@TMP@/weights.pkl",),
        {"samples/samples.npz": DIGITS_SAMPLES, "weights.pkl": plain_pickle},
    ),
    Case(
        "evaluate-text-weights",
        (*INCEPTION, "--weights", "@TMP@/weights.pt"),
        ("@TMP@/weights.pt",),
        {"samples/samples.npz": DIGITS_SAMPLES, "weights.pt": "not weights\n"},
    ),
    Case(
        "evaluate-missing-weights",
        (*INCEPTION, "--weights", "@TMP@/nowhere.pt"),
        ("@TMP@/nowhere.pt",),
        {"samples/samples.npz": DIGITS_SAMPLES},
    ),
    Case("evaluate-no-weights", INCEPTION, ("weights",), {"samples/samples.npz": DIGITS_SAMPLES}),
    # ---- tokenize ----
    Case("tokenize-missing-folder", TOKENIZE, ("@TMP@/images",)),
    Case(
        "tokenize-pixel-levels-beyond-8-bit",
        ("tokenize", "@TMP@/images", "@TMP@/out", "--pixel-levels", "100000000000", "--no-progress"),
        ("--pixel-levels", "100000000000"),
        {"images": images()},
    ),
    Case("tokenize-empty-folder", TOKENIZE, ("@TMP@/images",), {"images": empty_folder}),
    Case(
        "tokenize-out-is-a-file",
        TOKENIZE,
        ("@TMP@/out",),
        {**IMAGES, "out": "an existing file\n"},
    ),
    Case("tokenize-image-size-zero", (*TOKENIZE, "--image-size", "0"), ("--image-size", "0"), IMAGES),
    Case("tokenize-image-size-negative", (*TOKENIZE, "--image-size", "-8"), ("--image-size", "-8"), IMAGES),
    Case("tokenize-image-size-a-word", (*TOKENIZE, "--image-size", "big"), ("--image-size", "'big'"), IMAGES),
    Case(
        "tokenize-pixel-levels-one",
        ("tokenize", "@TMP@/images", "@TMP@/out", "--pixel-levels", "1"),
        ("--pixel-levels", "1"),
        IMAGES,
    ),
    Case(
        "tokenize-missing-tokenizer",
        ("tokenize", "@TMP@/images", "@TMP@/out", "--tokenizer", "@TMP@/vq.ckpt"),
        ("@TMP@/vq.ckpt",),
        IMAGES,
    ),
    Case("tokenize-unknown-split", (*TOKENIZE, "--split", "valid"), ("'valid'",), IMAGES),
    Case(
        "tokenize-unknown-source-kind",
        (*TOKENIZE, "--source-kind", "zip"),
        ("'zip'",),
        IMAGES,
    ),
    Case("tokenize-frames-negative", (*TOKENIZE, "--frames", "-1"), ("--frames", "-1"), IMAGES),
    Case(
        "tokenize-reference-negative",
        (*TOKENIZE, "--reference", "-1"),
        ("--reference", "-1"),
        IMAGES,
    ),
    Case("tokenize-workers-zero", (*TOKENIZE, "--workers", "0"), ("--workers",), IMAGES),
    Case(
        "tokenize-unknown-device",
        (*TOKENIZE, "--device", "gpu9"),
        ("--device", "'gpu9'"),
        IMAGES,
    ),
    Case("tokenize-max-shards-zero", (*TOKENIZE, "--max-shards", "0"), ("--max-shards",), IMAGES),
    Case("tokenize-shard-size-zero", (*TOKENIZE, "--shard-size", "0"), ("--shard-size",), IMAGES),
    Case("tokenize-batch-size-zero", (*TOKENIZE, "--batch-size", "0"), ("--batch-size",), IMAGES),
    Case(
        "tokenize-side-of-100000", (*TOKENIZE, "--image-size", "100000"), ("--image-size", "100000"), IMAGES
    ),
    Case(
        "tokenize-grid-beyond-a-study", (*TOKENIZE, "--image-size", "300"), ("--image-size", "90,000"), IMAGES
    ),
    Case("tokenize-a-million-per-shard", (*TOKENIZE, "--shard-size", "1000000"), ("--shard-size",), IMAGES),
]
