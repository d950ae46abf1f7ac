"""Joint (several-modality) models: one modality given, the others generated.

``sampler.condition_on: image`` segments held-out canvases (label maps generated, scored by
mIoU against the true maps); ``labels`` draws images for held-out label maps (scored by the
image metrics); None generates every modality. The given examples are the first
``num_samples`` held-out examples in order (cycled), the same for every seed and sampler, so
settings are compared on the same inputs. The family applies to every dataset with
modalities (``DatasetShape.modalities``), whatever its name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from harness.data.types import DatasetShape
from harness.errors import UserError
from harness.evaluation import MetricResult, SampleSet, miou_result
from harness.evaluation.uncertainty import t_interval
from harness.tasks.base import GenerationInputs, Scores, Task, Trial, check_step_counts, cycled
from models.backbone import ModelConfig
from models.modalities import GivenModalities, Layout

# tab10's colours for the label classes 1..10 (cycled beyond); background (0) black.
PALETTE = torch.tensor(
    [[0, 0, 0], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
     [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]]
) / 255.0  # fmt: skip
GENERATED_MAPS = "none (the generated label maps themselves)"
IMAGE, LABELS = "image", "labels"


def label_colours(maps: Tensor) -> Tensor:
    """Label maps (N, H, W) -> (N, 3, H, W) colours; class c > 0 takes colour 1 + (c - 1) % 10."""
    index = torch.where(maps > 0, 1 + (maps - 1) % (len(PALETTE) - 1), 0)
    return PALETTE[index].permute(0, 3, 1, 2)


class Joint(Task):
    """Segmentation as unmasking, images for label maps, or joint generation of every modality."""

    name = "joint generation"

    def applies(self, trial: Trial, shape: DatasetShape) -> bool:
        return bool(shape.modalities)

    def claim(self, trial: Trial, shape: DatasetShape) -> str:
        return f"data.name {trial.data.name!r} has modalities {[m.name for m in shape.modalities]}"

    def check(self, trial: Trial, shape: DatasetShape) -> None:
        names = [m.name for m in shape.modalities]
        given = trial.sampler.condition_on
        if given is not None and given not in names:
            raise UserError(
                f"sampler.condition_on: {given!r} is not a modality of dataset {trial.data.name!r}; "
                f"expected one of {names} or null (joint generation)"
            )
        if trial.model.text is not None:
            raise UserError(
                f"model.text: dataset {trial.data.name!r} is joint (modalities {names}); text conditioning "
                "of a joint model is not supported"
            )
        for modality in shape.modalities:
            self.check_patch(trial, DatasetShape(modality.grid, modality.vocab_size, 0))
        generated = [m for m in shape.modalities if m.name != given]
        check_step_counts(trial, sum(math.prod(m.grid) for m in generated))
        self.check_metrics(trial, shape)

    def check_mask_metric(self, trial: Trial, where: str, name: str) -> None:
        if trial.sampler.condition_on != IMAGE:
            raise UserError(
                f"{where}: {name!r} scores label maps generated for given images; it needs "
                f"sampler.condition_on: image, got {trial.sampler.condition_on!r}"
            )

    def model_config(self, trial: Trial, shape: DatasetShape) -> ModelConfig:
        """One segment per modality, each with its own vocabulary and [MASK]."""
        return ModelConfig.joint(Layout(shape.modalities), **self.model_fields(trial, shape))

    def allowed_tokens(self, shape: DatasetShape) -> Tensor | None:
        return Layout(shape.modalities).allowed()[:, : shape.vocab_size]

    def given_tokens(self, trial: Trial, num_samples: int) -> Tensor:
        """(N, L): the given modality of the first N held-out examples (cycled), the rest [MASK]."""
        heldout = self.heldout(trial)
        layout = heldout.tokenizer.layout
        given = trial.sampler.condition_on
        return layout.join({given: layout.split(heldout.tokens[cycled(num_samples, len(heldout))])[given]})

    def generation_inputs(self, trial: Trial, net: Any, num_samples: int) -> GenerationInputs:
        """The given modality clamped at t = 1 (``models.modalities.GivenModalities``)."""
        if trial.sampler.condition_on is None:
            return GenerationInputs(net)
        wrapped = GivenModalities(net, net.config.layout, [trial.sampler.condition_on])
        return GenerationInputs(wrapped, x_init=self.given_tokens(trial, num_samples))

    def baseline_tokens(self, trial: Trial, tokens: Tensor) -> Tensor:
        """A data baseline's samples with the given modality put back (its chance level at the task)."""
        if trial.sampler.condition_on is None:
            return tokens
        given = self.given_tokens(trial, tokens.shape[0])
        layout = self.heldout(trial).tokenizer.layout
        return torch.where(given == layout.mask_ids(), tokens, given)

    def preview(self, trial: Trial, samples: SampleSet) -> Tensor:
        """Each image beside its label map in colour (N, 3, H, 2 W), when the data has both."""
        tokenizer = self.heldout(trial).tokenizer
        names = [m.name for m in tokenizer.layout.modalities]
        if IMAGE not in names or LABELS not in names:
            return samples.images
        maps = tokenizer.decode_labels(samples.tokens)  # (N, H, W)
        images = samples.images
        if images.shape[-2:] != maps.shape[-2:]:  # label maps on the token grid: nearest up to the image
            maps = torch.nn.functional.interpolate(maps[:, None].float(), size=images.shape[-2:]).long()[:, 0]
        return torch.cat([images.expand(-1, 3, -1, -1), label_colours(maps)], dim=3)

    def score(self, trial: Trial, sets: list[SampleSet]) -> Scores:
        """mIoU of the generated label maps against the given examples' true maps, over the seeds.

        The label maps are scored as they are: no segmentation network stands between them and
        the truth, so the protocol names none, and every sampler, checkpoint and baseline scored on
        the same held-out maps shares one protocol (the model is what is compared, not part of how)."""
        if len(self.feature_metrics(trial)) == len(trial.eval.metrics):
            return {}, {}, {}
        heldout = self.heldout(trial)
        tokenizer = heldout.tokenizer
        results: list[MetricResult] = []
        for s in sets:
            target = tokenizer.decode_labels(
                heldout.tokens[cycled(s.tokens.shape[0], len(heldout))]
            )  # (N, H, W)
            results.append(
                miou_result(
                    tokenizer.decode_labels(s.tokens),
                    target,
                    tokenizer.layout.modalities[tokenizer.layout.index(LABELS)].vocab_size,
                    segmenter=GENERATED_MAPS,
                    segmenter_sha256="none",
                    reference=f"{trial.data.name}/heldout label maps",
                    sample_seed=int(s.meta["sample_seed"]),
                )
            )
        mean, low, high = t_interval([r.value for r in results])
        protocol = dataclasses.replace(
            results[0].protocol,
            sample_seeds=tuple(r.protocol.sample_seeds[0] for r in results),
            uncertainty=f"student-t 95% over {len(results)} sample sets" if len(results) > 1 else "none",
        )
        key = results[0].name
        metrics, intervals = {key: mean}, ({key: [low, high]} if low is not None else {})
        protocols = {key: {**protocol.to_dict(), "key": protocol.protocol_key(), "direction": "max"}}
        return metrics, intervals, protocols


TASK = Joint()
