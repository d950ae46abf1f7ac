"""Several modalities in one sequence: the id layout, the joint network, corruption and loss per
modality, sampling one modality given another, and a tiny joint model that learns to segment."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampler_stubs import one_thread  # noqa: F401  (an autouse fixture)

from models.backbone import DiscreteDiT, ModelConfig
from models.data_parallel import draw_micro_batch
from models.losses import LOSSES, masked_positions
from models.modalities import GivenModalities, Layout, Modality
from models.samplers import Denoiser, EulerSampler, MaskGITSampler
from models.schedulers import Cosine
from models.trainer import TrainConfig, init_state, train, train_step

SMALL = {"size": "tiny", "depth": 1, "width": 32, "heads": 2}
LAYOUT = Layout((Modality("a", 6, (4, 4)), Modality("b", 3, (2, 4))))


@st.composite
def layouts(draw, min_modalities: int = 1) -> Layout:
    n = draw(st.integers(min_modalities, 3))
    return Layout(
        tuple(
            Modality(
                f"m{i}",
                draw(st.integers(2, 7)),
                tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))),
            )
            for i in range(n)
        )
    )


def random_parts(layout: Layout, B: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m.name: torch.randint(0, m.vocab_size, (B, m.seq_len), generator=g) for m in layout.modalities}


# --- Layout -----------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(layout=layouts(), B=st.integers(1, 3), seed=st.integers(0, 2**16), data_=st.data())
def test_split_inverts_join_and_missing_parts_are_mask(layout, B, seed, data_):
    parts = random_parts(layout, B, seed)
    x = layout.join(parts)  # (B, L)
    assert x.shape == (B, layout.seq_len)
    assert x.min() >= 0 and x.max() < layout.vocab_size
    for name, local in layout.split(x).items():
        assert torch.equal(local, parts[name])
    for i, m in enumerate(layout.modalities):  # global ids live in [offset_m, offset_m + K_m)
        seg = x[:, layout.segment(m.name)]
        assert seg.min() >= layout.offsets[i] and seg.max() < layout.offsets[i] + m.vocab_size
    missing = data_.draw(st.sets(st.sampled_from(layout.names), max_size=len(layout.names) - 1))
    present = {n: parts[n] for n in layout.names if n not in missing}
    partial = layout.join(present)  # missing modalities left out ...
    assert torch.equal(partial, layout.join({**present, **dict.fromkeys(missing)}))  # ... or None
    for i, m in enumerate(layout.modalities):
        seg = partial[:, layout.segment(m.name)]
        if m.name in missing:
            assert torch.all(seg == layout.vocab_size + i)
            assert torch.all(layout.split(partial)[m.name] == m.vocab_size)
        else:
            assert torch.equal(seg, x[:, layout.segment(m.name)])


@settings(deadline=None, max_examples=40)
@given(layout=layouts())
def test_mask_ids_and_allowed_codes(layout):
    mask_ids, allowed = layout.mask_ids(), layout.allowed()  # (L,), (L, K + M)
    assert mask_ids.shape == (layout.seq_len,) and allowed.shape == (layout.seq_len, layout.num_ids)
    per_modality = [set(mask_ids[layout.segment(m.name)].tolist()) for m in layout.modalities]
    assert all(len(ids) == 1 for ids in per_modality)  # one [MASK] per modality ...
    flat = [i for ids in per_modality for i in ids]
    assert len(set(flat)) == len(flat)  # ... distinct across modalities ...
    assert min(flat) >= layout.vocab_size and max(flat) < layout.num_ids  # ... never a data code
    for i, m in enumerate(layout.modalities):
        rows = allowed[layout.segment(m.name)]  # (L_m, K + M)
        assert torch.all(rows.sum(dim=1) == m.vocab_size)
        inside = torch.zeros(layout.num_ids, dtype=torch.bool)
        inside[layout.offsets[i] : layout.offsets[i] + m.vocab_size] = True
        assert torch.all(rows == inside)
    assert not allowed[torch.arange(layout.seq_len), mask_ids].any()


@settings(deadline=None, max_examples=30)
@given(layout=layouts(), B=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_token_times(layout, B, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(B, generator=g)
    M = len(layout.modalities)
    assert torch.equal(layout.token_times(t), layout.token_times(t[:, None].repeat(1, M)))
    t_m = torch.rand(B, M, generator=g)
    per_token = layout.token_times(t_m)  # (B, L)
    for i, m in enumerate(layout.modalities):
        assert torch.all(per_token[:, layout.segment(m.name)] == t_m[:, i : i + 1])
    with pytest.raises(ValueError):
        layout.token_times(torch.rand(B, M + 1))


@settings(deadline=None, max_examples=20)
@given(vocab_size=st.integers(2, 9), grid=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))
def test_one_modality_is_the_single_grid_convention(vocab_size, grid):
    layout = Layout((Modality("x", vocab_size, grid),))
    L = math.prod(grid)
    assert layout.offsets == [0] and layout.num_ids == vocab_size + 1
    assert torch.all(layout.mask_ids() == vocab_size)
    assert torch.equal(layout.allowed(), (torch.arange(vocab_size + 1) < vocab_size).expand(L, -1))
    codes = torch.randint(0, vocab_size, (2, L))
    assert torch.equal(layout.join({"x": codes}), codes)
    plain = ModelConfig(vocab_size, grid)
    joint = ModelConfig.joint(layout)
    assert joint.num_ids == plain.num_ids and torch.all(joint.mask_id == plain.mask_id)


def test_layout_rejects_bad_input():
    for vocab_size, grid in ((1, (4,)), (3, ()), (3, (2, 0))):
        with pytest.raises(ValueError, match="'x'"):
            Modality("x", vocab_size, grid)
    with pytest.raises(ValueError, match="distinct names"):
        Layout((Modality("a", 2, (2,)), Modality("a", 3, (2,))))
    with pytest.raises(ValueError, match="'b'"):
        LAYOUT.join({"a": torch.zeros(1, 16, dtype=torch.long), "b": torch.full((1, 8), 3)})
    with pytest.raises(ValueError, match="'c'"):
        LAYOUT.join({"c": torch.zeros(1, 4, dtype=torch.long)})


# --- the joint network ------------------------------------------------------------------------------------


def joint_net(timestep: str = "explicit", seed: int = 0, scale: float = 0.0, layout: Layout = LAYOUT):
    """A joint DiscreteDiT; ``scale`` > 0 moves every weight randomly (the zero head hides all)."""
    torch.manual_seed(seed)
    net = DiscreteDiT(ModelConfig.joint(layout, timestep=timestep, **SMALL)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def any_ids(layout: Layout, B: int, seed: int) -> torch.Tensor:
    """(B, L) ids: each position its own modality's codes or its [MASK]."""
    x = layout.join(random_parts(layout, B, seed))
    drop = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.5
    return torch.where(drop, layout.mask_ids().expand_as(x), x)


