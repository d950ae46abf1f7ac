"""Feature extractors behind one interface, a registry of them, and batched extraction.

An extractor maps samples in [0, 1] -- images (N, C, H, W) or videos (N, C, T, H, W) -- to
features (N, D) for FID/KID/precision/recall/FVD and, when it is a classifier, logits (N, K)
for the Inception Score. It names itself, the sha256 of its weights and the rule that brings
samples to its input size, and all three go into every metric's protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from harness.data.registry import get_dataset
from harness.errors import UserError, check_known
from models.registry import Registry

IMAGE, VIDEO = "image", "video"


class WeightsNotFoundError(UserError, FileNotFoundError):
    """A weights file the user must supply is missing; the message says what and where from."""


@dataclass(frozen=True)
class Features:
    """features (N, D) float32 and, for classifiers, logits (N, K) float32; labels (N,): the
    class each generated sample was conditioned on, when known (scored by caption agreement)."""

    features: Tensor
    logits: Tensor | None = None
    labels: Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    def select(self, index: Tensor) -> Features:
        """Rows ``index`` of every tensor (used by the bootstrap)."""
        logits = None if self.logits is None else self.logits[index]
        labels = None if self.labels is None else self.labels[index]
        return Features(self.features[index], logits, labels)


class FeatureExtractor(nn.Module):
    """Base class. Subclasses set the attributes below and implement ``forward``.

    forward(x: (B, C, H, W) or (B, C, T, H, W) float in [0, 1]) -> (features (B, D), logits (B, K) | None)
    """

    name: str
    weights_sha256: str
    resize_rule: str
    input_kind: str = IMAGE
    feature_dim: int
    num_logits: int | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


EXTRACTORS: Registry[FeatureExtractor] = Registry("feature extractor")
# name -> IMAGE or VIDEO: what an extractor takes, known without building it (validation).
INPUT_KINDS: dict[str, str] = {}


# name -> () -> the weights file it would load when none is named (WeightsNotFoundError if it is
# not there), for the extractors that read a file the user supplies: checked before a study runs.
WEIGHTS: dict[str, Callable[[], Path]] = {}


def register_extractor(name: str, input_kind: str, weights: Callable[[], Path] | None = None):
    """EXTRACTORS.register(name), recording the extractor's input kind and, for one that loads a
    file the user supplies, how that file is found."""
    INPUT_KINDS[name] = input_kind
    if weights is not None:
        WEIGHTS[name] = weights
    return EXTRACTORS.register(name)


def missing_weights(name: str) -> str | None:
    """Why extractor ``name`` could not find its weights file here, or None (found, or none needed)."""
    find = WEIGHTS.get(name)
    if find is None:
        return None
    try:
        find()
    except WeightsNotFoundError as err:
        return str(err)
    return None


def default_extractor_name(dataset: str, override: str | None = None) -> str:
    """``override`` if given, else the dataset's default (``harness.data.types.Dataset``); a
    dataset without one is an error."""
    if override is not None:
        check_known(override, EXTRACTORS, "extractor")  # fail early, listing the known names
        return override
    default = get_dataset(dataset).default_extractor
    if default is None:
        raise UserError(
            f"eval.extractor: dataset {dataset!r} has no default feature extractor; name one of "
            f"{EXTRACTORS.names()}"
        )
    return default


def build_extractor(
    name: str, *, weights_path: str | Path | None = None, cache_dir: str | Path | None = None
) -> FeatureExtractor:
    """Construct extractor ``name``. weights_path: a user-supplied weights file (required by
    ``inception-v3-compat`` and ``i3d``, optional for ``inception``); cache_dir: where trained
    domain extractors are cached. Every constructor takes both keywords and ignores what it does
    not use."""
    return EXTRACTORS[name](weights_path=weights_path, cache_dir=cache_dir)


def check_finite(x: Tensor, what: str) -> None:
    """ValueError naming how many entries of ``x`` are NaN or infinite (a broken model's samples,
    features or logits are refused, never scored)."""
    bad = int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
    if bad:
        raise ValueError(f"{what}: {bad} of {x.numel()} values are NaN or infinite; refusing to score them")


def check_input(extractor: FeatureExtractor, x: Tensor) -> None:
    """Images must be 4-D and videos 5-D, both float in [0, 1] (and finite)."""
    ndim = 4 if extractor.input_kind == IMAGE else 5
    if x.ndim != ndim:
        raise ValueError(
            f"{extractor.name} takes {extractor.input_kind}s with {ndim} dims; got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{extractor.name} takes float samples in [0, 1]; got {x.dtype}")
    check_finite(x, f"{extractor.input_kind} samples")


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, x: Tensor, batch_size: int = 64) -> Features:
    """Run ``extractor`` over x (N, ...) in batches; exactly N rows come back, in order.

    The extractor is in eval mode, so each row depends on its own sample only and the result
    does not depend on batch_size (up to float rounding in batched kernels).
    """
    check_input(extractor, x)
    extractor.eval()
    feats, logits = [], []
    for start in range(0, x.shape[0], batch_size):
        f, lg = extractor(x[start : start + batch_size].float())  # (b, D), (b, K) | None
        feats.append(f.float().cpu())
        if lg is not None:
            logits.append(lg.float().cpu())
    if not feats:
        raise ValueError("extract_features got an empty batch (N = 0)")
    out = Features(torch.cat(feats), torch.cat(logits) if logits else None)
    check_finite(out.features, f"{extractor.name} features")
    if out.logits is not None:
        check_finite(out.logits, f"{extractor.name} logits")
    return out


def to_three_channels(x: Tensor) -> Tensor:
    """(B, 1, ...) grayscale repeated to (B, 3, ...); 3 channels pass through."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, *x.shape[2:])
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels; got {x.shape[1]}")
    return x
