"""Stand-ins shared by the sampler tests: tiny deterministic networks that count their own calls
(so NFE is checked against an independent count), a runner, and seeded partial inputs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from models.backbone import DiscreteDiT, ModelConfig
from models.samplers import Denoiser
from models.samplers.denoiser import StepLogits

K = 6  # data codes 0..K-1
MASK = K  # [MASK] id
V = K + 1
NUM_CLASSES = 3  # class ids 0..2, null class 3
B, L = 4, 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Hundreds of tiny sampling loops: thread start-up dominates them (badly on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- stand-in networks ------------------------------------------------------------------------------


class CountingNet(nn.Module):
    """net(x_t, t, y) -> logits (B, L, V); records every call independently of the Denoiser."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.ts: list[Tensor] = []

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        self.calls += 1
        self.ts.append(t.detach().clone())
        return self.logits(x_t, t, y)

    def logits(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        raise NotImplementedError


class OracleNet(CountingNet):
    """Always predicts token 2 (all the mass on class 2)."""

    def logits(self, x_t, t, y):
        out = torch.zeros(*x_t.shape, V)
        out[..., 2] = 50.0
        return out


class ConstantNet(CountingNet):
    """The same logits (V,) at every position."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("row", torch.tensor(logits))

    def logits(self, x_t, t, y):
        return self.row.expand(*x_t.shape, V).clone()


class RandomNet(CountingNet):
    """Fixed random logits that depend on position, input token and class: a deterministic function."""

    def __init__(self, seq_len: int = L, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("by_position", torch.randn(seq_len, V, generator=g))
        self.register_buffer("by_token", 0.5 * torch.randn(V, V, generator=g))
        self.register_buffer("by_class", torch.randn(NUM_CLASSES + 1, V, generator=g))

    def logits(self, x_t, t, y):
        if y is None:
            y = torch.full((x_t.shape[0],), NUM_CLASSES)
        return self.by_position[None] + self.by_token[x_t] + self.by_class[y][:, None]


class RowSpy(Denoiser):
    """A Denoiser that records, per network evaluation, every row (flat position) whose logits
    the sampler asked for: ``asked[k]`` (N,) ascending, or None when it took the whole grid."""

    def __init__(self, net: nn.Module, **kw) -> None:
        super().__init__(net, **kw)
        self.chunks: list[list[Tensor | None]] = []

    @property
    def asked(self) -> list[Tensor | None]:
        out: list[Tensor | None] = []
        for chunks in self.chunks:
            if any(c is None for c in chunks):
                out.append(None)
            else:
                out.append(torch.cat(chunks).sort().values if chunks else torch.zeros(0, dtype=torch.long))
        return out

    def evaluate(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> StepLogits:
        step = super().evaluate(x_t, t, y)
        chunks: list[Tensor | None] = []
        self.chunks.append(chunks)

        class Recorded(StepLogits):
            def rows(self, rows: Tensor) -> Tensor:
                chunks.append(rows)
                return super().rows(rows)

            def full(self) -> Tensor:
                chunks.append(None)
                return super().full()

        return Recorded(step.cond, step.uncond, step.cfg_scale)


def flat(select: Tensor) -> Tensor:
    """(B, L) bool -> its flat positions, ascending."""
    return select.reshape(-1).nonzero().squeeze(1)


def perturbed_dit(config: ModelConfig, seed: int = 0) -> DiscreteDiT:
    """A DiscreteDiT whose logits depend on its inputs: the zero-initialised head and adaLN of a
    fresh one would give constant outputs, so every parameter gets seeded noise."""
    torch.manual_seed(seed)
    net = DiscreteDiT(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


def uniform_net() -> ConstantNet:
    return ConstantNet([0.0] * V)


def run(sampler, net, *, seed=0, batch_size=B, seq_len=L, denoiser=None, **kw):
    denoiser = denoiser or Denoiser(net)
    return sampler.sample(
        denoiser,
        batch_size=batch_size,
        seq_len=seq_len,
        mask_id=MASK,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def newly_unmasked(before: Tensor, after: Tensor) -> Tensor:
    return (before == MASK) & (after != MASK)


def partly_given(seed: int = 0, num_masked: int = 12) -> Tensor:
    """x_init (B, L): random codes with exactly ``num_masked`` [MASK] per row, at random positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, K, (B, L), generator=g)
    for b in range(B):
        x[b, torch.randperm(L, generator=g)[:num_masked]] = MASK
    return x
