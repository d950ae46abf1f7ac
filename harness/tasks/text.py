"""Captions as the condition (``model.text``): the text encoder's config from the data's
caption words, caption ids as the training conditions, the held-out captions as the generation
conditions (their classes and captions saved with the samples for caption agreement)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from harness.data.types import DatasetShape, TokenDataset
from harness.errors import UserError
from harness.tasks.base import GenerationInputs, Task, Trial, cycled
from models.backbone import ModelConfig
from models.text import TextConfig, caption_tokenizer


def conditioning_fields(text: dict[str, Any] | None, shape: DatasetShape) -> dict[str, Any]:
    """The ModelConfig fields of the condition: ``num_classes`` from the data, or with
    ``model.text`` no classes and the TextConfig (a learned encoder's vocabulary: the data's)."""
    if text is None:
        return {"num_classes": shape.num_classes, "text": None}
    if not shape.caption_vocabulary:
        raise UserError(
            "model.text: the dataset has no captions; use a captioned dataset (e.g. captioned-canvases)"
        )
    config = TextConfig.from_dict(text)
    if config.encoder == "learned" and not config.vocabulary:
        config = TextConfig.from_dict({**text, "vocabulary": shape.caption_vocabulary})
    return {"num_classes": 0, "text": config}


def _captions(data: TokenDataset) -> tuple[str, ...]:
    if data.captions is None:
        raise UserError(f"model.text: dataset {data.name!r} has no captions")
    return data.captions


def training_conditions(config: ModelConfig, data: TokenDataset) -> Tensor | None:
    """What the model is conditioned on for each example: caption ids (N, S) under the model's
    tokenizer with ``text``, else the class labels (N,) (None: unconditional)."""
    if config.text is None:
        return data.labels if config.num_classes else None
    return caption_tokenizer(config.text)(_captions(data))


@dataclass(frozen=True)
class Conditions:
    """ids (N, S): caption ids to sample with; labels (N,): their classes (scored by caption
    agreement); captions: the N captions (saved with the samples)."""

    ids: Tensor
    labels: Tensor | None  # None: a dataset without classes (e.g. COCO-style shards)
    captions: tuple[str, ...]


def generation_conditions(config: ModelConfig, heldout: TokenDataset, num_samples: int) -> Conditions | None:
    """The held-out captions in order (cycled when more samples are asked for than there are),
    with their classes; None for a model without text (``generate`` draws balanced class labels)."""
    if config.text is None:
        return None
    index = cycled(num_samples, len(heldout))  # (N,)
    captions = tuple(_captions(heldout)[i] for i in index.tolist())
    labels = None if heldout.labels is None else heldout.labels[index]
    return Conditions(caption_tokenizer(config.text)(captions), labels, captions)


class TextConditioned(Task):
    """Images generated for captions: the trial names a text encoder (``model.text``)."""

    name = "text conditioning"

    def applies(self, trial: Trial, shape: DatasetShape) -> bool:
        return trial.model.text is not None

    def claim(self, trial: Trial, shape: DatasetShape) -> str:
        return "model.text names a text encoder"

    def check(self, trial: Trial, shape: DatasetShape) -> None:
        if not shape.caption_vocabulary:
            raise UserError(
                f"model.text: dataset {trial.data.name!r} has no captions; expected a captioned dataset "
                "(captioned-canvases, or shards read with data.options.captions: true)"
            )
        self.check_patch(trial, shape)
        if trial.sampler.condition_on is not None:
            raise UserError(
                f"sampler.condition_on: {trial.sampler.condition_on!r}: a text-conditioned trial gives no "
                "modality; captions are the condition"
            )
        self.check_metrics(trial, shape)

    def model_fields(self, trial: Trial, shape: DatasetShape) -> dict[str, Any]:
        return {**trial.model.model_dump(), **conditioning_fields(trial.model.text, shape)}

    def training_conditions(self, config: ModelConfig, data: TokenDataset) -> Tensor | None:
        return training_conditions(config, data)

    def generation_inputs(self, trial: Trial, net: Any, num_samples: int) -> GenerationInputs:
        text = generation_conditions(net.config, self.heldout(trial), num_samples)
        return GenerationInputs(net, conditions=text.ids, labels=text.labels, captions=text.captions)


TASK = TextConditioned()
