"""A task family: what differs between kinds of trial, owned by one object.

Generic code (the trial config's validation, the checkpoint store, the trial, the plan) asks the
trial's task and never tests a dataset's name or a tokenizer's attributes. ``Task`` itself is
the class-conditional (or unconditional) generation of images; a family that differs overrides
what differs (``harness.tasks.text``, ``.joint``, ``.video``). Which family a trial belongs to
is decided from capabilities (the data's modalities and grid, the model's text encoder):
``harness.tasks.registry.task_for``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harness.data.registry import get_dataset, load_dataset
from harness.data.types import DatasetShape, TokenDataset
from harness.errors import UserError
from harness.evaluation import METRICS, SampleSet
from harness.evaluation.extractors import IMAGE, INPUT_KINDS
from harness.evaluation.metrics import LABELS, MASKS, check_count
from models.backbone import ModelConfig


@dataclass(frozen=True)
class GenerationInputs:
    """What a sampler is given besides the network: ``net`` (the network, or a wrapper that
    clamps a given modality), ``x_init`` (N, L) given tokens or None, ``conditions`` (N,) class
    ids or (N, S) caption ids or None (balanced classes), and what is saved beside the samples:
    ``labels`` (N,) their classes and ``captions`` (N strings), when the task knows them."""

    net: Any
    x_init: Tensor | None = None
    conditions: Tensor | None = None
    labels: Tensor | None = None
    captions: tuple[str, ...] | None = None


# The trial config (``harness.config.trial.TrialConfig``) lives in the layer above, which asks
# the task to check it: a task reads its sections (data, model, train, sampler, eval) by name and
# never imports it.
Trial = Any
Scores = tuple[dict[str, float], dict[str, list[float]], dict[str, dict]]  # metrics, intervals, protocols


class Task:
    """Class-conditional (or, without classes, unconditional) generation of images."""

    name = "generation"
    sample_kind = IMAGE  # what samples decode to: the metrics' input kinds (IMAGE or VIDEO)

    def applies(self, trial: Trial, shape: DatasetShape) -> bool:
        """Whether a trial belongs to this family (the base family takes what no other does)."""
        return True

    def claim(self, trial: Trial, shape: DatasetShape) -> str:
        """Which field of the trial made this family claim it (named when two families claim one)."""
        return f"data.name {trial.data.name!r}"

    # ---- validation: run by TrialConfig before anything is written

    def check(self, trial: Trial, shape: DatasetShape) -> None:
        """Raises UserError for a trial this task would fail on after training."""
        self.check_patch(trial, shape)
        check_top_k(trial, shape)
        check_step_counts(trial, math.prod(shape.grid))
        if trial.sampler.condition_on is not None:
            raise UserError(
                f"sampler.condition_on: {trial.sampler.condition_on!r} is not a modality of dataset "
                f"{trial.data.name!r}, which has one; a given modality needs a joint dataset "
                "(e.g. digit-canvases)"
            )
        if trial.model.text is not None:
            raise UserError(
                f"model.text: dataset {trial.data.name!r} has no captions; expected a captioned "
                "dataset (captioned-canvases, or shards read with data.options.captions: true)"
            )
        self.check_metrics(trial, shape)

    def check_patch(self, trial: Trial, shape: DatasetShape) -> None:
        patch, grid = trial.model.patch, shape.grid
        if patch is not None and (
            len(patch) != len(grid) or any(p < 1 or g % p for g, p in zip(grid, patch, strict=True))
        ):
            raise UserError(f"model.patch: {list(patch)} does not tile the data grid {list(grid)}")

    def check_metrics(self, trial: Trial, shape: DatasetShape) -> None:
        """Every metric asked for applies to this task's samples, and every protocol that needs a
        feature extractor has one that takes them."""
        protocols = [("eval", trial.eval.extractor, trial.eval.metrics)]
        size = shape.split_size("train")  # the reference images: the training split's
        for i, extra in enumerate(trial.eval.extra_protocols):
            protocols.append((f"eval.extra_protocols[{i}]", extra.extractor, extra.metrics))
            if size is not None and extra.num_reference is not None and extra.num_reference > size:
                raise UserError(
                    f"eval.extra_protocols[{i}].num_reference: {extra.num_reference}; expected at most"
                    f" {size}, the reference images of dataset {trial.data.name!r} (its train split)"
                )
        check_counts(trial, size)
        for where, extractor, metrics in protocols:
            needs_extractor = False
            for name in metrics:
                metric = METRICS[name]
                if metric.needs == MASKS:
                    self.check_mask_metric(trial, f"{where}.metrics", name)
                    continue
                needs_extractor = True
                if self.sample_kind not in metric.kinds:
                    raise UserError(
                        f"{where}.metrics: {name} applies to {' or '.join(metric.kinds)} samples; the "
                        f"{self.name} task on dataset {trial.data.name!r} gives {self.sample_kind} samples"
                    )
                if metric.needs == LABELS and not self.has_condition_labels(trial, shape):
                    raise UserError(
                        f"{where}.metrics: {name!r} checks each sample against its condition; the trial's "
                        f"samples have none (dataset {trial.data.name!r} has no classes; expected a "
                        "captioned or class-conditional dataset)"
                    )
            if needs_extractor:
                self.check_extractor(trial, f"{where}.extractor", extractor)

    def check_extractor(self, trial: Trial, where: str, name: str | None) -> None:
        """The protocol's extractor (named, else the dataset's default) takes this task's samples."""
        if name is None:
            name = get_dataset(trial.data.name).default_extractor
            if name is None:
                raise UserError(
                    f"{where}: dataset {trial.data.name!r} has no default feature extractor; name one of "
                    f"{sorted(INPUT_KINDS)}"
                )
        kind = INPUT_KINDS.get(name)
        if kind is not None and kind != self.sample_kind:
            raise UserError(
                f"{where}: {name!r} takes {kind} inputs; the {self.name} task on dataset "
                f"{trial.data.name!r} gives {self.sample_kind} samples"
            )

    def check_mask_metric(self, trial: Trial, where: str, name: str) -> None:
        raise UserError(
            f"{where}: {name!r} scores label maps generated for given images; it needs a joint image + "
            f"label-map dataset and sampler.condition_on: image (dataset {trial.data.name!r} has none)"
        )

    def has_condition_labels(self, trial: Trial, shape: DatasetShape) -> bool:
        """Whether each sample has a class to check it against (its condition's)."""
        return shape.num_classes > 0

    # ---- the model and its training

    def model_config(self, trial: Trial, shape: DatasetShape) -> ModelConfig:
        """The network's config: the data's grid and vocabulary, its classes as the condition."""
        return ModelConfig(vocab_size=shape.vocab_size, grid=shape.grid, **self.model_fields(trial, shape))

    def model_fields(self, trial: Trial, shape: DatasetShape) -> dict[str, Any]:
        return {**trial.model.model_dump(), "num_classes": shape.num_classes, "text": None}

    def training_conditions(self, config: ModelConfig, data: TokenDataset) -> Tensor | None:
        """The condition of each training example: its class (N,), or None (unconditional)."""
        return data.labels if config.num_classes else None

    def positions(self, trial: Trial, shape: DatasetShape) -> float:
        """Transformer positions per example (the plan's FLOPs ~ parameters x positions)."""
        return float(math.prod(shape.grid)) / math.prod(trial.model.patch or (1,))

    # ---- generation

    def generation_inputs(self, trial: Trial, net: Any, num_samples: int) -> GenerationInputs:
        """Balanced class labels (drawn by ``generate``), nothing given."""
        return GenerationInputs(net)

    def allowed_tokens(self, shape: DatasetShape) -> Tensor | None:
        """(L, V) bool: the codes each position may take (a data baseline's support); None: all."""
        return None

    def baseline_tokens(self, trial: Trial, tokens: Tensor) -> Tensor:
        """A data baseline's samples put into the task (a given modality clamped)."""
        return tokens

    # ---- scoring and showing

    def feature_metrics(self, trial: Trial) -> list[str]:
        """The trial's metrics that a feature extractor scores (the evaluator's)."""
        return [m for m in trial.eval.metrics if METRICS[m].needs != MASKS]

    def score(self, trial: Trial, sets: list[SampleSet]) -> Scores:
        """Metrics the task scores itself (not through a feature extractor); none here."""
        return {}, {}, {}

    def preview(self, trial: Trial, samples: SampleSet) -> Tensor:
        """What a sample grid shows: the images (N, C, H, W)."""
        return samples.images

    def preview_count(self) -> int:
        return 100

    def heldout(self, trial: Trial) -> TokenDataset:
        return load_dataset(trial.data.name, "heldout", **trial.data.options)