@settings(deadline=None, max_examples=8)
@given(layout=layouts(min_modalities=2), scale=st.sampled_from([0.0, 0.5, 3.0]), seed=st.integers(0, 100))
def test_logits_put_all_mass_on_own_codes(layout, scale, seed):
    """Several modalities (one keeps the single-grid convention: [MASK] in V, the sampler excludes it)."""
    net = joint_net("explicit", seed, scale, layout)
    with torch.no_grad():
        probs = net(any_ids(layout, 3, seed), torch.rand(3)).softmax(dim=-1)  # (B, L, V)
    own = (probs * layout.allowed()).sum(dim=-1)  # (B, L)
    assert (own - 1).abs().max() < 1e-6
    assert probs[..., layout.vocab_size :].max() < 1e-30  # never any [MASK] id


def test_explicit_model_embeds_one_time_per_modality():
    net, x_t = joint_net("explicit", scale=0.3), any_ids(LAYOUT, 2, 0)
    t = torch.tensor([[0.2, 0.7], [0.9, 0.1]])  # (B, M)
    with torch.no_grad():
        base = net(x_t, t)
        moved = net(x_t, torch.stack([t[:, 0], t[:, 1] + 0.2], dim=1))  # modality b's time only
        swapped = net(x_t, t.flip(1))
        same = net(x_t, t[:, 0]), net(x_t, t[:, :1].repeat(1, 2))  # (B,) vs equal columns
    assert (moved - base).abs().max() > 1e-3
    assert (swapped - base).abs().max() > 1e-3  # the times are not pooled symmetrically
    torch.testing.assert_close(same[0], same[1], rtol=0, atol=1e-6)


def test_implicit_model_ignores_t():
    net, x_t = joint_net("implicit", scale=0.3), any_ids(LAYOUT, 2, 0)
    with torch.no_grad():
        out = [net(x_t, t) for t in (None, torch.rand(2), torch.rand(2, 2))]
    assert out[0].abs().max() > 1e-3
    for other in out[1:]:
        assert torch.equal(other, out[0])


# --- corruption and loss in training ------------------------------------------------------------------


def joint_tokens(N: int, seed: int = 0, layout: Layout = LAYOUT) -> torch.Tensor:
    return layout.join(random_parts(layout, N, seed))  # (N, L)


def draw(config: TrainConfig, model_config: ModelConfig, tokens: torch.Tensor, seed: int = 0):
    return draw_micro_batch(
        tokens, None, config, config.build_scheduler(), model_config, torch.Generator().manual_seed(seed)
    )


