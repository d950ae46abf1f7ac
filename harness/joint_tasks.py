"""Tasks of a joint (several-modality) model: one modality given, the others generated.

``sampler.condition_on: image`` segments held-out canvases (label maps generated, scored by
mIoU against the true maps); ``labels`` draws images for held-out label maps (scored by the
image metrics); None generates every modality. The given examples are the first
``num_samples`` held-out examples in order (cycled), the same for every seed and sampler, so
settings are compared on the same inputs.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from harness.config import TrialConfig
from harness.datasets import TokenDataset, load_dataset
from harness.evaluation import METRICS, MetricResult, SampleSet, miou_result
from harness.evaluation.metrics import MASKS
from harness.evaluation.uncertainty import t_interval
from models.modalities import GivenModalities


def mask_metrics(trial: TrialConfig) -> list[str]:
    """The trial's metrics scored on label maps (mIoU) rather than by a feature extractor."""
    return [m for m in trial.eval.metrics if METRICS[m].needs == MASKS]


def given_examples(trial: TrialConfig) -> TokenDataset:
    return load_dataset(trial.data.name, "heldout", **trial.data.options)


def given_tokens(trial: TrialConfig, num_samples: int) -> Tensor:
    """(N, L): the given modality of the first N held-out examples (cycled), the rest [MASK]."""
    heldout = given_examples(trial)
    layout = heldout.tokenizer.layout
    idx = torch.arange(num_samples) % len(heldout)
    given = trial.sampler.condition_on
    return layout.join({given: layout.split(heldout.tokens[idx])[given]})


JOINT_IMAGE_LABELS = ("digit-canvases",)  # datasets whose tokenizer has decode_labels
# tab10's colours for the digits 0..9; background black.
PALETTE = torch.tensor(
    [[0, 0, 0], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
     [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]]
) / 255.0  # fmt: skip


def preview(trial: TrialConfig, samples: SampleSet) -> Tensor:
    """What a sample grid shows: the images, and for a joint image + label-map dataset each
    image beside its label map in colour, (N, 3, H, 2 W)."""
    if trial.data.name not in JOINT_IMAGE_LABELS:
        return samples.images
    data = given_examples(trial)
    maps = data.tokenizer.decode_labels(samples.tokens)  # (N, H, W)
    colours = PALETTE[maps.clamp(0, len(PALETTE) - 1)].permute(0, 3, 1, 2)  # (N, 3, H, W)
    return torch.cat([samples.images.expand(-1, 3, -1, -1), colours], dim=3)


def clamp_given(trial: TrialConfig, tokens: Tensor) -> Tensor:
    """A data baseline's samples with the given modality put back (its chance level at the task)."""
    if trial.sampler.condition_on is None:
        return tokens
    given = given_tokens(trial, tokens.shape[0])
    layout = given_examples(trial).tokenizer.layout
    return torch.where(given == layout.mask_ids(), tokens, given)


def conditioned_network(trial: TrialConfig, net, num_samples: int) -> tuple[object, Tensor | None]:
    """(network wrapper, x_init): the given modality clamped at t = 1, or (net, None)."""
    if trial.sampler.condition_on is None:
        return net, None
    layout = net.config.layout
    return GivenModalities(net, layout, [trial.sampler.condition_on]), given_tokens(trial, num_samples)


GENERATED_MAPS = "none (the generated label maps themselves)"


def score_label_maps(
    trial: TrialConfig, sets: list[SampleSet]
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, dict]]:
    """mIoU of the generated label maps against the given examples' true maps, over the seeds.

    The label maps are scored as they are: no segmentation network stands between them and
    the truth, so the protocol names none, and every sampler, checkpoint and baseline scored on
    the same held-out maps shares one protocol (the model is what is compared, not part of how)."""
    if not mask_metrics(trial):
        return {}, {}, {}
    if trial.sampler.condition_on != "image":
        raise ValueError(
            f"eval.metrics: 'miou' scores label maps generated for given images; it needs "
            f"sampler.condition_on: image, got {trial.sampler.condition_on!r}"
        )
    heldout = given_examples(trial)
    tokenizer = heldout.tokenizer
    results: list[MetricResult] = []
    for s in sets:
        idx = torch.arange(s.tokens.shape[0]) % len(heldout)
        target = tokenizer.decode_labels(heldout.tokens[idx])  # (N, H, W)
        results.append(
            miou_result(
                tokenizer.decode_labels(s.tokens),
                target,
                tokenizer.layout.modalities[tokenizer.layout.index("labels")].vocab_size,
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


__all__ = [
    "preview",
    "clamp_given",
    "conditioned_network",
    "given_tokens",
    "mask_metrics",
    "score_label_maps",
]
