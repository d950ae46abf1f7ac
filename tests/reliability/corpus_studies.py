"""The bad study files of the corpus (tests/reliability/corpus.py gathers them into CASES): unknown
keys at every level, wrong types, non-finite numbers, values out of range, unsafe study names,
files that are not valid YAML or not a mapping, broken bases and paper references, plans too big
to expand, unknown names, metrics and data that do not go together, bad data options, and
resources beyond the machine.
"""

from __future__ import annotations

import yaml
from corpus_kit import (
    RUNS,
    SMALL,
    STUDY,
    Case,
    alias_bomb,
    huge_grid,
    nested,
    override,
    study,
    two_levels,
    validate,
)

SMALL_CANVASES = {"num_train": 12, "num_heldout": 6}
REFERENCE = "paper_reference: ref.yaml#entry\n"
DIGIT_CANVASES = {"data.name": "digit-canvases", "data.options": SMALL_CANVASES}
TINY_RUN = {"train.steps": 2, "eval.num_samples": 4, "eval.batch_size": 4, "sampler.num_steps": 2}
RANDOM = {"algorithm": "random", "num_trials": 2}
HUGE_GRID = huge_grid()
BILLION_TRIALS = study(
    space={"sampler.temperature": {"uniform": [0.5, 1.5]}}, search={**RANDOM, "num_trials": 10**9}
)