def per_modality_t(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The returned t, (B,) or (B, M), as (B, M)."""
    return t[:, None].repeat(1, len(layout.modalities)) if t.dim() == 1 else t


def test_corruption_masks_each_modality_at_its_own_rate_with_its_own_mask():
    layout = Layout((Modality("a", 5, (8, 8)), Modality("b", 3, (6,))))
    config, model_config = TrainConfig(batch_size=3000, scheduler="cosine"), ModelConfig.joint(layout)
    batch = draw(config, model_config, joint_tokens(200, 1, layout))
    t_m = per_modality_t(batch.t, layout)  # (B, M)
    masked = masked_positions(batch.x_t, model_config.mask_id)  # (B, L)
    assert torch.equal(batch.x_t[~masked], batch.x_1[~masked])
    kappa = config.build_scheduler().kappa
    for i, m in enumerate(layout.modalities):
        seg = layout.segment(m.name)
        assert torch.all(batch.x_t[:, seg][masked[:, seg]] == layout.vocab_size + i)  # m's own [MASK]
        fraction = masked[:, seg].double().mean(dim=1)  # (B,)
        expected = 1 - kappa(t_m[:, i]).double()  # (B,)
        bins = (t_m[:, i] * 5).long().clamp(max=4)
        for k in range(5):  # the masked fraction follows 1 - kappa(t_m) across t, bin by bin
            rows = bins == k
            gap = (fraction[rows] - expected[rows]).mean().abs().item()
            assert gap < 5 * math.sqrt(0.25 / (rows.sum().item() * m.seq_len)), (m.name, k, gap)


def test_corruption_draws_independent_times_per_modality():
    config, model_config = TrainConfig(batch_size=2000), ModelConfig.joint(LAYOUT)
    batch = draw(config, model_config, joint_tokens(100))
    assert batch.t.shape == (2000, 2), f"joint t has shape {tuple(batch.t.shape)}, expected (B, M)"
    assert (batch.t[:, 0] != batch.t[:, 1]).float().mean() > 0.99
    corr = torch.corrcoef(batch.t.T.double())[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(2000)


def test_maskgit_corruption_uses_each_modality_mask():
    config, model_config = TrainConfig(batch_size=64, corruption="maskgit"), ModelConfig.joint(LAYOUT)
    batch = draw(config, model_config, joint_tokens(50))
    mask_ids = model_config.mask_id.expand_as(batch.x_t)  # (B, L)
    masked = batch.x_t != batch.x_1
    assert masked.any() and torch.equal(batch.x_t[masked], mask_ids[masked])


@pytest.mark.parametrize("loss", ["masked_ce", "elbo"])
def test_joint_loss_is_the_sum_of_per_modality_losses(loss):
    """train_step's loss on a batch == sum over m of the loss of segment m alone, at t_m."""
    model_config = ModelConfig.joint(LAYOUT, timestep="explicit", **SMALL)
    config = TrainConfig(batch_size=16, loss=loss, warmup_steps=1)
    state, scheduler, tokens = init_state(model_config, config), config.build_scheduler(), joint_tokens(40)
    with torch.no_grad():
        for p in state.model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    replay = torch.Generator()
    replay.set_state(state.generator.get_state())  # the batch train_step is about to draw
    batch = draw_micro_batch(tokens, None, config, scheduler, model_config, replay)
    with torch.no_grad():
        logits = state.model(batch.x_t, batch.t)  # (B, L, V)
    masked, t_m = masked_positions(batch.x_t, model_config.mask_id), per_modality_t(batch.t, LAYOUT)
    expected = sum(
        LOSSES[loss](logits[:, s], batch.x_1[:, s], masked[:, s], t_m[:, i], scheduler).item()
        for i, s in enumerate(LAYOUT.segment(n) for n in LAYOUT.names)
    )
    got = train_step(state, tokens, None, config, scheduler, "cpu")
    assert got == pytest.approx(expected, rel=1e-5)


# --- sampling one modality given another ------------------------------------------------------------------


class Recording:
    """Stands between GivenModalities and a network (no ``.config``): records every (x_t, t)."""

    def __init__(self, net) -> None:
        self.net, self.calls = net, []

    def __call__(self, x_t, t, y):
        self.calls.append((x_t.clone(), t.clone()))
        return self.net(x_t, t, y)


def one_code_net(codes: dict[str, int], layout: Layout = LAYOUT):
    """All the mass on global id offset_m + codes[m] at every position of modality m."""
    ids = torch.tensor([layout.offsets[i] + codes[m.name] for i, m in enumerate(layout.modalities)])
    target = ids[layout.position_modality()]  # (L,)

    def net(x_t, t, y):
        logits = torch.full((*x_t.shape, layout.num_ids), -math.inf)  # (B, L, V)
        return logits.scatter(-1, target.expand_as(x_t)[..., None], 0.0)

    return net


SAMPLERS = {
    "euler": EulerSampler(num_steps=6),
    "euler-remask": EulerSampler(num_steps=6, remask_scale=4.0),
    "maskgit": MaskGITSampler(num_steps=5, scheduler=Cosine()),
    "maskgit-random": MaskGITSampler(num_steps=5, randomization="random"),
}


def sample_given(sampler, net, given: str, B: int = 4, seed: int = 0):
    codes = random_parts(LAYOUT, B, seed)[given]  # (B, L_given)
    recording = Recording(net)
    out = sampler.sample(
        Denoiser(GivenModalities(recording, LAYOUT, [given])),
        batch_size=B,
        seq_len=LAYOUT.seq_len,
        mask_id=LAYOUT.mask_ids(),
        x_init=LAYOUT.join({given: codes}),
        generator=torch.Generator().manual_seed(seed + 1),
    )
    return codes, out.tokens, recording.calls


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("given", ["a", "b"])
def test_given_modality_is_clamped_and_seen_at_t_1(name, given):
    sampler, g, other = SAMPLERS[name], LAYOUT.index(given), 1 - LAYOUT.index(given)
    codes, x, calls = sample_given(sampler, joint_net("explicit", scale=0.5), given)
    assert torch.equal(LAYOUT.split(x)[given], codes)
    seg = LAYOUT.segment(LAYOUT.names[other])
    lo, K_other = LAYOUT.offsets[other], LAYOUT.modalities[other].vocab_size
    assert x[:, seg].min() >= lo and x[:, seg].max() < lo + K_other  # own codes, no [MASK] left
    assert len(calls) == sampler.num_steps
    for k, (_, t) in enumerate(calls):
        assert t.shape == (4, 2) and torch.all(t[:, g] == 1.0)
        if isinstance(sampler, EulerSampler):  # the generated modality runs on the Euler grid
            assert torch.allclose(t[:, other], sampler.grid()[k].expand(4))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_one_code_network_gives_exactly_that_code(name):
    codes = {"a": 4, "b": 2}
    given, x, _ = sample_given(SAMPLERS[name], one_code_net(codes), "a", seed=3)
    parts = LAYOUT.split(x)
    assert torch.equal(parts["a"], given) and torch.all(parts["b"] == codes["b"])
    given, x, _ = sample_given(SAMPLERS[name], one_code_net(codes), "b", seed=3)
    parts = LAYOUT.split(x)
    assert torch.equal(parts["b"], given) and torch.all(parts["a"] == codes["a"])


@pytest.mark.parametrize("given", ["a", "b"])
def test_maskgit_time_follows_the_generated_fraction(given):
    """kappa(t) = 1 - masked / generated, counted over the generated segment only."""
    sampler, other = MaskGITSampler(num_steps=4, scheduler=Cosine()), 1 - LAYOUT.index(given)
    _, _, calls = sample_given(sampler, joint_net("explicit", scale=0.5), given)
    seg = LAYOUT.segment(LAYOUT.names[other])
    fractions = []
    for x_t, t in calls:
        masked = (x_t[:, seg] == LAYOUT.vocab_size + other).double().mean(dim=1)  # (B,)
        torch.testing.assert_close(Cosine().kappa(t[:, other]).double(), 1 - masked, rtol=0, atol=1e-5)
        fractions.append(masked[0].item())
    assert fractions[0] == 1.0 and 0 < fractions[-1] < 1  # it starts at 0 and moves


# --- a tiny joint model learns to segment -----------------------------------------------------------------


def test_tiny_joint_model_segments_given_the_image():
    """b = a mod 3 per position (4 x 4 each): given a, Euler recovers b far above chance (1/3)."""
    layout = Layout((Modality("a", 6, (4, 4)), Modality("b", 3, (4, 4))))
    a = torch.randint(0, 6, (1024, 16), generator=torch.Generator().manual_seed(0))  # (N, 16)
    model_config = ModelConfig.joint(layout, size="tiny", timestep="explicit")
    config = TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=20)
    a_test = torch.randint(0, 6, (64, 16), generator=torch.Generator().manual_seed(1))  # held out

    def accuracy(net) -> float:
        out = EulerSampler(num_steps=8).sample(
            Denoiser(GivenModalities(net, layout, ["a"])),
            batch_size=64,
            seq_len=layout.seq_len,
            mask_id=layout.mask_ids(),
            x_init=layout.join({"a": a_test}),
            generator=torch.Generator().manual_seed(2),
        )
        parts = layout.split(out.tokens)
        assert torch.equal(parts["a"], a_test)
        return (parts["b"] == a_test % 3).double().mean().item()

    assert accuracy(init_state(model_config, config).model.eval()) < 0.5  # untrained: about chance
    state = train(model_config, config, layout.join({"a": a, "b": a % 3}))
    assert accuracy(state.model) > 0.9
