"""Captions as the condition: the captioned-canvases dataset and a trial's text conditions.

``captioned-canvases``: the digit canvases of ``harness.canvases`` (two real digits on a
16 x 16 canvas), pixels as tokens (17 grey levels, as the pixel digits), the scene class
(first * 20 + relation * 10 + second, 200 classes) as the label and the caption ("a 3 to the
left of a 7") as the text condition. Without ``model.text`` a model trained on it is
conditioned on the scene class instead (the scene-id reference for the text model).

With ``model.text`` the condition of every example is its caption's ids under the model's
own tokenizer (``models.text.caption_tokenizer``: a CLIP model reads other ids than the
learned encoder), and samples are drawn for the held-out captions (unseen canvases, the data's
scene distribution); their scene classes and captions are saved with the samples, so caption
agreement can check each sample against its caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harness.canvas_data import LEVELS, check_options, split_canvases
from harness.canvases import RELATIONS, caption
from harness.datasets import DatasetShape, PixelTokenizer, TokenDataset
from models.backbone import ModelConfig
from models.text import TextConfig, caption_tokenizer

NAME = "captioned-canvases"
NUM_SCENES = 10 * len(RELATIONS) * 10
# The counts the canvases-cnn classifier uses, so the canvases are composed (and cached) once.
DEFAULT_COUNTS = {"train": 12000, "heldout": 1000}


def scene_caption(scene: int) -> str:
    """The caption of scene class first * 20 + relation * 10 + second."""
    return caption(scene // 20, (scene // 10) % 2, scene % 10)


# Every word a caption can use, in a fixed order (the learned encoder's vocabulary).
CAPTION_VOCABULARY = tuple(sorted({w for s in range(NUM_SCENES) for w in scene_caption(s).split()}))


def captioned_canvases(
    split: str = "train",
    *,
    canvas: int = 16,
    num_train: int = DEFAULT_COUNTS["train"],
    num_heldout: int = DEFAULT_COUNTS["heldout"],
) -> TokenDataset:
    """tokens (N, canvas^2) grey levels, labels (N,) scene classes, captions: N strings."""
    c = split_canvases(split, canvas, num_train, num_heldout)
    tokenizer = PixelTokenizer(LEVELS, (canvas, canvas))
    tokens = tokenizer.encode(c.images)  # (N, canvas^2)
    return TokenDataset(NAME, split, tokens, c.scene_class, NUM_SCENES, tokenizer, captions=tuple(c.captions))


def captioned_canvases_shape(
    *,
    canvas: int = 16,
    num_train: int = DEFAULT_COUNTS["train"],
    num_heldout: int = DEFAULT_COUNTS["heldout"],
) -> DatasetShape:
    check_options("train", canvas, num_train, num_heldout)
    return DatasetShape((canvas, canvas), LEVELS, NUM_SCENES, caption_vocabulary=CAPTION_VOCABULARY)


def captioned_canvas_images(split: str = "train", **options) -> tuple[Tensor, Tensor]:
    """The real canvases (N, 1, C, C) in [0, 1] of the split and their scene classes (N,)."""
    data = captioned_canvases(split, **options)
    return data.images(), data.labels


def conditioning_fields(text: dict[str, Any] | None, shape: DatasetShape) -> dict[str, Any]:
    """The ModelConfig fields of the condition: ``num_classes`` from the data, or with
    ``model.text`` no classes and the TextConfig (a learned encoder's vocabulary: the data's)."""
    if text is None:
        return {"num_classes": shape.num_classes, "text": None}
    if not shape.caption_vocabulary:
        raise ValueError(
            "model.text: the dataset has no captions; use a captioned dataset (e.g. captioned-canvases)"
        )
    config = TextConfig.from_dict(text)
    if config.encoder == "learned" and not config.vocabulary:
        config = TextConfig.from_dict({**text, "vocabulary": shape.caption_vocabulary})
    return {"num_classes": 0, "text": config}


def _captions(data: TokenDataset) -> tuple[str, ...]:
    if data.captions is None:
        raise ValueError(f"model.text: dataset {data.name!r} has no captions")
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
    index = torch.arange(num_samples) % len(heldout)  # (N,)
    captions = tuple(_captions(heldout)[i] for i in index.tolist())
    labels = None if heldout.labels is None else heldout.labels[index]
    return Conditions(caption_tokenizer(config.text)(captions), labels, captions)


__all__ = [
    "CAPTION_VOCABULARY",
    "NAME",
    "Conditions",
    "captioned_canvas_images",
    "captioned_canvases",
    "captioned_canvases_shape",
    "conditioning_fields",
    "generation_conditions",
    "scene_caption",
    "training_conditions",
]
