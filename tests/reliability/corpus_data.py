"""The bad data options of the corpus (tests/reliability/corpus.py gathers them into CASES): sizes a
split or a model could not hold, held-out counts that leave no training image, tokenizer settings
beyond their ranges or fixed by the data, generator seeds numpy cannot take. Each is refused at
validation, naming the option and its value, before any data is made or read.
"""

from __future__ import annotations

from typing import Any

from corpus_kit import Case, override, study, validate

ANIMALS = {"eval.extractor": "animals-cnn"}
EXTRA = {"extractor": "digits-cnn", "num_reference": 1501}  # digits' train split holds 1,500
SHARD_OPTIONS = {"path": "@TMP@/shards", "grid": [8, 8], "vocab_size": 16}


def options(id: str, dataset: str, values: dict[str, Any], *expect: str) -> Case:
    more = ANIMALS if dataset == "animals" else {}
    return override(id, {"data.name": dataset, "data.options": values, **more}, *expect)


def tokenizer(id: str, values: dict[str, Any], *expect: str) -> Case:
    return options(id, "animals", {"tokenizer": values}, *expect)


def shards(id: str, values: dict[str, Any], *expect: str) -> Case:
    return options(id, "shards", {**SHARD_OPTIONS, **values}, *expect)


DATA_CASES: list[Case] = [
    options("canvas-a-hundred-thousand", "digit-canvases", {"canvas": 100_000}, "options.canvas", "100000"),
    options("canvases-a-trillion", "digit-canvases", {"num_train": 10**12}, "options.num_train", str(10**12)),
    options("canvases-128-too-many", "digit-canvases", {"canvas": 128, "num_heldout": 10**5}, "num_heldout"),
    options("captioned-canvas-4096", "captioned-canvases", {"canvas": 4096}, "data.options.canvas", "4096"),
    options("animals-heldout-all", "animals", {"num_heldout": 9716}, "data.options.num_heldout", "9716"),
    options("animals-seed-negative", "animals", {"seed": -1}, "data.options.seed", "-1"),
    options("digits-seed-beyond-32-bits", "digits", {"seed": 2**40}, "data.options.seed", str(2**40)),
    tokenizer("codebook-a-billion", {"codebook_size": 10**9}, "tokenizer.codebook_size", "1000000000"),
    tokenizer("tokenizer-lr-nan", {"lr": float("nan")}, "data.options.tokenizer.lr", "nan"),
    tokenizer("tokenizer-image-size", {"image_size": 56}, "data.options.tokenizer", "image_size"),
    shards("shards-vocab-a-trillion", {"vocab_size": 10**12}, "data.options.vocab_size", "1000000000000"),
    shards("shards-grid-a-million-squared", {"grid": [10**6, 10**6]}, "data.options.grid", "1000000"),
    shards("shards-negative-classes", {"num_classes": -3}, "data.options.num_classes", "-3"),
    override(
        "extra-reference-beyond-digits", {"eval.extra_protocols": [EXTRA]}, "num_reference", "1501", "1500"
    ),
    override(
        "guidance-without-a-condition",
        {"data.name": "digit-canvases", "data.options": {"num_train": 40}, "sampler.cfg_scale": 3.0},
        "sampler.cfg_scale",
        "3.0",
        "no condition",
    ),
    validate(
        "grid-value-twice", study(space={"sampler.num_steps": [4, 8, 4.0]}), "space.sampler.num_steps", "4"
    ),
    validate(
        "choice-value-twice",
        study(
            space={"sampler.name": {"choice": ["euler", "euler"]}},
            search={"algorithm": "random", "num_trials": 2},
        ),
        "space.sampler.name.choice",
        "euler",
    ),  # fmt: skip
    override("top-k-beyond-the-vocabulary", {"sampler.top_k": 100}, "sampler.top_k", "100", "17"),
    override("temperature-denormal", {"sampler.temperature": 1e-45}, "sampler.temperature", "1e-45"),
    override("gumbel-scale-overflowing", {"sampler.maskgit.gumbel_scale": 1e300}, "gumbel_scale"),
    override(
        "maskgit-more-steps-than-tokens",
        {"sampler.name": "maskgit", "sampler.num_steps": 65},
        "num_steps",
        "64",
    ),
    override(
        "halton-segmentation-more-steps-than-labels",
        {
            "data.name": "digit-canvases",
            "data.options": {"num_train": 40},
            "sampler.name": "halton",
            "sampler.condition_on": "image",
            "sampler.num_steps": 257,
            "eval.metrics": ["miou"],
        },
        "num_steps",
        "256",
    ),  # fmt: skip
    override(
        "precision-on-three-samples",
        {"eval.num_samples": 3, "eval.batch_size": 3, "eval.metrics": ["fid", "precision"]},
        "eval.num_samples",
        "3",
        "precision",
    ),
    override(
        "extra-recall-on-three-references",
        {"eval.extra_protocols": [{"extractor": "digits-cnn", "metrics": ["recall"], "num_reference": 3}]},
        "extra_protocols[0].num_reference",
        "3",
        "recall",
    ),
    override(
        "extra-reference-beyond-animals-train",
        {
            **ANIMALS,
            "data.name": "animals",
            "data.options": {"num_heldout": 9000},
            "eval.extra_protocols": [{"extractor": "animals-cnn", "num_reference": 800}],
        },
        "extra_protocols[0].num_reference",
        "800",
        "716",
    ),
]
