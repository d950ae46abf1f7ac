"""FVD with the project-trained 3D CNN on synthetic moving-digit clips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.data.sources.moving_digits import MOTIONS, moving_digit_clips
from harness.evaluation import FID, FVD, Evaluator, FeatureExtractor, build_extractor, default_metrics
from harness.evaluation.video import moving_digits_reference


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "unmask-eval-cache"


@pytest.fixture(autouse=True)
def _cache_in_tmp(monkeypatch: pytest.MonkeyPatch, eval_cache: Path) -> None:
    monkeypatch.setenv("UNMASK_CACHE", str(eval_cache))


@pytest.fixture(scope="module")
def video_cnn(eval_cache: Path) -> FeatureExtractor:
    return build_extractor("moving-digits-cnn3d", cache_dir=eval_cache)


def test_clips_move_one_pixel_per_frame_inside_the_canvas() -> None:
    images = torch.rand(6, 1, 8, 8) * 0.9 + 0.1  # no zero pixels, so the digit's box is its support
    clips, motions = moving_digit_clips(images, num_frames=5, canvas=12, seed=4)
    assert clips.shape == (6, 1, 5, 12, 12) and motions.shape == (6,)
    for n in range(6):
        dy, dx = MOTIONS[motions[n]]
        boxes = [clips[n, 0, t].nonzero().min(dim=0).values for t in range(5)]
        for t in range(5):
            y, x = boxes[t].tolist()
            assert (y, x) == (boxes[0][0] + t * dy, boxes[0][1] + t * dx)
            assert torch.equal(clips[n, :, t, y : y + 8, x : x + 8], images[n])
            assert clips[n, 0, t].count_nonzero() == 64
    again, _ = moving_digit_clips(images, num_frames=5, canvas=12, seed=4)
    assert torch.equal(again, clips)


def test_video_cnn_learns_digit_and_motion(video_cnn) -> None:
    print(f"\nmoving-digits-cnn3d held-out accuracy (50 classes): {video_cnn.heldout_accuracy:.3f}")
    assert video_cnn.heldout_accuracy > 0.5  # chance is 0.02
    assert video_cnn.input_kind == "video" and FVD in default_metrics(video_cnn)


def test_fvd_separates_real_clips_from_noise_and_from_frozen_motion(video_cnn) -> None:
    evaluator = Evaluator(moving_digits_reference("train"), extractor=video_cnn, metrics=[FVD])
    heldout = moving_digits_reference("heldout").data  # (297, 1, 5, 12, 12)
    frozen = heldout[:, :, :1].expand_as(heldout).contiguous()  # every clip stands still
    noise = torch.rand(heldout.shape, generator=torch.Generator().manual_seed(0))
    sets = {"real": heldout, "frozen": frozen, "noise": noise}
    fvd = {name: evaluator.evaluate(x, sample_seed=0)[0] for name, x in sets.items()}
    print({k: round(v.value, 3) for k, v in fvd.items()})
    assert fvd["real"].value * 3 < fvd["frozen"].value < fvd["noise"].value
    assert fvd["real"].protocol.extractor == "moving-digits-cnn3d" and fvd["real"].name == FVD


def test_image_metrics_are_refused_for_video_and_default_extractor_is_used(video_cnn) -> None:
    with pytest.raises(ValueError, match="video"):
        Evaluator(moving_digits_reference("heldout"), extractor=video_cnn, metrics=[FID])
    evaluator = Evaluator(moving_digits_reference("heldout"), metrics=[FVD])  # default: moving-digits-cnn3d
    assert evaluator.extractor.weights_sha256 == video_cnn.weights_sha256
