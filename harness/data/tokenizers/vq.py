"""A learned VQ tokenizer: a small convolutional VQ-VAE behind the ``Tokenizer`` protocol.

encoder: x (N, C, S, S) in [0, 1] -> z_e (N, D, g, g), g = S / 2^k (a 2 x 2 pixel unshuffle,
then k - 1 stride-2 convolutions and residual blocks);
quantiser: token_j = argmin_k ||z_e,j - e_k||^2 over a codebook e (K, D);
decoder: z_q (N, D, g, g) -> x_hat (N, C, S, S) = sigmoid(...).

Loss: ||x - x_hat||^2 + beta ||z_e - sg(z_q)||^2 with the straight-through gradient
z_e + sg(z_q - z_e). The codebook is not learned by gradient: with n_k the number of
vectors assigned to code k in a batch and s_k their sum, the EMA updates
N_k <- gamma N_k + (1 - gamma) n_k, S_k <- gamma S_k + (1 - gamma) s_k, e_k = S_k / N_k
(Laplace-smoothed), and a code whose N_k falls below ``dead_threshold`` is re-initialised
to an encoder output of the current batch drawn in proportion to its quantisation error.

Trained tokenizers are cached by ``harness.data.tokenizers.vq_store``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.cache import sha256_tensors

# Each size bounded by what one machine can hold (a codebook of 2**16 codes, a 4,096-wide conv);
# image_size and in_channels are the data's, set by the dataset.
_INTEGER_RANGES = {
    "image_size": (2, 1024),
    "in_channels": (1, 4),
    "grid": (1, 512),
    "codebook_size": (2, 2**16),
    "code_dim": (1, 4096),
    "channels": (1, 4096),
    "steps": (1, 10**7),
    "batch_size": (1, 2**16),
    "seed": (0, 2**32 - 1),
}
_NUMBER_RANGES = {  # (low, high, low allowed)
    "lr": (0.0, 1.0, False),
    "commitment": (0.0, 100.0, True),
    "ema_decay": (0.0, 1.0, True),
    "dead_threshold": (0.0, 1e9, True),
}


def _shown(value: Any) -> str:
    return repr(value)[:40]


@dataclass(frozen=True)
class VQConfig:
    """grid: tokens per side (image_size / grid a power of two); codebook_size K; code_dim D;
    channels: conv width; steps / batch_size / lr: Adam with cosine decay; commitment: beta;
    ema_decay: gamma; dead_threshold: EMA count below which a code is re-initialised."""

    image_size: int = 28
    in_channels: int = 1
    grid: int = 7
    codebook_size: int = 64
    code_dim: int = 32
    channels: int = 48
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    commitment: float = 0.25
    ema_decay: float = 0.99
    dead_threshold: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, (low, high) in _INTEGER_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"tokenizer.{name}: {_shown(value)}; expected an integer in [{low}, {high}]")
        for name, (low, high, closed) in _NUMBER_RANGES.items():
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not (low < value <= high or closed and value == low):
                within = f"{'[' if closed else '('}{low}, {high}]"
                raise ValueError(f"tokenizer.{name}: {_shown(value)}; expected a number in {within}")
        ratio = self.image_size / self.grid
        if ratio < 2 or ratio != int(ratio) or int(ratio) & (int(ratio) - 1):
            raise ValueError(
                f"tokenizer.grid: {self.grid}; expected image_size / grid a power of two >= 2"
                f" (image_size {self.image_size})"
            )

    @property
    def num_downsamples(self) -> int:
        return int(math.log2(self.image_size // self.grid))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VQConfig:
        """Unknown keys are an error that names them and the allowed ones."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"tokenizer: unknown keys {unknown}; allowed {sorted(allowed)}")
        return cls(**values)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class EMACodebook(nn.Module):
    """Codebook e (K, D) with EMA statistics N (K,), S (K, D) as buffers (saved, not learned)."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        K, D = config.codebook_size, config.code_dim
        self.decay, self.dead_threshold = config.ema_decay, config.dead_threshold
        self.register_buffer("embedding", torch.zeros(K, D))
        self.register_buffer("cluster_size", torch.zeros(K))
        self.register_buffer("embed_sum", torch.zeros(K, D))

    def nearest(self, z: Tensor) -> Tensor:
        """z (M, D) -> indices (M,) of the nearest codes in squared Euclidean distance."""
        e = self.embedding
        dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.T + e.pow(2).sum(1)  # (M, K)
        return dist.argmin(dim=1)

    @torch.no_grad()
    def reset(
        self, codes: Tensor, z: Tensor, generator: torch.Generator, weights: Tensor | None = None
    ) -> None:
        """Set codes (n,) to rows of z (M, D) drawn with probability proportional to weights (M,)
        (uniform if None), with count ``dead_threshold``."""
        weights = torch.ones(z.shape[0]) if weights is None else weights + 1e-12
        pick = torch.multinomial(weights, codes.numel(), replacement=True, generator=generator)
        self.embedding[codes] = z[pick]
        self.cluster_size[codes] = self.dead_threshold
        self.embed_sum[codes] = z[pick] * self.dead_threshold

    @torch.no_grad()
    def update(self, z: Tensor, idx: Tensor, generator: torch.Generator) -> None:
        """One EMA step from z (M, D) assigned to idx (M,), then re-initialise dead codes.

        A dead code moves to an encoder output drawn with probability proportional to its squared
        quantisation error ||z - e_idx||^2 (k-means++ style): uniform draws land mostly on the
        blank background and split it into near-identical codes.
        """
        K = self.embedding.shape[0]
        error = (z - self.embedding[idx]).pow(2).sum(1)  # (M,), before this step's update
        onehot = F.one_hot(idx, K).type_as(z)  # (M, K)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.T @ z, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + K * 1e-5) * n  # Laplace smoothing, (K,)
        self.embedding.copy_(self.embed_sum / smoothed[:, None])
        dead = (self.cluster_size < self.dead_threshold).nonzero().flatten()
        if dead.numel():
            self.reset(dead, z, generator, weights=error)


class VQVAE(nn.Module):
    """The encoder, codebook and decoder of one VQConfig (see the module docstring).

    Full resolution costs most on CPU, so the encoder first folds 2 x 2 pixel blocks into
    channels (pixel_unshuffle: (C, S, S) -> (4C, S/2, S/2)) and the decoder ends by unfolding
    them (pixel_shuffle); the k - 1 remaining halvings are stride-2 convolutions.
    """

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        C, D, C_in = config.channels, config.code_dim, config.in_channels
        down: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(4 * C_in, C, 3, padding=1)]
        for _ in range(config.num_downsamples - 1):
            down += [nn.ReLU(), nn.Conv2d(C, C, 4, stride=2, padding=1)]
        self.encoder = nn.Sequential(*down, ResBlock(C), ResBlock(C), nn.ReLU(), nn.Conv2d(C, D, 1))
        up: list[nn.Module] = [nn.Conv2d(D, C, 3, padding=1), ResBlock(C), ResBlock(C)]
        for _ in range(config.num_downsamples - 1):
            up += [nn.ReLU(), nn.ConvTranspose2d(C, C, 4, stride=2, padding=1)]
        up += [nn.ReLU(), nn.Conv2d(C, 4 * C_in, 3, padding=1), nn.PixelShuffle(2)]
        self.decoder = nn.Sequential(*up)
        self.codebook = EMACodebook(config)

    def encode_latent(self, x: Tensor) -> Tensor:
        """x (N, C, S, S) -> z_e (N, g, g, D), channels last."""
        return self.encoder(x).permute(0, 2, 3, 1)

    def quantise(self, z_e: Tensor) -> Tensor:
        """z_e (N, g, g, D) -> tokens (N, g, g) long."""
        return self.codebook.nearest(z_e.reshape(-1, z_e.shape[-1])).reshape(z_e.shape[:-1])

    def decode_tokens(self, tokens: Tensor) -> Tensor:
        """tokens (N, g, g) -> x_hat (N, C, S, S) in [0, 1]."""
        return self.decode_latent(self.codebook.embedding[tokens])

    def decode_latent(self, z_q: Tensor) -> Tensor:
        """z_q (N, g, g, D) -> x_hat (N, C, S, S) in [0, 1]."""
        return torch.sigmoid(self.decoder(z_q.permute(0, 3, 1, 2)))


@contextlib.contextmanager
def training_threads(num_threads: int | None) -> Iterator[int]:
    """Use ``num_threads`` while training and restore the caller's count after. None keeps a
    count the caller set to 1 or 2 and caps a larger one (torch's default: all cores) at 2.

    Float reductions depend on the thread count, so the weights are reproducible at a fixed one
    (the count used is recorded in the cached metadata; it is not part of the cache key, so
    workers running at another count reuse the cached tokenizer instead of retraining it).
    """
    previous = torch.get_num_threads()
    threads = num_threads if num_threads is not None else min(previous, 2)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def train_vqvae(images: Tensor, config: VQConfig) -> VQVAE:
    """Fit a VQVAE to images (N, C, S, S) in [0, 1]; deterministic given config.seed and the
    torch thread count.

    Init from torch.manual_seed(seed) in a forked RNG; batch order and dead-code resets from a
    torch.Generator seeded alike; the codebook starts as random encoder outputs of batch one.
    """
    if tuple(images.shape[1:]) != (config.in_channels, config.image_size, config.image_size):
        raise ValueError(f"train_vqvae: images {tuple(images.shape)} do not match {config}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = VQVAE(config).train()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * step / config.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    order, cursor = torch.randperm(images.shape[0], generator=generator), 0
    for step in range(config.steps):
        if cursor + config.batch_size > order.numel():
            order, cursor = torch.randperm(images.shape[0], generator=generator), 0
        x = images[order[cursor : cursor + config.batch_size]].float()  # (B, C, S, S)
        cursor += config.batch_size
        z_e = model.encode_latent(x)  # (B, g, g, D)
        flat = z_e.detach().reshape(-1, config.code_dim)  # (B g g, D)
        if step == 0:
            model.codebook.reset(torch.arange(config.codebook_size), flat, generator)
        tokens = model.codebook.nearest(flat)  # (B g g,)
        z_q = model.codebook.embedding[tokens].reshape(z_e.shape)  # a copy: the update below keeps it
        model.codebook.update(flat, tokens, generator)
        x_hat = model.decode_latent(z_e + (z_q - z_e).detach())  # straight-through
        loss = F.mse_loss(x_hat, x) + config.commitment * F.mse_loss(z_e, z_q)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


class VQTokenizer:
    """The Tokenizer protocol over a trained VQVAE: images (N, C, S, S) in [0, 1] <-> tokens (N, g*g)."""

    def __init__(self, model: VQVAE, metadata: dict[str, Any], batch_size: int = 512) -> None:
        self.model = model.eval()
        self.config = model.config
        self.vocab_size = model.config.codebook_size
        self.grid = (model.config.grid, model.config.grid)
        self.weights_sha256 = sha256_tensors(model.state_dict())
        self.metadata = dict(metadata)
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images (N, C, S, S) float in [0, 1] -> tokens (N, L) long, L = g * g, row-major."""
        out = [
            self.model.quantise(self.model.encode_latent(images[i : i + self.batch_size].float()))
            for i in range(0, images.shape[0], self.batch_size)
        ]  # each (b, g, g)
        return (
            torch.cat(out).reshape(images.shape[0], -1)
            if out
            else torch.zeros(0, math.prod(self.grid)).long()
        )

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """tokens (N, L) -> images (N, C, S, S) in [0, 1]; a stray [MASK] id is clamped into [0, K)."""
        tokens = tokens.long().clamp(0, self.vocab_size - 1).reshape(-1, *self.grid)  # (N, g, g)
        c, s = self.config.in_channels, self.config.image_size
        out = [
            self.model.decode_tokens(tokens[i : i + self.batch_size])
            for i in range(0, len(tokens), self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, c, s, s)
