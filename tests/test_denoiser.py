"""The Denoiser: logits of chosen rows, and which CFG mode the default runs.

The default may pick either mode on CPU, so these tests pin what must not depend on the pick:
the logits (those of batched CFG, bit for bit) and the NFE (one evaluation per guided step, two
unbatched calls), and that the forward calls made are those of the mode it kept.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampler_stubs import perturbed_dit

from models.backbone import DiscreteDiT, ModelConfig
from models.samplers import CFG_MODES, Denoiser
from models.samplers import denoiser as denoiser_module
from models.samplers.denoiser import choose_batching

NUM_CLASSES = 5


def dit(seed: int = 0) -> DiscreteDiT:
    config = ModelConfig(vocab_size=6, grid=(3, 4), num_classes=NUM_CLASSES, depth=1, width=32, heads=2)
    return perturbed_dit(config, seed)


@settings(deadline=None, max_examples=10)
@given(s=st.floats(-2.0, 6.0).filter(lambda s: s != 1.0), B=st.integers(1, 6), seed=st.integers(0, 1000))
def test_the_default_cfg_mode_gives_the_bits_of_the_mode_it_names(s, B, seed):
    """Whatever the default picks, every call (the timed first one included) gives the logits of
    that mode forced, bit for bit, and both modes agree to float32 rounding."""
    net = dit(seed=seed % 3)  # a new network: the choice is made afresh
    g = torch.Generator().manual_seed(seed)
    x_t, t = torch.randint(0, 7, (B, 12), generator=g), torch.rand(B, generator=g)
    y = torch.randint(0, NUM_CLASSES, (B,), generator=g)
    forced = {
        mode: Denoiser(net, cfg_scale=s, null_class=NUM_CLASSES, cfg_batched=mode == "batched")(x_t, t, y)
        for mode in ("batched", "two-pass")
    }
    torch.testing.assert_close(forced["batched"], forced["two-pass"])
    default = Denoiser(net, cfg_scale=s, null_class=NUM_CLASSES)
    for _ in range(2):  # the timed first call, then the chosen mode
        assert torch.equal(default(x_t, t, y), forced[default.cfg_mode])


@pytest.mark.parametrize("cfg_batched", [None, True, False])
@pytest.mark.parametrize("cfg_scale, give_y", [(1.0, True), (2.5, True), (2.5, False)])
def test_rows_are_the_grid_logits_gathered(cfg_batched, cfg_scale, give_y):
    """Asking for rows gives exactly those rows of the guided grid, as a copy the caller may overwrite."""
    net = dit()
    B = 3
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randint(0, 7, (B, 12), generator=g), torch.rand(B, generator=g)
    y = torch.arange(B) if give_y else None
    denoiser = Denoiser(net, cfg_scale=cfg_scale, null_class=NUM_CLASSES, cfg_batched=cfg_batched)
    full = denoiser(x_t, t, y).clone()  # (B, 12, 7)
    for rows in (torch.tensor([0, 5, 6, 30, 35]), torch.arange(B * 12), torch.zeros(0, dtype=torch.long)):
        out = denoiser(x_t, t, y, rows=rows)
        assert torch.equal(out, full.reshape(-1, 7)[rows])
        out.fill_(math.nan)
        assert torch.equal(denoiser(x_t, t, y), full)
    if cfg_scale == 1.0 or not give_y:
        assert denoiser.cfg_mode is None
    else:
        assert denoiser.cfg_mode in ({True: "batched", False: "two-pass"}.get(cfg_batched) or CFG_MODES)


class TimedNet(torch.nn.Module):
    """Fixed lookup logits (the same bits in any batch, unless ``batch_bias``) that advance a fake
    clock by cost(batch) per forward: a network whose speed a test chooses."""

    def __init__(self, cost, batch_bias: float = 0.0) -> None:
        super().__init__()
        self.table = torch.randn(NUM_CLASSES + 1, 12, 7, generator=torch.Generator().manual_seed(0))
        self.cost, self.batch_bias, self.now, self.calls = cost, batch_bias, 0.0, 0

    def forward(self, x_t, t, y):
        self.now += self.cost(x_t.shape[0])
        self.calls += 1
        y = torch.full((x_t.shape[0],), NUM_CLASSES) if y is None else y
        return self.table[y] + x_t[..., None] + self.batch_bias * x_t.shape[0]


def timed(monkeypatch, net: TimedNet) -> None:
    monkeypatch.setattr(
        denoiser_module, "choose_batching", lambda b, t: choose_batching(b, t, clock=lambda: net.now)
    )


@pytest.mark.parametrize(
    "cost, mode",
    [(lambda b: 10 + b, "batched"), (lambda b: b * b, "two-pass")],
    ids=["per-call-overhead", "superlinear-in-batch"],
)
def test_default_cfg_mode_on_cpu_is_the_faster_timed_once(monkeypatch, cost, mode):
    """On CPU the default runs and times both modes on the first guided call of an input shape,
    keeps the faster for the process, and bills only the calls of the mode it kept."""
    net = TimedNet(cost)
    timed(monkeypatch, net)
    x_t, t, y = torch.full((3, 12), 6), torch.zeros(3), torch.arange(3)
    denoiser = Denoiser(net, cfg_scale=2.0, null_class=NUM_CLASSES)
    first = denoiser(x_t, t, y)
    per_step = 1 if mode == "batched" else 2
    assert denoiser.cfg_mode == mode and net.calls == 6  # both ran twice: 2 x (1 + 2) forwards
    assert denoiser.count.calls == per_step and denoiser.count.unbatched == 2
    assert denoiser.count.evaluations == 1
    assert torch.equal(
        first, Denoiser(net, cfg_scale=2.0, null_class=NUM_CLASSES, cfg_batched=True)(x_t, t, y)
    )
    calls = net.calls
    again = Denoiser(net, cfg_scale=2.0, null_class=NUM_CLASSES)  # the choice is the process's, per network
    again(x_t, t, y)
    assert net.calls == calls + per_step and again.cfg_mode == mode
    again(x_t[:2], t[:2], y[:2])  # another shape: timed anew
    assert net.calls == calls + per_step + 6
    denoiser(x_t, t, None)  # nothing to guide
    assert denoiser.cfg_mode is None


def test_default_keeps_the_faster_mode_even_where_its_bits_differ(monkeypatch):
    """BLAS may round the two modes differently: the faster is kept anyway, every step (the first
    included) runs it, and ``cfg_mode`` says which, for the protocol."""
    net = TimedNet(lambda b: b * b, batch_bias=1e-3)  # two-pass faster, and its logits differ
    timed(monkeypatch, net)
    x_t, t, y = torch.full((3, 12), 6), torch.zeros(3), torch.arange(3)
    denoiser = Denoiser(net, cfg_scale=2.0, null_class=NUM_CLASSES)
    first = denoiser(x_t, t, y)
    assert denoiser.cfg_mode == "two-pass"
    two_pass = Denoiser(net, cfg_scale=2.0, null_class=NUM_CLASSES, cfg_batched=False)(x_t, t, y)
    batched = Denoiser(net, cfg_scale=2.0, null_class=NUM_CLASSES, cfg_batched=True)(x_t, t, y)
    assert torch.equal(first, two_pass) and not torch.equal(first, batched)
    assert torch.equal(first, denoiser(x_t, t, y))


def test_choose_batching_keeps_two_pass_only_when_clearly_faster():
    def choose(two_pass_seconds, batched_seconds):  # each run's seconds, in the order they run
        now = [0.0]

        def runs(seconds, out):
            left = iter(seconds)

            def run():
                now[0] += next(left)
                return out

            return run

        return choose_batching(
            runs(batched_seconds, (ONE, ONE)), runs(two_pass_seconds, (TWO, TWO)), clock=lambda: now[0]
        )

    ONE, TWO = torch.ones(2), torch.full((2,), 2.0)
    batched, out = choose([2.0, 2.0], [5.0, 5.0])
    assert not batched and out[0] is TWO  # the kept mode's output is the step's
    batched, out = choose([2.0, 2.0], [2.0, 2.0])  # a tie keeps one call
    assert batched and out[0] is ONE
    assert choose([1.95, 1.95], [2.0, 2.0])[0] is True  # and so does a noise-sized gain
    assert choose([9.0, 2.0], [5.0, 5.0])[0] is False  # a cold first run does not decide
    assert choose([2.0, 2.0], [9.0, 1.5])[0] is True  # for either mode
