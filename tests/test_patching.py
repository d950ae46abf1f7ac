"""Token patching and the model config's patch / modalities fields: patchify is a bijection with a
known layout, patch (1, ..., 1) is no patching, bad patches name themselves, configs round-trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampler_stubs import one_thread  # noqa: F401  (an autouse fixture)

from models.backbone import DiscreteDiT, ModelConfig
from models.modalities import Layout, Modality
from models.patching import patchify, unpatchify

SMALL = {"size": "tiny", "depth": 1, "width": 32, "heads": 2}
LAYOUT = Layout((Modality("image", 5, (4, 4)), Modality("labels", 3, (2, 4))))


@st.composite
def grid_and_patch(draw):
    """A grid of rank 1-3 and a patch that tiles it: g_i = p_i * c_i."""
    rank = draw(st.integers(1, 3))
    patch = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    coarse = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    return tuple(p * c for p, c in zip(patch, coarse, strict=True)), patch


@settings(deadline=None, max_examples=40)
@given(
    gp=grid_and_patch(),
    B=st.integers(1, 3),
    rest=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    seed=st.integers(0, 2**16),
)
def test_unpatchify_inverts_patchify(gp, B, rest, seed):
    grid, patch = gp
    L = math.prod(grid)
    x = torch.randn(B, L, *rest, generator=torch.Generator().manual_seed(seed))  # (B, L, *rest)
    patches = patchify(x, grid, patch)
    assert patches.shape == (B, L // math.prod(patch), math.prod(patch), *rest)
    assert torch.equal(unpatchify(patches, grid, patch), x)
    # A bijection of positions: every token lands in exactly one patch slot.
    ids = torch.arange(L).expand(B, L)
    assert torch.equal(patchify(ids, grid, patch).reshape(B, -1).sort(dim=1).values, ids)


def test_patchify_known_layout_2d():
    """4 x 4 grid, 2 x 2 patches: patches row-major over the coarse grid, tokens row-major within."""
    x = torch.arange(16)[None]  # (1, 16)
    expected = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert patchify(x, (4, 4), (2, 2))[0].tolist() == expected
    # Trailing dims travel with their token.
    pairs = torch.stack([x, -x], dim=-1)  # (1, 16, 2)
    assert patchify(pairs, (4, 4), (2, 2))[0, 1].tolist() == [[2, -2], [3, -3], [6, -6], [7, -7]]


def test_patchify_known_layout_1d_and_3d():
    assert patchify(torch.arange(6)[None], (6,), (3,))[0].tolist() == [[0, 1, 2], [3, 4, 5]]
    # (T, H, W) = (2, 2, 2) with patch (2, 1, 2): a patch spans time and width at one row.
    out = patchify(torch.arange(8)[None], (2, 2, 2), (2, 1, 2))[0]
    assert out.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]


# --- ModelConfig.patch ----------------------------------------------------------------------------------


def perturbed(config: ModelConfig, seed: int = 0) -> DiscreteDiT:
    """Built after torch.manual_seed(seed), then every weight moved (the zero head would hide all)."""
    torch.manual_seed(seed)
    net = DiscreteDiT(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize(
    "config, patch",
    [
        (ModelConfig(7, (4, 4), timestep="explicit", **SMALL), (1, 1)),
        (ModelConfig(7, (2, 2, 3), **SMALL), (1, 1, 1)),
        (ModelConfig.joint(LAYOUT, timestep="explicit", **SMALL), (1, 1)),
    ],
)
def test_unit_patch_is_no_patch(config, patch):
    plain, unit = perturbed(config), perturbed(config.with_(patch=patch))
    for (name, a), (_, b) in zip(plain.state_dict().items(), unit.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    g = torch.Generator().manual_seed(3)
    x_t = torch.randint(0, config.num_ids, (3, config.seq_len), generator=g)  # (B, L)
    t = torch.rand(3, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(unit(x_t, t), plain(x_t, t), rtol=0, atol=1e-6)


def test_patch_groups_tokens():
    """A real patch changes the network (P embedding tables, P V head outputs), shapes stay (B, L, V)."""
    config = ModelConfig.joint(LAYOUT, **SMALL).with_(patch=(2, 2))
    net = perturbed(config)
    assert net.token_embed.num_embeddings == 4 * config.num_ids
    assert net.pos_embed.shape[0] == 4 + 2  # (4/2)(4/2) image patches + (2/2)(4/2) label patches
    assert net.segment_ids.tolist() == [0] * 4 + [1] * 2  # the modality embedding per patch
    x_t = torch.randint(0, LAYOUT.vocab_size, (2, config.seq_len))
    with torch.no_grad():
        logits = net(x_t)  # (B, L, V)
    assert logits.shape == (2, config.seq_len, config.num_ids)
    # Each position keeps its own modality's codes under patching too.
    probs = logits.softmax(dim=-1)
    assert (probs * LAYOUT.allowed()).sum(dim=-1).sub(1).abs().max() < 1e-6


@pytest.mark.parametrize(
    "make, patch",
    [
        (lambda patch: ModelConfig(7, (4, 4), patch=patch), (3, 2)),
        (lambda patch: ModelConfig(7, (4, 4), patch=patch), (2,)),
        (lambda patch: ModelConfig(7, (6,), patch=patch), (4,)),
        (lambda patch: ModelConfig.joint(LAYOUT, patch=patch), (4, 4)),  # tiles image, not labels
    ],
)
def test_patch_that_does_not_tile_names_itself(make, patch):
    with pytest.raises(ValueError, match=r"model\.patch") as error:
        make(patch)
    assert str(list(patch)) in str(error.value)


# --- to_dict / from_dict ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig.joint(LAYOUT, timestep="explicit", **SMALL),
        ModelConfig(7, (4, 6), patch=(2, 3), num_classes=3, **SMALL),
        ModelConfig.joint(LAYOUT, **SMALL).with_(patch=(2, 2)),
    ],
)
def test_config_round_trip_through_json(config):
    d = json.loads(json.dumps(config.to_dict()))
    again = ModelConfig.from_dict(d)
    assert again == config
    assert again.to_dict() == config.to_dict()
    assert again.layout == config.layout
    assert torch.equal(torch.as_tensor(again.mask_id), torch.as_tensor(config.mask_id))


def test_plain_config_dict_has_no_new_keys():
    """Older checkpoints' dicts have neither key; a plain config must write the same dict."""
    d = ModelConfig(7, (4, 4), num_classes=2, **SMALL).to_dict()
    assert "modalities" not in d and "patch" not in d
    assert ModelConfig.from_dict(d).patch is None and ModelConfig.from_dict(d).modalities == ()
    assert "modalities" in ModelConfig.joint(LAYOUT).to_dict()
    assert ModelConfig(7, (4, 4), patch=(2, 2)).to_dict()["patch"] == [2, 2]
