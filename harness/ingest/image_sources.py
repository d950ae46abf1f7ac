"""Image sources for the tokenize step, ADM's centre crop, and label maps on the token grid.

Three layouts, each listed in a fixed order (the order of the shards):

- ``class-folders`` (ImageNet): ``root/<class>/*.JPEG|jpg|png|...``; class ids are the ranks of
  the sorted folder names, which the manifest keeps;
- ``coco``: ``root/annotations/captions_*.json`` (``images: [{id, file_name}]``,
  ``annotations: [{image_id, caption}]``), images under ``root/<split name of the JSON>/``
  (``captions_train2017.json`` -> ``train2017/``) or ``root/images/``; ordered by image id;
- ``label-maps``: ``root/images/x.png`` with ``root/labels/x.png`` (integer class per pixel);
- ``clip-folders`` (video): ``root/<class>/<clip>/<frame>.png|jpg|...``, a clip the folder of
  its frames sorted by name; class ids as class folders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.errors import UserError, did_you_mean
from models.registry import Registry

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SOURCES: Registry = Registry("image source")


class SourceError(UserError):
    """An image source that cannot be read: names the path and what was expected."""


@dataclass(frozen=True)
class Item:
    """One source image; ``label`` its class id, ``captions`` its captions, ``segments`` its label map;
    a clip: ``frames`` its frames in order (``image`` the first)."""

    image: Path
    label: int | None = None
    captions: tuple[str, ...] | None = None
    segments: Path | None = None
    frames: tuple[Path, ...] | None = None


@dataclass(frozen=True)
class ImageSource:
    kind: str
    root: Path
    items: tuple[Item, ...]
    class_names: tuple[str, ...] = ()

    def describe(self) -> dict:
        """What identifies the listing: kind, root, counts and a hash of the ordered items."""
        h = hashlib.sha256()
        for item in self.items:
            key: tuple = (str(item.image.relative_to(self.root)), item.label, item.captions)
            if item.frames is not None:  # images keep the hash they had before clips existed
                key += (tuple(str(f.relative_to(self.root)) for f in item.frames),)
            h.update(repr(key).encode())
        return {"kind": self.kind, "root": str(self.root), "images": len(self.items),
                "classes": len(self.class_names), "listing_sha256": h.hexdigest()}  # fmt: skip


def _images_in(folder: Path) -> list[Path]:
    """The image files of a folder, sorted; a name with an image suffix that is no regular file (a
    FIFO, which would block the first read forever, a device, a dangling link) is refused."""
    named = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    odd = [p for p in named if not p.is_file() and not p.is_dir()]
    if odd:
        raise SourceError(
            f"{odd[0]}: not a regular file (a FIFO, device, socket or dangling link); expected an image"
        )
    return sorted(p for p in named if p.is_file())


def _folders_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@SOURCES.register("class-folders")
def class_folders(root: Path) -> ImageSource:
    classes = _folders_in(root)
    if not classes:
        raise SourceError(f"{root}: no class folders (expected root/<class>/*.JPEG or *.png)")
    items = tuple(Item(path, label=i) for i, name in enumerate(classes) for path in _images_in(root / name))
    return ImageSource("class-folders", root, items, tuple(classes))


def _clip(folder: Path, label: int) -> Item:
    frames = tuple(_images_in(folder))
    if not frames:
        raise SourceError(f"{folder}: a clip without frames (expected frame images {IMAGE_SUFFIXES})")
    return Item(frames[0], label=label, frames=frames)


@SOURCES.register("clip-folders")
def clip_folders(root: Path) -> ImageSource:
    """Clips as folders of frames inside class folders; a clip folder without frames is an error."""
    classes = _folders_in(root)
    items = tuple(
        _clip(root / name / clip, i) for i, name in enumerate(classes) for clip in _folders_in(root / name)
    )
    if not items:
        raise SourceError(f"{root}: no clips (expected root/<class>/<clip>/<frame>.png)")
    return ImageSource("clip-folders", root, items, tuple(classes))


def _captions_file(root: Path, captions: Path | None) -> Path:
    if captions is not None:
        return captions if captions.is_absolute() else root / captions
    found = sorted((root / "annotations").glob("captions_*.json"))
    if len(found) != 1:
        raise SourceError(
            f"{root}/annotations: found {[p.name for p in found]}; expected one captions_*.json (or name it)"
        )
    return found[0]


@SOURCES.register("coco")
def coco(root: Path, captions: Path | None = None) -> ImageSource:
    path = _captions_file(root, captions)
    if not path.is_file():  # missing, or a FIFO whose read would block forever
        raise SourceError(f"{path}: no captions file (expected a COCO captions JSON)")
    try:
        data = json.loads(path.read_text())
        files = {int(im["id"]): im["file_name"] for im in data["images"]}
        texts: dict[int, list[str]] = {i: [] for i in files}
        for note in data["annotations"]:
            texts[int(note["image_id"])].append(str(note["caption"]).strip())
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SourceError(f"{path}: not a COCO captions file ({type(err).__name__}: {err})") from None
    folder = root / path.stem.removeprefix("captions_")
    folder = folder if folder.is_dir() else root / "images"
    items = tuple(Item(folder / files[i], captions=tuple(texts[i])) for i in sorted(files))
    absent = [str(item.image) for item in items if not item.image.is_file()]
    if absent:
        raise SourceError(f"{path}: {len(absent)} listed images are missing, e.g. {absent[:3]}")
    return ImageSource("coco", root, items)


@SOURCES.register("label-maps")
def label_maps(root: Path) -> ImageSource:
    images, labels = root / "images", root / "labels"
    if not labels.is_dir():
        raise SourceError(f"{root}: no labels/ folder beside images/ (expected labels/<name>.png)")
    items = tuple(Item(path, segments=labels / f"{path.stem}.png") for path in _images_in(images))
    absent = [str(item.segments) for item in items if not item.segments.is_file()]
    if absent:
        raise SourceError(f"{labels}: {len(absent)} label maps are missing, e.g. {absent[:3]}")
    return ImageSource("label-maps", root, items)


def detect_kind(root: Path) -> str:
    if list((root / "annotations").glob("captions_*.json")):
        return "coco"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "label-maps"
    classes = _folders_in(root)
    first = next((root / name for name in classes if any((root / name).iterdir())), None)
    if first is not None and any(_images_in(first / clip) for clip in _folders_in(first)):
        return "clip-folders"  # the first non-empty class folder holds folders of images
    return "class-folders"


def open_source(root: str | Path, kind: str | None = None, captions: str | Path | None = None) -> ImageSource:
    """The source at ``root`` (its kind detected when not given); a source without images is an error."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise SourceError(f"image source {str(root)!r}: no such folder")
    if kind is not None and kind not in SOURCES:
        known = sorted(SOURCES)
        hint = did_you_mean(kind, known)
        raise SourceError(f"--source-kind: unknown {kind!r}; expected one of {known}{hint}")
    kind = kind or detect_kind(root)
    options = {"captions": Path(captions)} if captions is not None and kind == "coco" else {}
    source = SOURCES[kind](root, **options)
    if not source.items:
        raise SourceError(f"{root}: no images found ({kind}; suffixes {IMAGE_SUFFIXES})")
    return source


