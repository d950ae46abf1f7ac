"""``run_study.py tokenize``: image folders -> shard folders (manifest, token values, labels, captions,
label maps), resumable with byte-identical shards; ADM's centre crop; bad input exits 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ldm_reference import random_ldm_state
from PIL import Image
from sampler_stubs import one_thread  # noqa: F401  (autouse: tiny convolutions, loaded cores)

from harness.config.trial import build_trial
from harness.data.registry import dataset_shape, load_dataset
from harness.data.sources.shards import ShardError
from harness.data.tokenizers.original_vq import OriginalVQConfig
from harness.ingest.image_sources import center_crop, crop_geometry, open_source, segment_tokens
from harness.run.trial import run_trial
from harness.tasks.text import conditioning_fields, generation_conditions, training_conditions
from models.backbone import ModelConfig
from run_study import main

LEVELS, SIZE = 5, 8
GREYS = {"cat": (0, 64, 128), "dog": (191, 255)}  # constant images: token round(v * 4 / 255) everywhere


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def classes(tmp_path):
    for name, greys in GREYS.items():
        for i, v in enumerate(greys):  # sizes that need halving, upscaling, or a wide crop
            _png(tmp_path / "src" / name / f"{i}.png", np.full(((12, 40, 5)[i], (20, 16, 9)[i], 3), v))
    (tmp_path / "src" / "dog" / "notes.txt").write_text("not an image")
    return tmp_path / "src"


@pytest.fixture
def noisy(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(7):
        _png(tmp_path / "noisy" / f"c{i % 2}" / f"{i}.png", rng.integers(0, 256, (10 + i, 12, 3)))
    return tmp_path / "noisy"


def _tokenize(src, out, *extra) -> int:
    args = [str(src), str(out), "--pixel-levels", str(LEVELS), "--image-size", str(SIZE), "--no-progress"]
    return main(["tokenize", *args, *extra])


def _options(out, num_classes=2) -> dict:
    return {"path": str(out), "grid": [SIZE, SIZE], "vocab_size": LEVELS, "num_classes": num_classes}


def test_class_folders_give_labels_class_names_and_the_pixel_tokens(classes, tmp_path) -> None:
    assert _tokenize(classes, tmp_path / "out", "--flip", "--shard-size", "3") == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["class_names"] == ["cat", "dog"] and manifest["counts"] == {"train": 10}
    assert [e["count"] for e in manifest["splits"]["train"]] == [3, 3, 3, 1]
    assert manifest["tokenizer"]["kind"] == "pixel" and manifest["sources"]["train"]["flip"] is True
    assert not list((tmp_path / "out").glob(".tokenize-*"))  # the progress file is gone when complete
    data = load_dataset("shards", "train", **_options(tmp_path / "out"))
    greys = [v for vs in GREYS.values() for v in vs for _ in range(2)]  # each image, then its flip
    expected = torch.tensor([round(v * (LEVELS - 1) / 255) for v in greys])
    assert torch.equal(data.tokens, expected[:, None].expand(10, SIZE * SIZE))
    assert data.labels.tolist() == [0] * 6 + [1] * 4
    assert data.images().shape == (10, 1, SIZE, SIZE)  # decodes through the tokenizer the manifest names


def test_an_interrupted_run_resumes_to_byte_identical_shards(noisy, tmp_path) -> None:
    assert _tokenize(noisy, tmp_path / "whole", "--shard-size", "2") == 0
    part = tmp_path / "part"
    assert _tokenize(noisy, part, "--shard-size", "2", "--max-shards", "3") == 0  # stops after 3 of 4
    assert not (part / "manifest.json").exists() and (part / "train-00002.npy").exists()
    kept = (part / "train-00000.npy").stat().st_ino
    (part / "train-00002.npy").unlink()  # lost with the interruption
    np.save(part / "train-00001-labels.npy", np.zeros(2, dtype=np.int64))  # a torn write
    assert _tokenize(noisy, part, "--shard-size", "2", "--batch-size", "3") == 0
    assert (part / "train-00000.npy").stat().st_ino == kept  # verified and kept, not rewritten
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert names == sorted(p.name for p in part.iterdir())
    for name in names:
        assert (part / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert _tokenize(noisy, part, "--shard-size", "3") == 2  # another job into a finished split


def _coco(root):
    """A COCO-style source: images 7, 3, 5 (grey 20 i) with captions for 5 (two) and 3 (one)."""
    for i in (7, 3, 5):
        _png(root / "val2017" / f"{i:012d}.png", np.full((9, 9, 3), 20 * i))
    notes = [{"image_id": 5, "caption": " a five "}, {"image_id": 3, "caption": "three"},
             {"image_id": 5, "caption": "another five"}]  # fmt: skip
    images = [{"id": i, "file_name": f"{i:012d}.png"} for i in (7, 3, 5)]
    (root / "annotations").mkdir()
    (root / "annotations" / "captions_val2017.json").write_text(
        json.dumps({"images": images, "annotations": notes})
    )
    return root


def test_coco_captions_are_stored_beside_the_shards(tmp_path) -> None:
    root = _coco(tmp_path / "coco")
    assert _tokenize(root, tmp_path / "out", "--split", "heldout") == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_classes"] == 0 and manifest["sources"]["heldout"]["source"]["kind"] == "coco"
    (entry,) = manifest["splits"]["heldout"]
    assert "labels" not in entry
    captions = json.loads((tmp_path / "out" / entry["captions"]).read_text())
    assert captions == [["three"], ["a five", "another five"], []]  # by image id
    tokens = load_dataset("shards", "heldout", **_options(tmp_path / "out", 0)).tokens
    assert tokens[:, 0].tolist() == [round(20 * i * 4 / 255) for i in (3, 5, 7)]


def test_captions_of_a_shard_folder_are_the_text_condition(tmp_path) -> None:
    root = _coco(tmp_path / "coco")
    for split in ("train", "heldout"):
        assert _tokenize(root, tmp_path / "out", "--split", split) == 0
    options = {**_options(tmp_path / "out", 0), "captions": True}
    train, heldout = (load_dataset("shards", split, **options) for split in ("train", "heldout"))
    assert train.captions == ("three", "a five", "")  # the first caption; none: the empty caption
    shape = dataset_shape("shards", **options)
    assert shape.caption_vocabulary == ("a", "five", "three")
    fields = conditioning_fields({"encoder": "learned", "max_length": 3}, shape)
    config = ModelConfig(vocab_size=LEVELS, grid=(SIZE, SIZE), **fields)
    ids = training_conditions(config, train)  # (3, 3): words 2 + index, pad 0
    assert ids.tolist() == [[4, 0, 0], [2, 3, 0], [0, 0, 0]]
    text = generation_conditions(config, heldout, 4)  # held-out captions, cycled; no classes
    assert text.captions == ("three", "a five", "", "three") and text.labels is None
    with pytest.raises(ValueError, match="captions: 'yes'; expected true or false"):
        dataset_shape("shards", **{**options, "captions": "yes"})


def test_a_folder_without_captions_refuses_captions_true(classes, tmp_path) -> None:
    assert _tokenize(classes, tmp_path / "out") == 0
    with pytest.raises(ShardError, match="no captions"):
        load_dataset("shards", "train", **{**_options(tmp_path / "out"), "captions": True})


def test_label_maps_follow_the_crop_and_the_flip_onto_the_token_grid(tmp_path) -> None:
    root = tmp_path / "seg"
    labels = np.ones((16, 24), dtype=np.uint8)
    labels[:, 12:] = 2  # left 1, right 2 around the crop's centre
    labels[:8, 4:8] = 7
    _png(root / "images" / "a.png", np.zeros((16, 24, 3)))
    _png(root / "labels" / "a.png", labels)
    assert _tokenize(root, tmp_path / "out", "--flip") == 0
    (entry,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["splits"]["train"]
    segments = np.load(tmp_path / "out" / entry["segments"]).reshape(2, SIZE, SIZE)
    crop = labels.repeat(1, 0)[::2, ::2][:, 2:10]  # 24 x 16 -> 12 x 8 (one halving), centre 8 columns
    assert np.array_equal(segments[0], crop) and np.array_equal(segments[1], crop[:, ::-1])
    assert set(np.unique(segments[0])) == {1, 2, 7}


@pytest.mark.parametrize("label_size", [(24, 16), (32, 48), (16, 23)])
def test_a_label_map_of_another_size_than_its_image_is_refused(tmp_path, capsys, label_size) -> None:
    """Each is cropped by its own geometry: a map of another size (transposed, scaled, a column
    short) would put its labels on other pixels. Refused naming the map and both sizes."""
    root = tmp_path / "seg"
    _png(root / "images" / "a.png", np.zeros((16, 24, 3)))  # 24 wide, 16 high
    _png(root / "labels" / "a.png", np.ones(label_size, dtype=np.uint8))
    assert _tokenize(root, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "labels/a.png" in err and f"{label_size[1]}x{label_size[0]}" in err and "(24x16)" in err


@pytest.fixture
def segmented(tmp_path):
    """Tokenized image + label-map pairs, a train and a held-out split: the left half labelled 1
    in dark images and 2 in bright ones, the right half always 3."""
    for split in ("train", "heldout"):
        for i in range(6):
            grey = (30, 220)[i % 2]
            labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
            labels[:, : SIZE // 2], labels[:, SIZE // 2 :] = 1 + (i % 2), 3
            _png(tmp_path / split / "images" / f"{i}.png", np.full((SIZE, SIZE, 3), grey))
            _png(tmp_path / split / "labels" / f"{i}.png", labels)
    for split in ("train", "heldout"):
        assert _tokenize(tmp_path / split, tmp_path / f"out-{split}") == 0
    out = tmp_path / "out"  # one folder with both splits: the held-out manifest entry moved over
    (tmp_path / "out-train").rename(out)
    manifest = json.loads((out / "manifest.json").read_text())
    held = json.loads((tmp_path / "out-heldout" / "manifest.json").read_text())["splits"]["train"]
    for entry in held:
        for key in ("tokens", "segments"):
            new = entry[key].replace("train", "heldout")
            (tmp_path / "out-heldout" / entry[key]).rename(out / new)
            entry["files"] = {new if k == entry[key] else k: v for k, v in entry.get("files", {}).items()}
            entry[key] = new
    manifest["splits"]["heldout"] = held
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_label_maps_of_a_shard_folder_are_a_second_modality(segmented) -> None:
    plain = load_dataset("shards", "train", **_options(segmented, 0))
    options = {**_options(segmented, 0), "segment_classes": 4}
    joint = load_dataset("shards", "train", **options)
    layout = joint.tokenizer.layout
    assert layout.names == ["image", "labels"] and joint.tokens.shape == (6, 2 * SIZE * SIZE)
    assert torch.equal(layout.split(joint.tokens)["image"], plain.tokens)
    maps = joint.tokenizer.decode_labels(joint.tokens)  # (N, SIZE, SIZE)
    assert (maps[:, :, SIZE // 2 :] == 3).all() and torch.equal(maps[:, 0, 0], 1 + torch.arange(6) % 2)
    assert torch.equal(joint.tokenizer.decode(joint.tokens), plain.tokenizer.decode(plain.tokens))
    shape = dataset_shape("shards", **options)
    assert [m.name for m in shape.modalities] == ["image", "labels"]
    assert shape.vocab_size == LEVELS + 4  # the codes; the two [MASK] ids follow
    with pytest.raises(ShardError, match=r"label ids 1\.\.3 outside \[0, 3\).*segment_classes"):
        load_dataset("shards", "train", **{**options, "segment_classes": 3})
    with pytest.raises(ValueError, match="segment_classes: 1; expected 0"):
        dataset_shape("shards", **{**options, "segment_classes": 1})


def test_a_class_folder_has_no_label_maps_to_read(classes, tmp_path) -> None:
    assert _tokenize(classes, tmp_path / "out") == 0
    with pytest.raises(ShardError, match="no label maps"):
        load_dataset("shards", "train", **{**_options(tmp_path / "out"), "segment_classes": 4})


def test_a_segmentation_trial_on_tokenized_label_maps_is_scored_by_miou(segmented, tmp_path) -> None:
    data = {"name": "shards", "options": {**_options(segmented, 0), "segment_classes": 4}}
    trial = build_trial(
        {
            "data": data,
            "model": {"timestep": "explicit"},
            "train": {"steps": 150, "batch_size": 16, "warmup_steps": 5, "checkpoint_every": 0},
            "sampler": {"name": "euler", "num_steps": 2, "condition_on": "image", "temperature": 0.5},
            "eval": {"num_samples": 12, "batch_size": 12, "metrics": ["miou"]},
        }
    )
    record = run_trial(trial, store_root=tmp_path / "checkpoints", study_dir=tmp_path / "study")
    assert record.status == "finished", record.error
    assert record.protocols["miou"]["reference"] == "shards/heldout label maps"
    # the left half's label read from the image: blind to it, mIoU would be (1 + 1/3 + 1/3) / 3
    assert record.metrics["miou"] > 0.9, record.metrics


def test_majority_vote_per_cell_with_ties_to_the_smaller_id() -> None:
    label_map = np.array([[3, 3, 0, 1], [3, 5, 1, 0], [9, 9, 4, 4], [9, 9, 255, 255]])
    assert segment_tokens(label_map, (2, 2)).tolist() == [3, 0, 9, 4]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4), st.integers(1, 4), st.lists(st.integers(0, 65535), min_size=1, max_size=4), st.data()
)
def test_each_cell_takes_its_most_frequent_id_of_any_16_bit_value(g, f, palette, data) -> None:
    """Against a count per cell written out: the most frequent id, ties to the smaller, for ids
    up to 65,535 (a 16-bit label map), without a column per possible id."""
    side = g * f
    picks = data.draw(st.lists(st.integers(0, len(palette) - 1), min_size=side**2, max_size=side**2))
    label_map = np.array([palette[i] for i in picks], dtype=np.int64).reshape(side, side)
    expected = []
    for row in range(g):
        for col in range(g):
            cell = label_map[row * f : (row + 1) * f, col * f : (col + 1) * f].reshape(-1).tolist()
            expected.append(min(set(cell), key=lambda v: (-cell.count(v), v)))
    assert segment_tokens(label_map, (g, g)).tolist() == expected


def test_an_original_checkpoint_tokenizes_through_the_cli(noisy, tmp_path) -> None:
    cfg = OriginalVQConfig(n_embed=16, embed_dim=4, z_channels=4, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                           attn_resolutions=(8,), resolution=16, norm_num_groups=4)  # fmt: skip
    torch.save({"state_dict": random_ldm_state(cfg, seed=1)}, tmp_path / "vq.ckpt")
    (tmp_path / "vq.json").write_text(json.dumps(cfg.to_dict()))
    vq = ["--tokenizer", str(tmp_path / "vq.ckpt"), "--tokenizer-config", str(tmp_path / "vq.json")]
    args = ["tokenize", str(noisy), str(tmp_path / "out"), *vq, "--image-size", "16", "--no-progress"]
    assert main(args) == 0
    data = load_dataset(
        "shards", "train", path=str(tmp_path / "out"), grid=[8, 8], vocab_size=16, num_classes=2
    )
    source = open_source(noisy)
    crops = np.stack([center_crop(Image.open(item.image).convert("RGB"), 16) for item in source.items])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255  # (7, 3, 16, 16)
    tokenizer = data.tokenizer._tokenizer()
    assert torch.equal(data.tokens, tokenizer.encode(x))
    assert data.images().shape == (7, 3, 16, 16)


def test_centre_crop_sizes_and_a_known_case() -> None:
    for width, height in [(5, 7), (8, 8), (9, 31), (64, 17), (300, 200)]:
        out = center_crop(Image.new("RGB", (width, height), (10, 20, 30)), 8)
        assert out.shape == (8, 8, 3) and (out == [10, 20, 30]).all()  # bicubic keeps a constant
    # 64 x 32 at 8: two BOX halvings (32 x 16, 16 x 8), no rescale, columns 4..11 of 16
    stripes = np.repeat(np.arange(16, dtype=np.uint8) * 10, 4)[None, :].repeat(32, 0)  # 4-px stripes
    assert crop_geometry(64, 32, 8) == ([(32, 16), (16, 8)], (16, 8), (4, 0))
    out = center_crop(Image.fromarray(stripes), 8)
    assert out.tolist() == [list(range(40, 120, 10))] * 8


def test_bad_input_exits_2_with_the_reason(tmp_path, classes, capsys) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert _tokenize(tmp_path / "absent", tmp_path / "o1") == 2
    assert "no such folder" in capsys.readouterr().err
    assert _tokenize(tmp_path / "empty", tmp_path / "o2") == 2
    assert "no images" in capsys.readouterr().err
    (classes / "cat" / "broken.png").write_bytes(b"not a png")
    assert _tokenize(classes, tmp_path / "o3") == 2
    assert "broken.png: unreadable image" in capsys.readouterr().err
    (tmp_path / "vq.ckpt").write_bytes(b"")
    args = ["tokenize", str(classes), str(tmp_path / "o4"), "--tokenizer", str(tmp_path / "vq.ckpt")]
    assert main([*args, "--tokenizer-preset", "ldm-vq-f16"]) == 2
    assert "unknown tokenizer preset 'ldm-vq-f16'" in capsys.readouterr().err
    assert main([*args, "--image-size", "0"]) == 2
    assert "--image-size: 0" in capsys.readouterr().err


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, capsys) -> None:
    """48 KB of PNG that decode to 400 M pixels: exit 2 naming the file, not a traceback (PIL's
    DecompressionBombError is no OSError), and no shard finished."""
    for name in ("a", "b"):
        _png(tmp_path / "src" / name / "0.png", np.zeros((SIZE, SIZE)))
    Image.new("1", (20_000, 20_000)).save(tmp_path / "src" / "a" / "1.png")
    assert _tokenize(tmp_path / "src", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "src/a/1.png" in err and "400000000 pixels" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob("train-*.npy"))


def test_a_fifo_named_like_an_image_is_refused_not_read(tmp_path, capsys) -> None:
    """Its first read would block forever (the command hung): refused by name, exit 2."""
    import os

    for name in ("a", "b"):
        _png(tmp_path / "src" / name / "0.png", np.zeros((SIZE, SIZE)))
    os.mkfifo(tmp_path / "src" / "a" / "1.png")
    assert _tokenize(tmp_path / "src", tmp_path / "out") == 2
    assert "src/a/1.png: not a regular file" in capsys.readouterr().err
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    os.mkfifo(coco / "annotations" / "captions_train.json")  # blocked json.loads the same way
    assert _tokenize(coco, tmp_path / "out-coco") == 2
    assert "captions_train.json: no captions file" in capsys.readouterr().err
