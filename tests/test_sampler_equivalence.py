"""The samplers read only the logits of the positions they update, and still draw, bit for bit, the
tokens of the implementation that processed the whole (B, L, V) grid every step (frozen in
sampler_reference.py: the published sampled tokens came from it).

Same seed, network and settings -> the same tokens and the same generator state after (the harness
draws every batch of a run from one generator), for every option: temperature, top-k / top-p,
[MASK] exclusion, argmax fill, the reference grid, the corrector, schedules and randomisations,
ETM time, CFG (in every mode) or none, class-conditional or not, given tokens, one [MASK] per
modality.
"""

from __future__ import annotations

import pytest
import torch
from sampler_reference import reference_sample
from sampler_stubs import one_thread, perturbed_dit  # noqa: F401  (one_thread: an autouse fixture)
from torch import Tensor, nn

from models.backbone import ModelConfig
from models.samplers import Denoiser, EulerSampler, MaskGITSampler
from models.schedulers import Cosine, Polynomial

C = 3  # classes 0..2, null class 3


class TableNet(nn.Module):
    """Fixed random logits from position, input token, class and time; [MASK] (the last id) gets
    real mass, so exclusion matters and, without it, [MASK] is sometimes drawn."""

    def __init__(self, seq_len: int, num_ids: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.by_position = torch.randn(seq_len, num_ids, generator=g)
        self.by_token = 0.7 * torch.randn(num_ids, num_ids, generator=g)
        self.by_class = torch.randn(C + 1, num_ids, generator=g)
        self.by_time = 2 * torch.randn(num_ids, generator=g)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            y = torch.full((x_t.shape[0],), C)
        return (
            self.by_position[None]
            + self.by_token[x_t]
            + self.by_class[y][:, None]
            + t[:, None, None] * self.by_time
        )


EULER = {
    "euler": EulerSampler(num_steps=4),
    "euler-T0.7": EulerSampler(num_steps=5, temperature=0.7),
    "euler-T1.3-top-k": EulerSampler(num_steps=3, temperature=1.3, top_k=5),
    "euler-top-p": EulerSampler(num_steps=6, top_p=0.8),
    "euler-argmax": EulerSampler(num_steps=2, argmax_fill=True),
    "euler-reference-grid": EulerSampler(num_steps=4, reference_grid=True),
    "euler-reference-grid-argmax": EulerSampler(
        num_steps=4, reference_grid=True, argmax_fill=True, temperature=0.9
    ),
    "euler-remask": EulerSampler(num_steps=5, remask_scale=4.0),
    "euler-remask-reference-argmax": EulerSampler(
        num_steps=5, remask_scale=4.0, reference_grid=True, argmax_fill=True
    ),
    "euler-no-exclusion": EulerSampler(num_steps=4, exclude_mask=False),
    "euler-no-exclusion-reference-argmax": EulerSampler(
        num_steps=3, exclude_mask=False, reference_grid=True, argmax_fill=True
    ),
    "euler-cosine-8": EulerSampler(num_steps=8, scheduler=Cosine()),
    "euler-square-1": EulerSampler(num_steps=1, scheduler=Polynomial(n=2.0)),
}
MASKGIT = {
    "maskgit": MaskGITSampler(num_steps=4),
    "maskgit-linear-none": MaskGITSampler(num_steps=5, schedule="linear", randomization="none"),
    "maskgit-root-warmup-T1.3": MaskGITSampler(
        num_steps=6, schedule="root", randomization="warmup", temperature=1.3
    ),
    "maskgit-arccos-random": MaskGITSampler(num_steps=4, schedule="arccos", randomization="random"),
    "maskgit-square-top-k-T0.8": MaskGITSampler(num_steps=3, schedule="square", top_k=4, temperature=0.8),
    "maskgit-top-p": MaskGITSampler(num_steps=4, top_p=0.7),
    "maskgit-etm": MaskGITSampler(num_steps=5, scheduler=Cosine()),
    "maskgit-no-exclusion": MaskGITSampler(num_steps=4, exclude_mask=False),
    "maskgit-1": MaskGITSampler(num_steps=1),
    "maskgit-12": MaskGITSampler(num_steps=12, gumbel_scale=2.0),
    "maskgit-reference-counts": MaskGITSampler(num_steps=7, schedule="linear", counts="reference"),
    "maskgit-maskgit-counts-random": MaskGITSampler(num_steps=6, counts="maskgit", randomization="random"),
}
ALL = {**EULER, **MASKGIT}
CONDITIONS = {  # y, cfg_scale
    "unconditional": (None, 1.0),
    "class": (torch.tensor([0, 1, 2, 0, 2, 1]), 1.0),
    "cfg": (torch.tensor([2, 0, 1, 1, 0, 2]), 2.5),
    "cfg-no-condition": (None, 3.0),  # nothing to guide
}
MODES = (None, True, False)  # cfg_batched: the default rule, one batch of 2B, two forwards


def assert_same_draws(sampler, net, *, cfg_scale, cfg_batched, batch_size, seq_len, mask_id, **kw) -> Tensor:
    """Two batches from one generator, new vs frozen: the same tokens and generator state."""
    new_g, old_g = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    denoiser = Denoiser(net, cfg_scale=cfg_scale, null_class=C, cfg_batched=cfg_batched)
    for _ in range(2):
        new = sampler.sample(
            denoiser, batch_size=batch_size, seq_len=seq_len, mask_id=mask_id, generator=new_g, **kw
        ).tokens
        # The default runs the mode it timed faster (its bits may differ from the other's): the
        # reference runs that one too.
        ref_batched = cfg_batched if cfg_batched is not None else denoiser.cfg_mode != "two-pass"
        old = reference_sample(
            sampler,
            net,
            cfg_scale=cfg_scale,
            cfg_batched=ref_batched,
            null_class=C,
            batch_size=batch_size,
            seq_len=seq_len,
            mask_id=mask_id,
            generator=old_g,
            **kw,
        )
        assert torch.equal(new, old)
        assert torch.equal(new_g.get_state(), old_g.get_state())
    return new


@pytest.mark.parametrize("condition", sorted(CONDITIONS))
@pytest.mark.parametrize("name", sorted(ALL))
def test_tokens_match_the_full_grid_implementation(name, condition):
    V, L, B = 37, 24, 6
    y, cfg_scale = CONDITIONS[condition]
    net = TableNet(L, V)
    for cfg_batched in MODES if cfg_scale != 1.0 else (None,):
        assert_same_draws(
            ALL[name],
            net,
            cfg_scale=cfg_scale,
            cfg_batched=cfg_batched,
            batch_size=B,
            seq_len=L,
            mask_id=V - 1,
            y=y,
        )


@pytest.mark.parametrize("name", sorted(ALL))
def test_tokens_match_with_given_tokens_and_one_mask_per_modality(name):
    """Two modalities with their own [MASK] ids (L,), a third of each row given."""
    V, L, B = 29, 18, 5
    mask_id = torch.tensor([V - 1] * 10 + [V - 2] * 8)  # (L,)
    g = torch.Generator().manual_seed(5)
    x_init = torch.randint(0, V - 2, (B, L), generator=g)
    for b in range(B):  # the same number of masked positions per row (MaskGIT needs it)
        masked = torch.randperm(L, generator=g)[:12]
        x_init[b, masked] = mask_id[masked]
    net = TableNet(L, V, seed=1)
    y = torch.tensor([0, 1, 2, 1, 0])
    for cfg_scale, cfg_batched in ((1.0, None), (2.0, None), (2.0, True)):
        tokens = assert_same_draws(
            ALL[name],
            net,
            cfg_scale=cfg_scale,
            cfg_batched=cfg_batched,
            batch_size=B,
            seq_len=L,
            mask_id=mask_id,
            y=y,
            x_init=x_init,
        )
        given = x_init != mask_id
        assert torch.equal(tokens[given], x_init[given])


@pytest.mark.parametrize(
    "sampler",
    [EulerSampler(num_steps=3), EulerSampler(num_steps=3, temperature=0.8), MaskGITSampler(num_steps=3)],
    ids=["euler", "euler-T0.8", "maskgit"],
)
def test_tokens_match_at_a_realistic_vocabulary(sampler):
    """1,024 codes + [MASK]: rows long enough for every vectorised kernel path."""
    V, L, B = 1025, 32, 4
    net = TableNet(L, V, seed=2)
    for cfg_scale in (1.0, 2.0):
        assert_same_draws(
            sampler,
            net,
            cfg_scale=cfg_scale,
            cfg_batched=None,
            batch_size=B,
            seq_len=L,
            mask_id=V - 1,
            y=torch.arange(B) % C,
        )


@pytest.mark.parametrize(
    "sampler", [EulerSampler(num_steps=4), MaskGITSampler(num_steps=4, temperature=1.2)], ids=repr
)
def test_a_transformer_draws_the_same_tokens_by_default(sampler):
    """A real network: each CFG mode (the default's choice, forced batched, forced two-pass) draws
    the very tokens the whole-grid implementation draws in that mode (for small batches BLAS may
    round one forward of 2B and two of B differently, so the modes may differ from each other)."""
    net, B = (
        perturbed_dit(ModelConfig(vocab_size=40, grid=(4, 4), num_classes=C, depth=1, width=32, heads=2)),
        6,
    )
    y = torch.arange(B) % C
    for cfg_batched in (None, True, False):
        assert_same_draws(
            sampler, net, cfg_scale=2.0, cfg_batched=cfg_batched, batch_size=B, seq_len=16, mask_id=40, y=y
        )