STUDY_CASES: list[Case] = [
    # ---- unknown keys, at every level of a study file ----
    validate("unknown-top-level-key", study(metrci="fid"), "metrci", "did you mean 'metric'"),
    validate("unknown-search-key", study(search={"algoritm": "grid"}), "search.algoritm", "'algorithm'"),
    validate("unknown-resources-key", study(resources={"cpus": 1}), "resources.cpus", "'cpu'"),
    validate("unknown-scheduler-key", study(scheduler={"grace": 2}), "scheduler.grace"),
    override("unknown-override-key", {"train.stpes": 10}, "train.stpes", "did you mean 'train.steps'"),
    override("unknown-nested-override-key", {"sampler.euler.argmax": True}, "sampler.euler.argmax"),
    override("unknown-key-inside-a-section-override", {"train": {"stpes": 5}}, "train.stpes"),
    validate("unknown-space-key", study(space={"model.widht": [8, 16]}), "model.widht", "'model.width'"),
    validate("unknown-variant-key", study(variants={"a": {"sampler.nme": "maskgit"}}), "sampler.nme"),
    validate("unknown-key-in-base", "", "trian", files=two_levels("trian: {steps: 5}\n")),
    override("unknown-data-option", {"data.options": {"colour": True}}, "data.options.colour"),
    override("unknown-scheduler-param", {"train.scheduler_params": {"bogus": 1}}, "bogus"),
    override(
        "unknown-extra-protocol-key",
        {"eval.extra_protocols": [{"extractor": "digits-cnn", "metric": ["fid"]}]},
        "extra_protocols.0.metric",
    ),
    # ---- wrong types ----
    validate("name-not-a-string", study(name=5), "name", "5"),
    validate("name-null", study(name=None), "name", "None"),
    validate("seeds-a-string", study(seeds="zero"), "seeds", "'zero'"),
    validate("seeds-empty", study(seeds=[]), "seeds"),
    validate("overrides-a-list", study(["train.steps", 5]), "overrides"),
    override("steps-a-word", {"train.steps": "many"}, "train.steps", "'many'"),
    override("lr-a-word", {"train.lr": "fast"}, "train.lr", "'fast'"),
    override("temperature-a-list", {"sampler.temperature": [1, 2]}, "sampler.temperature"),
    override("bf16-not-a-bool", {"train.bf16": "maybe"}, "train.bf16", "'maybe'"),
    override("metrics-a-string", {"eval.metrics": "fid"}, "eval.metrics", "'fid'"),
    override("patch-a-string", {"model.patch": "2x2"}, "model.patch", "'2x2'"),
    validate("concurrency-a-word", study(concurrency="two"), "concurrency", "'two'"),
    validate("mode-unknown", study(mode="maximize"), "mode", "'maximize'"),
    validate("search-algorithm-unknown", study(search={"algorithm": "bayes"}), "search.algorithm", "'bayes'"),
    validate("variant-not-a-mapping", study(variants={"a": 5}), "variants.a"),
    validate("space-axis-a-scalar", study(space={"sampler.num_steps": 5}), "space.sampler.num_steps"),
    validate(
        "space-unknown-distribution",
        study(space={"sampler.temperature": {"gaussian": [0, 1]}}),
        "space.sampler.temperature",
        "'gaussian'",
    ),
    validate(
        "space-uniform-three-bounds",
        study(space={"sampler.temperature": {"uniform": [0.5, 1, 2]}}, search=RANDOM),
        "space.sampler.temperature.uniform",
        "[low, high]",
    ),
    validate(
        "space-continuous-axis-on-grid",
        study(space={"sampler.temperature": {"uniform": [0.5, 1.5]}}),
        "sampler.temperature",
        "grid",
    ),
    validate("base-not-a-string", study(base=5), "base", "5"),
    validate(
        "space-empty-grid-axis",
        study(space={"sampler.num_steps": []}),
        "space.sampler.num_steps",
    ),
    validate(
        "space-loguniform-below-zero",
        study(space={"sampler.cfg_scale": {"loguniform": [-1.0, 2.0]}}, search=RANDOM),
        "space.sampler.cfg_scale",
    ),
    validate(
        "space-randint-empty-range",
        study(space={"sampler.top_k": {"randint": [10, 2]}}, search=RANDOM),
        "space.sampler.top_k",
    ),
    validate(
        "space-uniform-of-words",
        study(space={"sampler.temperature": {"uniform": ["low", "high"]}}, search=RANDOM),
        "space.sampler.temperature",
    ),
    # ---- non-finite numbers ----
    override("lr-nan", {"train.lr": float("nan")}, "train.lr", "nan"),
    override("lr-inf", {"train.lr": float("inf")}, "train.lr", "inf"),
    override("temperature-inf", {"sampler.temperature": float("inf")}, "sampler.temperature"),
    override("cfg-scale-nan", {"sampler.cfg_scale": float("nan")}, "sampler.cfg_scale"),
    override("mlp-ratio-minus-inf", {"model.mlp_ratio": float("-inf")}, "model.mlp_ratio"),
    override("ema-decay-nan", {"train.ema_decay": float("nan")}, "train.ema_decay"),
    override("time-scale-inf", {"model.time_scale": float("inf")}, "model.time_scale"),
    override("remask-scale-nan", {"sampler.euler.remask_scale": float("nan")}, "sampler.euler.remask_scale"),
    validate(
        "space-uniform-to-inf",
        study(space={"sampler.temperature": {"uniform": [0.5, float("inf")]}}, search=RANDOM),
        "sampler.temperature",
        "inf",
    ),
    validate("resources-cpu-nan", study(resources={"cpu": float("nan")}), "resources.cpu"),
    validate(
        "reduction-factor-nan",
        study(scheduler={"name": "asha", "reduction_factor": float("nan")}),
        "scheduler.reduction_factor",
    ),
    # ---- out of range ----
    override("steps-1e12", {"train.steps": 10**12}, "train.steps", "1000000000000"),
    validate("steps-1e12-float", study() + "overrides: {train.steps: 1.0e12}\n", "train.steps"),
    validate("steps-1e12-text", study() + "overrides: {train.steps: 1e12}\n", "train.steps", "1e12"),
    override("num-samples-1e12", {"eval.num_samples": 10**12}, "eval.num_samples"),
    override("sampler-steps-1e9", {"sampler.num_steps": 10**9}, "sampler.num_steps"),
    override("steps-zero", {"train.steps": 0}, "train.steps"),
    override("batch-size-negative", {"train.batch_size": -1}, "train.batch_size", "-1"),
    override("eval-batch-size-zero", {"eval.batch_size": 0}, "eval.batch_size"),
    override("warmup-negative", {"train.warmup_steps": -5}, "train.warmup_steps", "-5"),
    override("top-p-above-one", {"sampler.top_p": 1.5}, "sampler.top_p", "1.5"),
    override("t-eps-one", {"train.t_eps": 1.0}, "train.t_eps"),
    override("depth-zero", {"model.depth": 0}, "model.depth"),
    validate("num-trials-negative", study(search={"algorithm": "random", "num_trials": -3}), "num_trials"),
    validate("concurrency-zero", study(concurrency=0), "concurrency"),
    validate("max-failures-negative", study(max_failures=-1), "max_failures"),
    validate("workers-zero", study(resources={"workers": 0}), "resources.workers"),
    validate("gpu-negative", study(resources={"gpu": -1}), "resources.gpu"),
    validate("seeds-1001", study(seeds=list(range(1001))), "seeds"),
    validate(
        "batch-not-divisible-by-workers", study(resources={"workers": 3}), "train.batch_size", "workers"
    ),
    # ---- unsafe study names (a name is a folder under the runs root) ----
    validate("name-dot-dot", study(name="../../etc"), "name", "../../etc"),
    validate("name-absolute", study(name="/etc/passwd"), "name", "/etc/passwd"),
    validate("name-with-slash", study(name="a/b"), "name", "a/b"),
    validate("name-with-space", study(name="my study"), "name", "my study"),
    validate("name-empty", study(name=""), "name"),
    validate("name-hidden", study(name=".hidden"), "name", ".hidden"),
    validate("name-too-long", study(name="x" * 200), "name"),
    # ---- the file itself ----
    validate("yaml-syntax-error", "name: [bad\nseeds: [0\n", "study.yaml", "not valid YAML"),
    validate("yaml-tab-indent", "name: bad\noverrides:\n\ttrain.steps: 5\n", "study.yaml", "not valid YAML"),
    validate(
        "yaml-python-object-tag",
        "name: !!python/object/apply:os.mkdir ['@TMP@/pwned']\n",
        "study.yaml",
        "python/object",
    ),
    validate("yaml-python-name-tag", "name: bad\nbase: !!python/name:os.system\n", "python/name"),
    validate("alias-bomb", alias_bomb(), "study.yaml", "100,000 nodes", subprocess=True),
    validate("recursive-alias", "name: bad\nbase: " + SMALL + "\nseeds: &s [0, *s]\n", "seeds"),
    validate("deeply-nested", nested(5000), "study.yaml"),
    validate("not-utf8", b"name: caf\xe9\n", "study.yaml", "UTF-8"),
    validate("empty-file", "", "study.yaml", "mapping"),
    validate("list-at-top-level", "- name: bad\n", "study.yaml", "mapping", "list"),
    validate("scalar-at-top-level", "just a sentence\n", "study.yaml", "mapping", "str"),
    validate("file-over-1mb", "name: big\n" + "#" * (2 << 20) + "\n", "study.yaml", "bytes"),
    validate(
        "duplicate-key",
        study({"train.steps": 5}) + "overrides: {train.lr: 0.1}\n",
        "overrides",
    ),
    Case("study-is-a-directory", ("validate", "@TMP@/folder", *RUNS), ("@TMP@/folder",), {"folder/x": "x"}),
    # ---- bases and paper references ----
    validate("missing-base", study(base="nowhere.yaml"), "nowhere.yaml", "does not exist"),
    validate(
        "base-cycle",
        "",
        "cycle",
        "a.yaml",
        files={
            "study.yaml": yaml.safe_dump({"name": "bad", "base": "a.yaml"}),
            "a.yaml": "base: b.yaml\n",
            "b.yaml": "base: a.yaml\n",
        },
    ),
    validate("base-self-cycle", "", "cycle", files=two_levels("base: base.yaml\n")),
    validate("base-a-list", "", "base.yaml", "mapping", files=two_levels("- 1\n- 2\n")),
    validate("base-not-utf8", "", "base.yaml", "UTF-8", files=two_levels(b"train: {lr: 0.\xff}\n")),
    validate("base-a-directory", study(base="."), "@TMP@"),
    validate("missing-paper-reference", study() + REFERENCE, "ref.yaml", "does not exist"),
    validate(
        "paper-reference-no-entry",
        study() + REFERENCE,
        "paper_reference",
        "'entry'",
        files={"ref.yaml": "other: {}\n"},
    ),
    validate(
        "paper-reference-bad-finding-kind",
        study() + REFERENCE,
        "paper_reference",
        "'best'",
        files={"ref.yaml": "entry: {findings: [{kind: best}]}\n"},
    ),
    validate(
        "paper-reference-finding-without-its-axis",
        study() + REFERENCE,
        "interior_optimum",
        "['axis']",
        files={"ref.yaml": "entry: {findings: [{kind: interior_optimum}]}\n"},
    ),
    validate(
        "paper-reference-finding-without-its-sides",
        study() + REFERENCE,
        "at_least_as_good",
        "['key', 'a', 'b']",
        files={"ref.yaml": "entry: {findings: [{kind: at_least_as_good}]}\n"},
    ),
    validate(
        "paper-reference-entry-a-number",
        study() + REFERENCE,
        "paper_reference",
        "entry",
        files={"ref.yaml": "entry: 5\n"},
    ),
    validate(
        "paper-reference-finding-a-string",
        study() + REFERENCE,
        "paper_reference",
        "oops",
        files={"ref.yaml": "entry: {findings: [oops]}\n"},
    ),
    # ---- plans too big to expand: refused fast, with the count (in process: a tight time bound) ----
    validate("huge-grid-60-to-the-4", HUGE_GRID, "12,960,000", "max_trials", time_limit=10),
    validate("num-trials-1e9", BILLION_TRIALS, "1,000,000,000", "max_trials", time_limit=10),
    validate("huge-grid-cli", HUGE_GRID, "12,960,000", "max_trials", subprocess=True),
    validate("num-trials-1e9-cli", BILLION_TRIALS, "1,000,000,000", "max_trials", subprocess=True),
    # ---- unknown names, with a did-you-mean ----
    override("unknown-dataset", {"data.name": "digitz"}, "'digitz'", "did you mean 'digits'"),
    override("unknown-sampler", {"sampler.name": "maskgti"}, "'maskgti'", "did you mean 'maskgit'"),
    override("unknown-scheduler", {"train.scheduler": "cosin"}, "'cosin'", "did you mean 'cosine'"),
    override("unknown-loss", {"train.loss": "masked-ce"}, "'masked-ce'", "did you mean 'masked_ce'"),
    override("unknown-eval-metric", {"eval.metrics": ["fidd"]}, "'fidd'", "did you mean 'fid'"),
    override("unknown-extractor", {"eval.extractor": "inceptoin"}, "'inceptoin'", "'inception'"),
    override("unknown-maskgit-schedule", {"sampler.maskgit.schedule": "cosin"}, "'cosin'", "'cosine'"),
    override("unknown-model-size", {"model.size": "DiT-XXL"}, "'DiT-XXL'", "did you mean"),
    validate(
        "unknown-recipe",
        study(variants={"a": {"recipe": "maskgti"}}),
        "variants.a.recipe",
        "did you mean 'maskgit'",
    ),
    validate("unknown-tune-scheduler", study(scheduler={"name": "hyperband"}), "scheduler.name"),
    validate(
        "unknown-study-metric",
        study(metric="fdi"),
        "'fdi'",
        "did you mean 'fid'",
    ),
    # ---- metrics and data that do not go together ----
    override(
        "miou-without-condition-on",
        {**DIGIT_CANVASES, "eval.metrics": ["miou"]},
        "miou",
        "sampler.condition_on: image",
    ),
    override("fvd-on-digits", {"eval.metrics": ["fid", "fvd"]}, "eval.metrics", "fvd"),
    override("fid-on-moving-digits", {"data.name": "moving-digits", "eval.metrics": ["fid"]}, "fid"),
    override("text-on-digits", {"model.text": {"encoder": "learned"}}, "model.text", "'digits'"),
    override("video-extractor-on-digits", {"eval.extractor": "moving-digits-cnn3d"}, "moving-digits-cnn3d"),
    override("condition-on-image-on-digits", {"sampler.condition_on": "image"}, "condition_on"),
    validate(
        "metric-not-in-eval-metrics",
        study({"eval.metrics": ["fid"]}, metric="kid_mean"),
        "kid_mean",
        "eval.metrics",
    ),
    # ---- data options ----
    override("digits-num-heldout-negative", {"data.options": {"num_heldout": -5}}, "num_heldout", "-5"),
    override("digits-seed-a-string", {"data.options": {"seed": "a"}}, "data.options.seed", "'a'"),
    override("data-options-a-list", {"data.options": [1, 2]}, "data.options"),
    override(
        "shards-without-path",
        {"data.name": "shards", "data.options": {"grid": [8, 8], "vocab_size": 16}},
        "data.options",
        "path",
    ),
    override(
        "moving-digits-levels-99",
        {"data.name": "moving-digits", "data.options": {"levels": 99}},
        "data.options.levels",
        "99",
    ),
    override(
        "canvas-odd",
        {**DIGIT_CANVASES, "data.options": {**SMALL_CANVASES, "canvas": 15}},
        "data.options.canvas",
        "15",
    ),
    # ---- keys a study may not set where it sets trial keys, switches and numbers mixed up ----
    override("override-seed", {"seed": 3}, "overrides.seed", "seeds"),
    validate("space-seed-axis", study(space={"seed": [0, 1, 2]}), "space.seed", "seeds"),
    override("override-recipe", {"recipe": "maskgit"}, "overrides.recipe", "variant"),
    override("override-whole-section", {"train": {"steps": 20}}, "overrides.train", "train.steps"),
    validate("variant-recipe-a-list", study(variants={"a": {"recipe": ["maskgit"]}}), "variants.a.recipe"),
    override("steps-yes", {"train.steps": True}, "train.steps", "boolean"),
    override("switch-as-text", {"sampler.exclude_mask": "yes"}, "exclude_mask", "true or false"),
    validate("seeds-booleans", study(seeds=[True]), "seeds", "boolean"),
    validate("concurrency-yes", study(concurrency=True), "concurrency", "boolean"),
    validate("search-seed-negative", study(search={"seed": -1}), "search.seed", "-1"),
    validate("search-seed-beyond-32-bits", study(search={"seed": 2**32}), "search.seed"),
    validate("max-trials-a-trillion", study(search={"max_trials": 10**12}), "search.max_trials"),
    validate("name-the-mlflow-store", study(name="mlflow.db"), "mlflow.db", "runs root"),
    validate("name-the-checkpoint-store", study(name="checkpoints"), "checkpoints", "runs root"),
    validate("base-of-a-base-not-text", "", "base.yaml", "base is 5", files=two_levels("base: 5\n")),
    validate("base-name-too-long", study(base="b" * 5000), "cannot be read"),
    validate("base-with-a-nul-byte", study(base="a\x00b.yaml"), "cannot be read"),
    # ---- unbounded input is never echoed (a key or a value of 200,000 characters) ----
    override("override-key-of-200k-characters", {"k" * 200_000: 1}, "unknown config key"),
    validate("study-key-of-200k-characters", study(**{"k" * 200_000: 1}), "Extra inputs"),
    validate("space-value-of-200k-characters", study(space={"sampler.temperature": "k" * 200_000}), "space"),
    override("sampler-name-of-200k-characters", {"sampler.name": "k" * 200_000}, "unknown sampler"),
    override("data-option-of-200k-characters", {"data.options": {"k" * 200_000: 1}}, "data.options.kkk"),
    # ---- resources beyond the machine (refused before MLflow or Ray start) ----
    Case(
        "run-cpu-10000",
        ("run", STUDY, *RUNS),
        ("resources.cpu", "10000"),
        {"study.yaml": study(TINY_RUN, resources={"cpu": 10000})},
        subprocess=True,
    ),
    Case(
        "run-cpu-4000-beyond-the-machine",
        ("run", STUDY, *RUNS),
        ("resources.cpu", "4000"),
        {"study.yaml": study(TINY_RUN, resources={"cpu": 4000})},
        subprocess=True,
    ),
]
