"""Checkpoints that carry their full config: loading one needs nothing else.

Writes are atomic (temporary file + rename); loads use ``weights_only=True``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from models.backbone import DiscreteDiT, ModelConfig

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_config", "train_config", "model", "step")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or incomplete; the message names the file."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Reads and checks a checkpoint written by ``atomic_save`` of the trainer's state."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a torch file: {err}") from err
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks {missing}; expected keys {list(REQUIRED_KEYS)}"
        )
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format_version {state['format_version']}, "
            f"expected {FORMAT_VERSION}"
        )
    return state


def model_from_checkpoint(
    path: str | Path, *, use_ema: bool = True, map_location: str | torch.device = "cpu"
) -> tuple[DiscreteDiT, dict]:
    """Rebuilds the network from the checkpoint alone; returns (model in eval mode, state)."""
    state = load_checkpoint(path, map_location)
    model = DiscreteDiT(ModelConfig.from_dict(state["model_config"]))
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    return model.eval().to(map_location), state
