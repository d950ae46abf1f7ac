"""A small CNN classifier trained by this project on a dataset's training split.

Its penultimate activations (feature_dim, after ReLU) are the domain features for FID, KID and
precision/recall; its class probabilities softmax(logits) give the Inception Score. The same
class handles images (spatial_dims=2, x (B, C, H, W)) and videos (spatial_dims=3,
x (B, C, T, H, W)). Training is deterministic given the seed: the initial weights come from a
forked, seeded RNG, batches from a seeded torch.Generator, and the thread count is fixed while
training (float reductions depend on it) and restored after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DomainCNNConfig:
    """in_channels, num_classes, input_size ((H, W) or (T, H, W)); width: channels of the first
    conv; feature_dim: size of the penultimate features; pooled_size: adaptive-pool side length."""

    in_channels: int
    num_classes: int
    input_size: tuple[int, ...]
    width: int = 16
    feature_dim: int = 64
    pooled_size: int = 4

    @property
    def spatial_dims(self) -> int:
        return len(self.input_size)


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """AdamW on cross-entropy; threads is the torch thread count used while training."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1


class DomainCNN(nn.Module):
    """conv-relu, maxpool/2, conv-relu, conv-relu, avg pool, linear-relu = features, linear = logits."""

    def __init__(self, config: DomainCNNConfig) -> None:
        super().__init__()
        self.config = config
        conv = nn.Conv2d if config.spatial_dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if config.spatial_dims == 2 else nn.MaxPool3d
        adaptive = nn.AdaptiveAvgPool2d if config.spatial_dims == 2 else nn.AdaptiveAvgPool3d
        w = config.width
        self.body = nn.Sequential(
            conv(config.in_channels, w, 3, padding=1),
            nn.ReLU(),
            pool(2),
            conv(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            conv(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            adaptive(config.pooled_size),
            nn.Flatten(),
        )
        flat = 2 * w * config.pooled_size**config.spatial_dims
        self.features = nn.Sequential(nn.Linear(flat, config.feature_dim), nn.ReLU())
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, *input_size) -> (features (B, feature_dim), logits (B, num_classes))."""
        h = self.features(self.body(x))  # (B, feature_dim)
        return h, self.head(h)


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed a forked global RNG and fix the thread count; both are restored on exit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(previous)


def train_domain_classifier(
    x: Tensor, labels: Tensor, config: DomainCNNConfig, train: ClassifierTrainConfig = ClassifierTrainConfig()
) -> DomainCNN:
    """Fit a DomainCNN to (x (N, C, *input_size) in [0, 1], labels (N,) long); returns it in eval mode."""
    if tuple(x.shape[2:]) != tuple(config.input_size) or x.shape[1] != config.in_channels:
        raise ValueError(f"training data {tuple(x.shape)} does not match {config}")
    with deterministic(train.seed, train.threads):
        model = DomainCNN(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        generator = torch.Generator().manual_seed(train.seed)
        model.train()
        for _ in range(train.epochs):
            order = torch.randperm(x.shape[0], generator=generator)
            for start in range(0, x.shape[0], train.batch_size):
                idx = order[start : start + train.batch_size]
                _, logits = model(x[idx].float())  # (b, num_classes)
                loss = F.cross_entropy(logits, labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: DomainCNN, x: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Fraction of argmax predictions equal to labels (N,)."""
    model.eval()
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        _, logits = model(x[start : start + batch_size].float())
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / x.shape[0]
