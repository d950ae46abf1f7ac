"""The DiT backbone: shapes over grids of any rank, ETM vs ITM, conditioning, config round trip."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.backbone import SIZE_PRESETS, DiscreteDiT, ModelConfig, build_model, sincos_grid

K = 7


def config(grid=(4,), timestep="implicit", num_classes=3, **kw) -> ModelConfig:
    return ModelConfig(
        vocab_size=K,
        grid=grid,
        num_classes=num_classes,
        timestep=timestep,
        size="tiny",
        depth=1,
        width=32,
        heads=2,
        **kw,
    )


def perturbed(cfg: ModelConfig, seed: int = 0) -> DiscreteDiT:
    """Random weights everywhere: the zero-initialised head/adaLN would make every output zero."""
    torch.manual_seed(seed)
    net = build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


def tokens(cfg: ModelConfig, B: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K + 1, (B, cfg.seq_len), generator=torch.Generator().manual_seed(seed))


@settings(deadline=None, max_examples=12)
@given(
    grid=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
    B=st.integers(1, 3),
    timestep=st.sampled_from(["implicit", "explicit"]),
)
def test_output_shape(grid, B, timestep):
    cfg = config(grid=grid, timestep=timestep)
    net = perturbed(cfg)
    with torch.no_grad():
        out = net(tokens(cfg, B), torch.rand(B), torch.zeros(B, dtype=torch.long))
    assert out.shape == (B, math.prod(grid), K + 1)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("grid", [(6,), (3, 4), (2, 3, 2)])
def test_zero_initialised_head_gives_uniform_logits(grid):
    cfg = config(grid=grid)
    with torch.no_grad():
        out = DiscreteDiT(cfg)(tokens(cfg, 2), None, None)
    assert out.shape == (2, cfg.seq_len, K + 1)
    assert torch.all(out == 0)


def test_wrong_sequence_length_raises():
    cfg = config(grid=(2, 3))
    with pytest.raises(ValueError):
        DiscreteDiT(cfg)(torch.zeros(1, 5, dtype=torch.long), None, None)


def test_itm_ignores_t():
    cfg = config(grid=(2, 3), timestep="implicit")
    net = perturbed(cfg)
    x_t, y = tokens(cfg, 3), torch.tensor([0, 1, 2])
    with torch.no_grad():
        a = net(x_t, torch.zeros(3), y)
        b = net(x_t, torch.tensor([0.3, 0.6, 1.0]), y)
        c = net(x_t, None, y)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_etm_depends_on_t():
    cfg = config(grid=(2, 3), timestep="explicit")
    net = perturbed(cfg)
    x_t, y = tokens(cfg, 3), torch.tensor([0, 1, 2])
    with torch.no_grad():
        a = net(x_t, torch.zeros(3), y)
        b = net(x_t, torch.tensor([0.3, 0.6, 1.0]), y)
        again = net(x_t, torch.zeros(3), y)
    assert torch.equal(a, again)
    assert (a - b).abs().amax(dim=(1, 2)).min() > 1e-3, "every sample's logits must move with t"
    with pytest.raises(ValueError):
        net(x_t, None, y)


def test_class_conditioning_changes_outputs():
    cfg = config(grid=(2, 3), num_classes=3)
    net = perturbed(cfg)
    x_t = tokens(cfg, 1).expand(4, -1)
    with torch.no_grad():
        out = net(x_t, None, torch.tensor([0, 1, 2, 3]))  # 3 is the null class
        null = net(x_t[:1], None, None)
    for i in range(4):
        for j in range(i):
            assert (out[i] - out[j]).abs().max() > 1e-3
    torch.testing.assert_close(out[3:], null)  # y = None means the null class


def test_samples_are_independent_in_a_batch():
    cfg = config(grid=(2, 3), timestep="explicit")
    net = perturbed(cfg)
    x_t, t, y = tokens(cfg, 4), torch.rand(4), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        whole = net(x_t, t, y)
        single = torch.cat([net(x_t[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, single, rtol=1e-5, atol=1e-5)


@settings(deadline=None, max_examples=20)
@given(
    grid=st.lists(st.integers(1, 64), min_size=1, max_size=3).map(tuple),
    num_classes=st.integers(0, 1000),
    timestep=st.sampled_from(["implicit", "explicit"]),
    size=st.sampled_from(sorted(SIZE_PRESETS)),
    time_scale=st.floats(0.5, 2000.0),
)
def test_config_round_trip(grid, num_classes, timestep, size, time_scale):
    cfg = ModelConfig(
        vocab_size=16384,
        grid=grid,
        num_classes=num_classes,
        timestep=timestep,
        size=size,
        time_scale=time_scale,
    )
    d = cfg.to_dict()
    assert isinstance(d["grid"], list)
    again = ModelConfig.from_dict(d)
    assert again == cfg and isinstance(again.grid, tuple)
    assert again.to_dict() == d


def test_config_properties():
    cfg = config(grid=(2, 3, 4), num_classes=10)
    assert cfg.seq_len == 24 and cfg.mask_id == K and cfg.null_class == 10
    assert cfg.dims == (1, 32, 2)
    assert ModelConfig(vocab_size=K, grid=[4, 4]).grid == (4, 4)
    assert config().with_(timestep="explicit").timestep == "explicit"


@pytest.mark.parametrize(
    "field, changes",
    [
        ("timestep", {"timestep": "sometimes"}),
        ("size", {"size": "DiT-XXL"}),
    ],
)
def test_unknown_choices_name_the_field(field, changes):
    with pytest.raises(ValueError, match=field) as info:
        ModelConfig(vocab_size=K, grid=(4,), **changes)
    assert repr(changes[field]) in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vocab_size": 1, "grid": (4,)},
        {"vocab_size": K, "grid": ()},
        {"vocab_size": K, "grid": (4, 0)},
        {"vocab_size": K, "grid": (4,), "width": 30, "heads": 4},
    ],
)
def test_invalid_configs_raise(kwargs):
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)


@settings(deadline=None, max_examples=20)
@given(grid=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple), half_dim=st.integers(6, 32))
def test_sincos_grid_shape_and_distinct_rows(grid, half_dim):
    dim = 2 * half_dim  # at least two sin/cos pairs per axis
    pos = sincos_grid(grid, dim)
    L = math.prod(grid)
    assert pos.shape == (L, dim)
    assert torch.isfinite(pos).all()
    distances = torch.cdist(pos.double(), pos.double())
    off_diagonal = distances + torch.eye(L, dtype=torch.float64) * 1e9
    assert off_diagonal.min() > 1e-3, "two positions share an embedding"


def test_sincos_grid_axis_layout():
    """Row-major positions: the first-axis share of the channels depends only on the first coordinate."""
    H, W, dim = 3, 5, 16
    pos = sincos_grid((H, W), dim).view(H, W, dim)
    per_axis = dim // 2
    assert torch.allclose(pos[:, :1, :per_axis].expand(H, W, per_axis), pos[..., :per_axis])
    assert torch.allclose(pos[:1, :, per_axis:].expand(H, W, per_axis), pos[..., per_axis:])
