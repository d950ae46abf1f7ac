"""``run_study.py tokenize --frames T``: clip folders -> shards on a (T, h, w) grid, encoded frame by
frame (same crop and flip for every frame), decoded back to clips (N, C, T, H, W); resumable with
byte-identical shards; a short clip or a clip option on images exits 2 naming the path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sampler_stubs import one_thread  # noqa: F401  (autouse: tiny convolutions, loaded cores)

from harness.config.trial import build_trial
from harness.data.registry import load_dataset, real_images
from harness.evaluation import FVD, load_samples
from harness.ingest.image_sources import SourceError, open_source
from harness.ingest.tokenize_images import TokenizeOptions
from harness.run.trial import run_trial
from run_study import main

LEVELS, SIZE, T = 5, 8, 3
CLASSES, CLIPS, FRAMES = ("run", "walk"), 2, 4


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _level(c: int, k: int, f: int) -> int:
    """The grey level (of LEVELS) of frame f of clip k of class c: every frame of a clip differs."""
    return (2 * c + k + f) % LEVELS


@pytest.fixture
def clips(tmp_path):
    """2 classes x 2 clips x 4 constant frames (grey level * 255 / 4), sizes that need a crop."""
    for c, name in enumerate(CLASSES):
        for k in range(CLIPS):
            shape = ((12, 10), (20, 16))[k]
            for f in range(FRAMES):
                grey = round(_level(c, k, f) * 255 / (LEVELS - 1))
                _png(tmp_path / "src" / name / f"clip{k}" / f"{f:03d}.png", np.full((*shape, 3), grey))
    (tmp_path / "src" / "run" / "clip0" / "notes.txt").write_text("not a frame")
    return tmp_path / "src"


def _tokenize(src, out, *extra) -> int:
    args = [str(src), str(out), "--pixel-levels", str(LEVELS), "--image-size", str(SIZE), "--no-progress"]
    return main(["tokenize", *args, "--frames", str(T), *extra])


def _options(out) -> dict:
    return {"path": str(out), "grid": [T, SIZE, SIZE], "vocab_size": LEVELS, "num_classes": len(CLASSES)}


def test_clip_folders_become_per_frame_tokens_on_a_time_grid(clips, tmp_path) -> None:
    assert open_source(clips).kind == "clip-folders"
    assert _tokenize(clips, tmp_path / "out", "--flip", "--reference", "2", "--shard-size", "3") == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["grid"] == [T, SIZE, SIZE] and manifest["class_names"] == list(CLASSES)
    assert manifest["sources"]["train"]["frames"] == T and manifest["counts"] == {"train": 8}
    data = load_dataset("shards", "train", **_options(tmp_path / "out"))
    # sample s: clip s // 2 (odd: flipped), its first T frames in order
    levels = torch.tensor([[_level(c, k, f) for f in range(T)] for c in range(2) for k in range(CLIPS)])
    levels = levels.repeat_interleave(2, dim=0)  # (8, T)
    assert torch.equal(data.tokens, levels[:, :, None].expand(8, T, SIZE * SIZE).reshape(8, -1))
    assert data.labels.tolist() == [0] * 4 + [1] * 4
    clips_out = data.images()  # (8, 1, T, SIZE, SIZE)
    assert clips_out.shape == (8, 1, T, SIZE, SIZE)
    expected = (levels.float() / (LEVELS - 1))[:, None, :, None, None].expand(8, 1, T, SIZE, SIZE)
    assert torch.allclose(clips_out, expected)
    assert torch.equal(data.tokenizer.encode(clips_out), data.tokens)  # clips encode frame by frame
    reference, _ = real_images("shards", "train", **_options(tmp_path / "out"))
    assert reference.shape == (2, 1, T, SIZE, SIZE)  # the first 2 clips, unflipped
    assert torch.allclose(reference, expected[::2][:2], atol=0.5 / 255)


def test_the_flip_mirrors_every_frame_of_a_clip(tmp_path) -> None:
    for f in range(FRAMES):  # frame f: the left half dark, the right half of level f + 1
        frame = np.zeros((SIZE, SIZE), dtype=np.uint8)
        frame[:, SIZE // 2 :] = round((f + 1) * 255 / (LEVELS - 1))
        _png(tmp_path / "src" / "a" / "clip" / f"{f}.png", frame)
    assert _tokenize(tmp_path / "src", tmp_path / "out", "--flip") == 0
    data = load_dataset("shards", "train", **{**_options(tmp_path / "out"), "num_classes": 1})
    plain, flipped = data.tokens.reshape(2, T, SIZE, SIZE)
    assert torch.equal(flipped, plain.flip(-1)) and not torch.equal(flipped, plain)
    assert plain[:, 0, -1].tolist() == [1, 2, 3] and (plain[:, :, : SIZE // 2] == 0).all()


def test_an_interrupted_clip_run_resumes_to_byte_identical_shards(clips, tmp_path) -> None:
    assert _tokenize(clips, tmp_path / "whole", "--shard-size", "1") == 0
    part = tmp_path / "part"
    assert _tokenize(clips, part, "--shard-size", "1", "--max-shards", "2") == 0  # stops after 2 of 4
    assert not (part / "manifest.json").exists()
    (part / "train-00001.npy").unlink()  # lost with the interruption
    assert _tokenize(clips, part, "--shard-size", "1", "--batch-size", "3") == 0
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert names == sorted(p.name for p in part.iterdir())
    for name in names:
        assert (part / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_bad_clip_input_exits_2_naming_the_path(clips, tmp_path, capsys) -> None:
    short = clips / "walk" / "clip1"
    for frame in sorted(short.iterdir())[2:]:
        frame.unlink()
    assert _tokenize(clips, tmp_path / "o1") == 2
    err = capsys.readouterr().err
    assert f"{short}: 2 frames, --frames 3 expects at least 3" in err
    assert not (tmp_path / "o1").exists()  # refused before anything is written
    images = tmp_path / "images"
    _png(images / "a" / "0.png", np.zeros((8, 8)))
    assert _tokenize(images, tmp_path / "o2") == 2  # --frames on a folder of images
    assert "--frames 3 needs clip folders" in capsys.readouterr().err
    _png(tmp_path / "seg" / "images" / "a.png", np.zeros((8, 8)))
    _png(tmp_path / "seg" / "labels" / "a.png", np.zeros((8, 8)))
    assert _tokenize(tmp_path / "seg", tmp_path / "o3") == 2  # label maps with clips
    assert "this is a label-maps source" in capsys.readouterr().err
    args = [str(clips), str(tmp_path / "o4"), "--pixel-levels", "5", "--image-size", "8", "--no-progress"]
    assert main(["tokenize", *args]) == 2  # clips without --frames
    assert "expected --frames T" in capsys.readouterr().err
    (tmp_path / "empty" / "a" / "clip").mkdir(parents=True)
    with pytest.raises(SourceError, match="clip.*no clips|a clip without frames"):
        open_source(tmp_path / "empty", "clip-folders")


def test_frames_join_the_job_identity_only_when_set(clips, tmp_path) -> None:
    _png(tmp_path / "images" / "a" / "0.png", np.zeros((8, 8)))
    source = open_source(tmp_path / "images")
    h = hashlib.sha256()  # the listing hash of image sources as it was before clips existed
    h.update(repr(("a/0.png", 0, None)).encode())
    assert source.describe()["listing_sha256"] == h.hexdigest()
    listing = open_source(clips).describe()["listing_sha256"]
    (clips / "run" / "clip0" / "003.png").rename(clips / "run" / "clip0" / "004.png")
    assert open_source(clips).describe()["listing_sha256"] != listing  # the frames are in the hash
    images = TokenizeOptions(image_size=8)
    assert "frames" not in images.identity()  # image jobs resume as before clips existed
    assert TokenizeOptions(image_size=8, frames=3).identity() == {**images.identity(), "frames": 3}
    with pytest.raises(ValueError, match=r"--frames: -1; expected an integer in \[0, 1,024\]"):
        TokenizeOptions(frames=-1)


def test_a_video_trial_trains_samples_and_is_scored_by_fvd_on_clip_shards(tmp_path) -> None:
    """Real-clip shards end to end: the moving-digits clip size (5 x 12 x 12, 4 grey levels) as
    tokenized frame folders, a tiny patched model, Euler samples decoded to clips, FVD on the
    project's 3D CNN against the folder's reference clips."""
    g = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        for k in range(3):
            for f in range(5):
                frame = np.zeros((12, 12, 3))
                frame[:, 2 * f : 2 * f + 4] = 255 * (c + 1) / 2  # a bar moving right, brighter in class 1
                _png(
                    tmp_path / "src" / name / f"clip{k}" / f"{f:03d}.png",
                    frame + g.integers(0, 2, (12, 12, 3)),
                )
    args = [str(tmp_path / "src"), str(tmp_path / "out"), "--pixel-levels", "4", "--image-size", "12"]
    for split in ("train", "heldout"):
        assert (
            main(["tokenize", *args, "--no-progress", "--frames", "5", "--split", split, "--reference", "6"])
            == 0
        )
    options = {"path": str(tmp_path / "out"), "grid": [5, 12, 12], "vocab_size": 4, "num_classes": 2}
    trial = build_trial(
        {
            "data": {"name": "shards", "options": options},
            "model": {"patch": [1, 3, 3]},
            "train": {"steps": 12, "batch_size": 6, "warmup_steps": 2, "checkpoint_every": 0},
            "sampler": {"name": "euler", "num_steps": 2},
            "eval": {
                "num_samples": 12,
                "batch_size": 12,
                "metrics": [FVD],
                "extractor": "moving-digits-cnn3d",
            },
        }
    )
    record = run_trial(trial, store_root=tmp_path / "checkpoints", study_dir=tmp_path / "study")
    assert record.status == "finished", record.error
    assert record.metrics[FVD] > 0 and record.protocols[FVD]["extractor"] == "moving-digits-cnn3d"
    assert record.protocols[FVD]["reference"] == "shards/train"
    samples = load_samples(Path(record.artifacts["samples_dir"]) / "seed_0")
    assert samples.tokens.shape == (12, 5 * 12 * 12) and samples.images.shape == (12, 1, 5, 12, 12)
