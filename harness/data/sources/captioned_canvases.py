"""Captions as the condition: the captioned-canvases dataset and a trial's text conditions.

``captioned-canvases``: the digit canvases of ``harness.data.sources.canvases`` (two real digits on a
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

from torch import Tensor

from harness.data.sources.canvases import RELATIONS, caption
from harness.data.sources.digit_canvases import LEVELS, check_options, split_canvases
from harness.data.tokenizers.pixel import PixelTokenizer
from harness.data.types import Dataset, DatasetShape, TokenDataset

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
    sizes = (("train", num_train), ("heldout", num_heldout))
    words = CAPTION_VOCABULARY
    return DatasetShape((canvas, canvas), LEVELS, NUM_SCENES, caption_vocabulary=words, split_sizes=sizes)


def captioned_canvas_images(split: str = "train", **options) -> tuple[Tensor, Tensor]:
    """The real canvases (N, 1, C, C) in [0, 1] of the split and their scene classes (N,)."""
    data = captioned_canvases(split, **options)
    return data.images(), data.labels


DATASET = Dataset(
    NAME,
    load=captioned_canvases,
    shape=captioned_canvases_shape,
    real_images=captioned_canvas_images,
    default_extractor="canvases-cnn",
    summary="two real digits on a canvas with a caption ('a 3 to the left of a 7') as the condition",
)
