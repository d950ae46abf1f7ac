"""Video as a task family: moving-digit clips as (T, H, W) tokens, trials scored by FVD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from sampler_stubs import one_thread  # noqa: F401  (autouse: tiny networks on loaded cores)

from harness.config.trial import ConfigError, TrialConfig, build_trial
from harness.data.registry import dataset_shape, load_dataset, real_images
from harness.data.sources.moving_digits import BOUNCE_SPEED, MOTIONS, moving_digit_clips, reflect
from harness.evaluation import FVD, load_samples
from harness.generation.sampling import save_image_grid
from harness.run.ledger import TrialRecord
from harness.run.trial import run_trial
from harness.tracking.schema import TAG_PROTOCOL_PREFIX, TAG_TRIAL_HASH, experiment_name
from harness.tracking.tracker import Tracker

VIDEO = "moving-digits"


@pytest.mark.parametrize(
    "options", [{}, {"conditional": False, "levels": 3}, {"levels": 17, "motion": "bouncing"}]
)
def test_dataset_matches_its_shape_and_labels_are_the_digits(options: dict) -> None:
    shape = dataset_shape(VIDEO, **options)
    for split in ("train", "heldout"):
        data = load_dataset(VIDEO, split, **options)
        T, H, W = shape.grid
        assert data.grid == shape.grid and data.vocab_size == shape.vocab_size
        assert data.num_classes == shape.num_classes and data.tokens.shape[1] == T * H * W
        assert 0 <= data.tokens.min() and data.tokens.max() == shape.vocab_size - 1
        digits = load_dataset("digits", split)
        repeats = len(data) // len(digits)  # every digit in `repeats` clips, one pass per repeat
        assert len(data) == repeats * len(digits) and repeats >= 1
        if options.get("conditional", True):
            assert torch.equal(data.labels, digits.labels.repeat(repeats)) and shape.num_classes == 10
        else:
            assert data.labels is None and shape.num_classes == 0
        clips, _ = real_images(VIDEO, split, **options)
        assert clips.shape == (len(data), 1, T, H, W)
        # every frame holds the whole digit: its total intensity is the digit's
        mass = clips.sum(dim=(1, 3, 4))  # (N, T)
        assert torch.allclose(
            mass, digits.images().sum(dim=(1, 2, 3)).repeat(repeats)[:, None].expand_as(mass)
        )


@pytest.mark.parametrize("levels", [2, 4, 17])
def test_tokens_are_the_nearest_grey_level(levels: int) -> None:
    tokenizer = load_dataset(VIDEO, "heldout", levels=levels).tokenizer
    x = torch.rand(6, 1, 5, 12, 12, generator=torch.Generator().manual_seed(levels))
    tokens = tokenizer.encode(x)  # (6, 720)
    decoded = tokenizer.decode(tokens)  # (6, 1, 5, 12, 12)
    assert decoded.shape == x.shape and tokens.shape == (6, 720)
    assert (decoded - x).abs().max() <= 0.5 / (levels - 1) + 1e-6  # the nearest level
    assert torch.equal(tokenizer.encode(decoded), tokens)  # levels are fixed points
    if levels == 17:  # the digits' own 17 grey levels: lossless
        clips, _ = real_images(VIDEO, "heldout", levels=17)
        assert torch.allclose(tokenizer.decode(tokenizer.encode(clips)), clips, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"levels": 1}, "data.options.levels"),
        ({"levels": 2.5}, "data.options.levels"),
        ({"conditional": "yes"}, "data.options.conditional"),
        ({"motion": "zigzag"}, "data.options.motion"),
        ({"speed": 2}, "speed"),
    ],
)
def test_bad_options_fail_validation_naming_the_key(options: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        build_trial({"data": {"name": VIDEO, "options": options}})


def test_reflect_folds_the_line_into_the_room() -> None:
    room = 4
    x = torch.arange(-20, 21)
    folded = reflect(x, room)
    assert folded.min() == 0 and folded.max() == room
    assert torch.equal(reflect(torch.arange(room + 1), room), torch.arange(room + 1))  # identity inside
    assert torch.equal(reflect(x + 2 * room, room), folded) and torch.equal(reflect(-x, room), folded)
    assert ((folded[1:] - folded[:-1]).abs() == 1).all()  # a mirror, not a jump


def test_bouncing_clips_move_by_the_speed_and_reflect_at_the_border() -> None:
    images = torch.rand(12, 1, 8, 8) * 0.9 + 0.1  # no zero pixels: the digit's box is its support
    clips, motions = moving_digit_clips(images, seed=3, motion="bouncing")
    T, room = clips.shape[2], clips.shape[-1] - 8
    for n in range(12):
        velocity = torch.tensor(MOTIONS[motions[n]]) * BOUNCE_SPEED
        corners = torch.stack([clips[n, 0, t].nonzero().min(dim=0).values for t in range(T)])  # (T, 2)
        assert torch.equal(corners, reflect(corners[0] + torch.arange(T)[:, None] * velocity, room))
        for t in range(T):
            y, x = corners[t].tolist()
            assert torch.equal(clips[n, :, t, y : y + 8, x : x + 8], images[n])
    assert (corners.max(dim=0).values <= room).all()
    with pytest.raises(ValueError, match="motion"):
        moving_digit_clips(images, motion="zigzag")


def test_clip_grid_shows_each_clip_as_a_row_of_frames(tmp_path: Path) -> None:
    clips = torch.rand(3, 1, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    path = save_image_grid(clips, tmp_path / "grid.png", scale=1)
    grid = np.asarray(Image.open(path), dtype=np.float32) / 255  # (rows, cols)
    assert grid.shape == (3 * 7 + 1, 5 * 8 + 1)
    for n in range(3):
        for t in range(5):
            frame = grid[1 + n * 7 : 1 + n * 7 + 6, 1 + t * 8 : 1 + t * 8 + 7]
            assert np.abs(frame - clips[n, 0, t].numpy()).max() <= 0.5 / 255 + 1e-6


TINY_VIDEO_TRIAL = {
    "data": {"name": VIDEO, "options": {"levels": 4}},
    "model": {"patch": [1, 3, 3]},
    "train": {"steps": 12, "batch_size": 16, "warmup_steps": 2, "checkpoint_every": 0},
    "sampler": {"name": "euler", "num_steps": 2},
    "eval": {"num_samples": 40, "batch_size": 40, "metrics": [FVD]},
}


def _trial(sampler: str) -> TrialConfig:
    return build_trial({**TINY_VIDEO_TRIAL, "sampler": {"name": sampler, "num_steps": 2}})


@pytest.fixture(scope="module")
def video_records(tmp_path_factory) -> dict[str, TrialRecord]:
    """A tiny trained trial and both data baselines on moving digits, run without Ray."""
    root = tmp_path_factory.mktemp("video")
    out = {}
    for sampler in ("euler", "class_marginals", "heldout_tokens"):
        out[sampler] = run_trial(_trial(sampler), store_root=root / "checkpoints", study_dir=root / "study")
    return out


def test_a_tiny_video_trial_is_scored_by_fvd_with_its_protocol(video_records) -> None:
    record = video_records["euler"]
    assert record.status == "finished", record.error
    assert record.metrics[FVD] > 0 and record.metrics["nfe"] == 2
    protocol = record.protocols[FVD]
    assert protocol["extractor"] == "moving-digits-cnn3d" and protocol["metric"] == FVD
    assert protocol["reference"] == f"{VIDEO}/train" and protocol["num_samples"] == 40
    samples = load_samples(Path(record.artifacts["samples_dir"]) / "seed_0")
    assert samples.images.shape == (40, 1, 5, 12, 12) and samples.tokens.shape == (40, 720)
    assert torch.equal(samples.labels, torch.arange(40) % 10)
    assert Image.open(record.artifacts["samples_png"]).size == ((5 * 13 + 1) * 4, (20 * 13 + 1) * 4)


def test_video_baselines_rank_the_floor_below_the_trivial_line(video_records) -> None:
    floor, trivial = video_records["heldout_tokens"], video_records["class_marginals"]
    assert floor.status == trivial.status == "finished"
    assert floor.metrics[FVD] * 5 < trivial.metrics[FVD]
    assert floor.protocols[FVD]["key"] == trivial.protocols[FVD]["key"]  # one protocol, comparable


def test_video_trial_logs_fvd_and_its_protocol_to_mlflow(video_records, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "video")
    tracker.start_invocation({"name": "video"}, {})
    assert tracker.sync(list(video_records.values())) == 3
    tracker.end_invocation()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name("video"))
    runs = {
        r.data.tags[TAG_TRIAL_HASH]: r
        for r in client.search_runs([experiment.experiment_id])
        if TAG_TRIAL_HASH in r.data.tags
    }
    for record in video_records.values():
        run = runs[record.trial_hash]
        assert run.data.metrics[FVD] == pytest.approx(record.metrics[FVD])
        assert json.loads(run.data.tags[f"{TAG_PROTOCOL_PREFIX}{FVD}"]) == record.protocols[FVD]
