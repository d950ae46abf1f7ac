"""The harness's extension points, used from outside the package: a dataset and a task family defined
entirely in this file, registered, validated and run through a tiny trial, then unregistered."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from harness.config.trial import ConfigError, TrialConfig, build_trial
from harness.data import registry as data_registry
from harness.data.tokenizers.pixel import PixelTokenizer
from harness.data.types import SPLITS, Dataset, DatasetShape, TokenDataset
from harness.errors import UserError
from harness.evaluation import SampleSet, load_samples
from harness.generation.sampling import save_image_grid
from harness.run.store import model_config_for
from harness.run.trial import run_trial
from harness.tasks import registry as task_registry
from harness.tasks.base import GenerationInputs, Task
from harness.tasks.registry import GENERATION

# ---- a toy dataset: 8 x 8 stripes, 17 grey levels, class 0 horizontal, class 1 vertical ----------

NAME = "toy-stripes"
GRID, LEVELS, NUM_CLASSES = (8, 8), 17, 2
SPLIT_SEEDS = {"train": 0, "heldout": 1}


def stripes(split: str = "train", *, count: int = 64, seed: int = 0) -> TokenDataset:
    """count images: every other row (class 0) or column (class 1) at a random grey level >= 4."""
    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}")
    g = torch.Generator().manual_seed(100 * seed + SPLIT_SEEDS[split])
    labels = torch.arange(count) % NUM_CLASSES  # (N,)
    level = torch.randint(4, LEVELS, (count, 1, 1), generator=g)  # (N, 1, 1)
    rows = (torch.arange(GRID[0]) % 2 == 0)[:, None].expand(GRID)  # (H, W): horizontal stripes
    pattern = torch.where(labels[:, None, None] == 0, rows, rows.T)  # (N, H, W)
    tokens = (pattern * level).reshape(count, math.prod(GRID)).long()  # (N, L) in [0, 17)
    return TokenDataset(NAME, split, tokens, labels, NUM_CLASSES, PixelTokenizer(LEVELS, GRID))


def stripes_shape(*, count: int = 64, seed: int = 0) -> DatasetShape:
    if count < 2:
        raise ValueError(f"data.options.count: {count}; expected at least 2")
    return DatasetShape(GRID, LEVELS, NUM_CLASSES)


def stripes_images(split: str = "train", *, count: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    data = stripes(split, count=count, seed=seed)
    return data.images(), data.labels


TOY_DATASET = Dataset(
    NAME, load=stripes, shape=stripes_shape, real_images=stripes_images, default_extractor=None
)


# ---- a toy task family: the two-class 8 x 8 datasets, only vertical stripes drawn, shown inverted --


class VerticalStripes(Task):
    """Claims two-class 8 x 8 single-modality data; draws class 1 only and previews the negative."""

    name = "toy vertical stripes"

    def __init__(self) -> None:
        self.generation_calls: list[int] = []

    def applies(self, trial: TrialConfig, shape: DatasetShape) -> bool:
        return (
            shape.num_classes == NUM_CLASSES
            and shape.grid == GRID
            and not shape.modalities
            and trial.model.text is None
        )

    def check(self, trial: TrialConfig, shape: DatasetShape) -> None:
        super().check(trial, shape)
        if trial.eval.num_samples % 2:
            raise UserError(
                f"eval.num_samples: {trial.eval.num_samples}; the {self.name} task expects an even number"
            )

    def generation_inputs(self, trial: TrialConfig, net, num_samples: int) -> GenerationInputs:
        self.generation_calls.append(num_samples)
        return GenerationInputs(net, conditions=torch.ones(num_samples, dtype=torch.long))

    def preview(self, trial: TrialConfig, samples: SampleSet) -> Tensor:
        return 1.0 - samples.images


# ---- fixtures and the tiny trial ---------------------------------------------------------------


@pytest.fixture
def toy_dataset() -> Iterator[Dataset]:
    data_registry.register(TOY_DATASET)
    try:
        yield TOY_DATASET
    finally:
        data_registry.unregister(NAME)


@pytest.fixture
def toy_task(toy_dataset: Dataset) -> Iterator[VerticalStripes]:
    task = task_registry.register(VerticalStripes())
    try:
        yield task
    finally:
        task_registry.unregister(task.name)


def tiny(**eval_fields) -> dict:
    return {
        "data": {"name": NAME, "options": {"count": 64}},
        "train": {"steps": 4, "batch_size": 16, "warmup_steps": 0, "checkpoint_every": 0},
        "sampler": {"num_steps": 2},
        "eval": {"num_samples": 20, "batch_size": 20, "metrics": ["fid"], **eval_fields},
    }


def test_the_toy_dataset_is_unknown_until_registered() -> None:
    with pytest.raises(ConfigError, match=f"'{NAME}'"):
        build_trial(tiny(extractor="digits-cnn"))


def test_a_registered_dataset_is_validated_through_its_own_options(toy_dataset: Dataset) -> None:
    trial = build_trial(tiny(extractor="digits-cnn"))
    assert trial.shape() == DatasetShape(GRID, LEVELS, NUM_CLASSES)
    config = model_config_for(trial)
    assert (config.vocab_size, config.grid, config.num_classes) == (LEVELS, GRID, NUM_CLASSES)
    with pytest.raises(ConfigError, match=r"data\.options\.count.*'many'"):
        build_trial({**tiny(extractor="digits-cnn"), "data": {"name": NAME, "options": {"count": "many"}}})
    with pytest.raises(ConfigError, match=r"data\.options\.cont.*did you mean 'count'"):
        build_trial({**tiny(extractor="digits-cnn"), "data": {"name": NAME, "options": {"cont": 8}}})
    with pytest.raises(ConfigError, match=r"data\.options\.count: 1"):
        build_trial({**tiny(extractor="digits-cnn"), "data": {"name": NAME, "options": {"count": 1}}})


def test_a_tiny_trial_on_the_toy_dataset_finishes_with_metrics(
    tmp_path: Path, toy_dataset: Dataset, warm_eval_cache: Path, one_thread: None
) -> None:
    trial = build_trial(tiny(extractor="digits-cnn"))
    assert trial.task() is GENERATION  # no family claims it: class-conditional generation
    record = run_trial(trial, store_root=tmp_path / "store", study_dir=tmp_path / "study")
    assert record.status == "finished", record.error
    assert math.isfinite(record.metrics["fid"]) and record.metrics["fid"] >= 0
    assert record.metrics["nfe"] == 2 and record.metrics["heldout_masked_ce"] > 0
    protocol = record.protocols["fid"]
    assert protocol["extractor"] == "digits-cnn" and protocol["reference"] == f"{NAME}/train"
    assert protocol["num_samples"] == 20 and protocol["num_reference"] == 64
    assert [step for step, _ in record.training_curve][-1] == 4
    samples = load_samples(Path(record.artifacts["samples_png"]).parent)
    assert samples.images.shape == (20, 1, *GRID)
    assert torch.equal(samples.labels, torch.arange(20) % NUM_CLASSES)  # balanced classes


def test_a_dataset_without_a_default_extractor_needs_eval_extractor(toy_dataset: Dataset) -> None:
    with pytest.raises(ConfigError, match=r"eval\.extractor"):
        build_trial(tiny())


def test_a_registered_task_family_claims_by_capability_and_refuses_at_validation(
    toy_task: VerticalStripes,
) -> None:
    trial = build_trial(tiny(extractor="digits-cnn"))
    assert trial.task() is toy_task
    assert build_trial({}).task() is GENERATION  # digits: 10 classes, not claimed
    with pytest.raises(ConfigError) as info:
        build_trial(tiny(extractor="digits-cnn", num_samples=21))
    assert "eval.num_samples: 21" in str(info.value) and toy_task.name in str(info.value)
    with pytest.raises(ConfigError, match=r"eval\.metrics.*fvd"):  # the base checks still run
        build_trial(tiny(extractor="digits-cnn", metrics=["fvd"]))
    build_trial({"eval": {"num_samples": 21}})  # its check applies to its own trials only


def grid_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def test_a_tiny_trial_runs_through_the_task_familys_hooks(
    tmp_path: Path, toy_task: VerticalStripes, warm_eval_cache: Path, one_thread: None
) -> None:
    trial = build_trial(tiny(extractor="digits-cnn"))
    record = run_trial(trial, store_root=tmp_path / "store", study_dir=tmp_path / "study")
    assert record.status == "finished", record.error
    assert math.isfinite(record.metrics["fid"])
    assert toy_task.generation_calls == [20]  # one sample seed, asked once
    grid = Path(record.artifacts["samples_png"])
    samples = load_samples(grid.parent)
    assert torch.equal(samples.labels, torch.ones(20, dtype=torch.long))  # its conditions were used
    negative = save_image_grid(1.0 - samples.images, tmp_path / "negative.png")
    positive = save_image_grid(samples.images, tmp_path / "positive.png")
    assert np.array_equal(grid_pixels(grid), grid_pixels(negative))  # grid.png shows its preview
    assert not np.array_equal(grid_pixels(grid), grid_pixels(positive))