def crop_geometry(
    width: int, height: int, size: int
) -> tuple[list[tuple[int, int]], tuple[int, int], tuple[int, int]]:
    """ADM's ``center_crop_arr`` as sizes: the BOX halvings while the short side >= 2 * size, the
    BICUBIC resize that makes the short side ``size`` (rounded), and the crop's (left, top)."""
    halvings = []
    while min(width, height) >= 2 * size:
        width, height = width // 2, height // 2
        halvings.append((width, height))
    scale = size / min(width, height)
    resized = (round(width * scale), round(height * scale))
    return halvings, resized, ((resized[0] - size) // 2, (resized[1] - size) // 2)


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM (guided-diffusion) centre crop: repeated BOX downsampling by 2 (anti-aliasing), one
    BICUBIC resize to a short side of ``size``, then the central size x size; (size, size[, C]) uint8."""
    halvings, resized, (left, top) = crop_geometry(*image.size, size)
    for step in halvings:
        image = image.resize(step, resample=Image.BOX)
    image = image.resize(resized, resample=Image.BICUBIC)
    return np.asarray(image)[top : top + size, left : left + size]


def center_crop_labels(label_map: Image.Image, size: int) -> np.ndarray:
    """The same crop of a label map, resized once with NEAREST (labels are never blended)."""
    _, resized, (left, top) = crop_geometry(*label_map.size, size)
    return np.asarray(label_map.resize(resized, resample=Image.NEAREST))[top : top + size, left : left + size]


def read_image(path: Path, mode: str) -> Image.Image:
    """The image converted to ``mode`` ("RGB", "L"; label maps: "labels" keeps integer ids)."""
    try:
        with Image.open(path) as image:
            image.load()
            if mode != "labels":
                return image.convert(mode)
            if image.mode not in ("L", "P", "I", "I;16"):
                raise SourceError(f"{path}: a label map must hold one integer id per pixel, not {image.mode}")
            return image
    except (OSError, UnidentifiedImageError) as err:
        raise SourceError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
    except Image.DecompressionBombError as err:  # a few KB that decode to gigabytes
        raise SourceError(f"{path}: {err}") from None


def check_same_size(image: Path, label_map: Path, size: tuple[int, int]) -> None:
    """A label map must be its image's size: each is centre-cropped by its own geometry, so any
    other size would put the labels on other pixels. The image's size is read from its header."""
    try:
        with Image.open(image) as opened:
            theirs = opened.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise SourceError(f"{image}: unreadable image ({type(err).__name__}: {err})") from None
    if theirs != size:
        raise SourceError(
            f"{label_map}: {size[0]}x{size[1]}; expected the size of its image {image.name}"
            f" ({theirs[0]}x{theirs[1]})"
        )


def segment_tokens(label_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A label map (S, S) on the token grid by majority vote: each cell takes the most frequent id
    of its (S/g) x (S/g) pixels, ties to the smaller id (every id counts, 255 included); (g*g,)."""
    S, g = label_map.shape[0], grid[0]
    if label_map.shape != (S, S) or S % g or grid[0] != grid[1]:
        raise ValueError(f"label map {label_map.shape} does not tile into a {grid} grid")
    f = S // g
    cells = label_map.reshape(g, f, g, f).transpose(0, 2, 1, 3).reshape(g * g, f * f).astype(np.int64)
    ids, ranks = np.unique(cells, return_inverse=True)  # the ids present, in order (a 16-bit map's
    counts = np.zeros((g * g, len(ids)), dtype=np.int64)  # id 65535 costs one column, not 65,536)
    np.add.at(counts, (np.repeat(np.arange(g * g), f * f), ranks.reshape(-1)), 1)
    return ids[counts.argmax(axis=1)]


def check_frames(source: ImageSource, frames: int) -> None:
    """Clips need ``frames`` > 0 and at least that many frames each; images need ``frames`` 0."""
    clips = source.items[0].frames is not None
    if frames and not clips:
        raise SourceError(
            f"{source.root}: --frames {frames} needs clip folders (root/<class>/<clip>/<frame>.png);"
            f" this is a {source.kind} source"
        )
    if clips and not frames:
        raise SourceError(f"{source.root}: a clip-folders source; expected --frames T (frames per clip)")
    short = [item for item in source.items if clips and len(item.frames) < frames]
    if short:
        raise SourceError(
            f"{short[0].image.parent}: {len(short[0].frames)} frames, --frames {frames} expects at least"
            f" {frames} ({len(short)} such clips)"
        )


def read_clip(item: Item, frames: int, size: int, mode: str) -> np.ndarray:
    """The first ``frames`` frames of a clip, each centre-cropped; (T, size, size[, C]) uint8. The
    frames must share one size, so that the crop is the same for every frame."""
    images = [read_image(path, mode) for path in item.frames[:frames]]
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise SourceError(f"{item.image.parent}: frames of different sizes {sorted(sizes)}; expected one")
    return np.stack([center_crop(image, size) for image in images])
