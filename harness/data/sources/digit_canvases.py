"""The joint image + label-map dataset of digit canvases (segmentation as unmasking).

Each example is two modalities in one sequence (``models.modalities``): ``image`` (grey levels
0..16 of the 16 x 16 canvas, as the pixel digits) and ``labels`` (the per-pixel label map,
0 background, 1 + digit). One model trained on the joint distribution then segments (image
given, labels generated), draws images for label maps (labels given) or both at once.
"""

from __future__ import annotations

from torch import Tensor

from harness.data.sources.canvases import NUM_LABELS, Canvases, canvases_split
from harness.data.tokenizers.pixel import JointTokenizer, PixelTokenizer
from harness.data.types import SPLITS, Dataset, DatasetShape, TokenDataset
from models.modalities import Layout, Modality

LEVELS = 17
DEFAULT_COUNTS = {"train": 4000, "heldout": 500}
MAX_CANVAS = 128  # 32,768 tokens a canvas (image + label map)
MAX_PIXELS = 2**26  # a split's canvases (float images, label maps and their tokens: ~1.6 GB)


def canvas_layout(canvas: int = 16) -> Layout:
    return Layout(
        (Modality("image", LEVELS, (canvas, canvas)), Modality("labels", NUM_LABELS, (canvas, canvas)))
    )


def check_options(split: str, canvas: int, num_train: int, num_heldout: int) -> None:
    """The canvas datasets' options (digit-canvases, captioned-canvases), named on error."""
    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
    if not 16 <= canvas <= MAX_CANVAS or canvas % 2:
        raise ValueError(f"data.options.canvas: {canvas!r}; expected an even size in [16, {MAX_CANVAS}]")
    for name, count in (("num_train", num_train), ("num_heldout", num_heldout)):
        if not 1 <= count <= MAX_PIXELS // canvas**2:
            raise ValueError(
                f"data.options.{name}: {count}; expected 1..{MAX_PIXELS // canvas**2} at canvas {canvas}"
                f" (a split is held in memory: at most {MAX_PIXELS:,} pixels)"
            )


def split_canvases(split: str, canvas: int, num_train: int, num_heldout: int) -> Canvases:
    """The split's canvases under checked options (shared by the joint and the captioned datasets)."""
    check_options(split, canvas, num_train, num_heldout)
    return canvases_split(split, num_train if split == "train" else num_heldout, canvas)


def digit_canvases(
    split: str = "train",
    *,
    canvas: int = 16,
    num_train: int = DEFAULT_COUNTS["train"],
    num_heldout: int = DEFAULT_COUNTS["heldout"],
) -> TokenDataset:
    c = split_canvases(split, canvas, num_train, num_heldout)
    tokenizer = JointTokenizer(canvas_layout(canvas), PixelTokenizer(LEVELS, (canvas, canvas)))
    tokens = tokenizer.encode(c.images, c.label_maps)  # (N, 2 canvas^2)
    return TokenDataset("digit-canvases", split, tokens, None, 0, tokenizer)


def digit_canvases_shape(
    *,
    canvas: int = 16,
    num_train: int = DEFAULT_COUNTS["train"],
    num_heldout: int = DEFAULT_COUNTS["heldout"],
) -> DatasetShape:
    check_options("train", canvas, num_train, num_heldout)
    layout = canvas_layout(canvas)
    sizes = (("train", num_train), ("heldout", num_heldout))
    return DatasetShape(
        (layout.seq_len,), layout.vocab_size, 0, modalities=layout.modalities, split_sizes=sizes
    )


def digit_canvas_images(split: str = "train", **options) -> tuple[Tensor, None]:
    """The real canvases of the split (what labels -> image samples are scored against)."""
    data = digit_canvases(split, **options)
    return data.images(), None


__all__ = ["JointTokenizer", "canvas_layout", "digit_canvases", "digit_canvases_shape"]


DATASET = Dataset(
    "digit-canvases",
    load=digit_canvases,
    shape=digit_canvases_shape,
    real_images=digit_canvas_images,
    default_extractor="canvases-cnn",
    summary="two real digits on a canvas: image and per-pixel label map as two modalities",
)