def cycled(num_samples: int, count: int) -> Tensor:
    """0, 1, ..., count - 1, 0, 1, ...: the first ``num_samples`` examples of a split, cycled."""
    return torch.arange(num_samples) % count


def check_counts(trial: Trial, reference_size: int | None) -> None:
    """Each protocol scores at least as many samples, against at least as many reference images,
    as each of its metrics is defined on (precision and recall: more than their k neighbours)."""
    counts = [("eval.num_samples", trial.eval.num_samples, trial.eval.metrics)]
    for i, extra in enumerate(trial.eval.extra_protocols):
        where = f"eval.extra_protocols[{i}]"
        if extra.num_samples is not None:
            counts.append((f"{where}.num_samples", extra.num_samples, extra.metrics))
        if extra.num_reference is not None:
            counts.append((f"{where}.num_reference", extra.num_reference, extra.metrics))
        if extra.num_samples is None:
            counts.append(("eval.num_samples", trial.eval.num_samples, extra.metrics))
    if reference_size is not None:
        where = f"data.options: the train split of {trial.data.name!r} (the reference images)"
        counts.append((where, reference_size, trial.eval.metrics))
    for where, count, metrics in counts:
        check_count(where, count, metrics)


def check_guidance(trial: Trial, model: ModelConfig) -> None:
    """Classifier-free guidance mixes the network's conditional and unconditional logits: a network
    without a condition (no classes, no captions) has nothing to guide by."""
    if trial.sampler.cfg_scale != 1.0 and not model.conditional:
        raise UserError(
            f"sampler.cfg_scale: {trial.sampler.cfg_scale}; expected 1.0 (no guidance): the model of"
            f" dataset {trial.data.name!r} has no condition (no classes or captions) to guide by"
        )


def check_top_k(trial: Trial, shape: DatasetShape) -> None:
    """top_k at or above the vocabulary keeps every token: a setting that does nothing (a sweep
    over it would compare equal draws), refused naming the vocabulary."""
    k = trial.sampler.top_k
    if k is not None and k >= shape.vocab_size:
        raise UserError(
            f"sampler.top_k: {k}; expected fewer than the {shape.vocab_size} tokens of dataset"
            f" {trial.data.name!r} (top_k >= the vocabulary keeps every token: leave it out)"
        )


def check_step_counts(trial: Trial, tokens: int) -> None:
    """A sampler that commits a count of tokens per step (MaskGIT, Halton) commits at least one a
    step: at most as many steps as tokens it generates (its count rules refuse more, after training)."""
    from models.samplers import SAMPLERS

    name, steps = trial.sampler.name, trial.sampler.num_steps
    if name in SAMPLERS and hasattr(SAMPLERS[name], "counts") and steps > tokens:
        raise UserError(
            f"sampler.num_steps: {steps}; expected at most {tokens} for the {name} sampler, which commits"
            f" at least one of the {tokens} generated tokens a step"
        )
