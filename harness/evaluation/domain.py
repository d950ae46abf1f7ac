"""Domain feature extractors: a DomainCNN per dataset, trained on first use and cached on disk.

A ``DomainSpec`` names the extractor, its dataset, how to load a labelled split, the network
and the training recipe. The trained weights are cached under
``<cache>/extractors/<name>-<key>.pt``, where key hashes the spec and the training data, and
are identified in every protocol by the sha256 of the weights. The held-out accuracy is
measured once, stored beside the weights and exposed as ``extractor.heldout_accuracy``.
Adding a dataset's extractor is one ``register_domain_extractor(DomainSpec(...))`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from harness.cache import cache_dir as resolve_cache_dir
from harness.cache import load_cached, load_torch, save_torch, sha256_tensors, stable_hash
from harness.data.registry import load_dataset
from harness.evaluation.domain_cnn import (
    ClassifierTrainConfig,
    DomainCNN,
    DomainCNNConfig,
    classifier_accuracy,
    train_domain_classifier,
)
from harness.evaluation.extractors import (
    IMAGE,
    VIDEO,
    FeatureExtractor,
    WeightsNotFoundError,
    register_extractor,
)

CACHE_FORMAT = 1
# split -> (x (N, C, *input_size) in [0, 1], labels (N,) long)
SplitLoader = Callable[[str], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class DomainSpec:
    """extractor: registry name; dataset: the dataset it is the default for; load_split: split ->
    labelled data; model / train: the network and its training recipe."""

    extractor: str
    dataset: str
    load_split: SplitLoader
    model: DomainCNNConfig
    train: ClassifierTrainConfig = ClassifierTrainConfig()


class DomainExtractor(FeatureExtractor):
    """A trained DomainCNN as a feature extractor: x in [0, 1] -> (features, logits).

    Samples at the training resolution pass unchanged; other sizes are resized (bilinear for
    images, trilinear for videos, align_corners=False) to it -- recorded in resize_rule.
    """

    def __init__(self, spec: DomainSpec, model: DomainCNN, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.model = model.eval()
        self.name = spec.extractor
        self.input_kind = IMAGE if spec.model.spatial_dims == 2 else VIDEO
        self.feature_dim = spec.model.feature_dim
        self.num_logits = spec.model.num_classes
        self.input_size = tuple(spec.model.input_size)
        self.weights_sha256 = sha256_tensors(model.state_dict())
        size = "x".join(map(str, self.input_size))
        mode = "bilinear" if self.input_kind == IMAGE else "trilinear"
        self.resize_rule = f"native {size} float; other sizes {mode} to {size}"
        self.metadata = dict(metadata)
        self.heldout_accuracy = float(metadata["heldout_accuracy"])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[2:]) != self.input_size:
            mode = "bilinear" if self.input_kind == IMAGE else "trilinear"
            x = F.interpolate(x, size=self.input_size, mode=mode, align_corners=False)
        return self.model(x)  # (B, feature_dim), (B, num_classes)


def cache_path(spec: DomainSpec, x_train: Tensor, y_train: Tensor, cache_dir: str | Path | None) -> Path:
    """Where the weights trained from this spec and this training data are cached."""
    key = stable_hash(
        {
            "format": CACHE_FORMAT,
            "spec": {"extractor": spec.extractor, "dataset": spec.dataset},
            "model": asdict(spec.model),
            "train": asdict(spec.train),
            "data": sha256_tensors({"x": x_train.float(), "labels": y_train.long()}),
        }
    )
    return resolve_cache_dir(cache_dir) / "extractors" / f"{spec.extractor}-{key}.pt"


def train_and_save(spec: DomainSpec, x_train: Tensor, y_train: Tensor, path: Path) -> dict[str, Any]:
    """Train on the training split, measure held-out accuracy, write the checkpoint atomically."""
    model = train_domain_classifier(x_train, y_train, spec.model, spec.train)
    x_heldout, y_heldout = spec.load_split("heldout")
    metadata = {
        "extractor": spec.extractor,
        "dataset": spec.dataset,
        "heldout_accuracy": classifier_accuracy(model, x_heldout, y_heldout),
        "num_train": int(x_train.shape[0]),
        "num_heldout": int(x_heldout.shape[0]),
        "weights_sha256": sha256_tensors(model.state_dict()),
    }
    config = {**asdict(spec.model), "input_size": list(spec.model.input_size)}
    checkpoint = {
        "format": CACHE_FORMAT,
        "config": config,
        "state_dict": model.state_dict(),
        "meta": metadata,
    }
    save_torch(checkpoint, path)
    return checkpoint


def domain_extractor(
    spec: DomainSpec, cache_dir: str | Path | None = None, weights_path: str | Path | None = None
) -> DomainExtractor:
    """The spec's extractor from weights_path if given, else from the cache, else trained now and
    cached (a damaged cache file is quarantined and trained again)."""
    if weights_path is not None:
        if not Path(weights_path).is_file():
            raise WeightsNotFoundError(f"{spec.extractor}: no checkpoint at {weights_path}")
        checkpoint = load_torch(Path(weights_path))
    else:
        x_train, y_train = spec.load_split("train")
        path = cache_path(spec, x_train, y_train, cache_dir)
        required = ("config", "state_dict", "meta")
        checkpoint = load_cached(path, resolve_cache_dir(cache_dir), required=required)
        if checkpoint is None:
            checkpoint = train_and_save(spec, x_train, y_train, path)
    config = DomainCNNConfig(
        **{**checkpoint["config"], "input_size": tuple(checkpoint["config"]["input_size"])}
    )
    if config != spec.model:
        raise ValueError(f"{spec.extractor}: checkpoint config {config} differs from the spec's {spec.model}")
    model = DomainCNN(config)
    model.load_state_dict(checkpoint["state_dict"])
    return DomainExtractor(spec, model, checkpoint["meta"])


def register_domain_extractor(spec: DomainSpec) -> DomainSpec:
    """Register ``spec.extractor``; it is built (and trained, on a cache miss) when first requested."""

    def build(
        *, weights_path: str | Path | None = None, cache_dir: str | Path | None = None
    ) -> DomainExtractor:
        return domain_extractor(spec, cache_dir=cache_dir, weights_path=weights_path)

    build.__doc__ = f"Domain CNN for {spec.dataset!r}, trained on its training split and cached."
    register_extractor(spec.extractor, VIDEO if len(spec.model.input_size) == 3 else IMAGE)(build)
    return spec


def _digits_split(split: str) -> tuple[Tensor, Tensor]:
    data = load_dataset("digits", split)
    return data.images(), data.labels  # (N, 1, 8, 8) in [0, 1], (N,)


DIGITS_CNN = register_domain_extractor(
    DomainSpec(
        extractor="digits-cnn",
        dataset="digits",
        load_split=_digits_split,
        model=DomainCNNConfig(in_channels=1, num_classes=10, input_size=(8, 8)),
    )
)
