"""The building blocks of the bad-input corpus (tests/reliability/corpus.py): the Case a command
line and its files make, the helpers that write a study file over search_spaces/small.yaml or build
a ``validate`` case on one, and the writers of files that are not what they claim (truncated or
disguised archives, pickles that run code, grey PNG folders, YAML too deep or too big to expand).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
SMALL = "@REPO@/search_spaces/small.yaml"
STUDY = "@TMP@/study.yaml"
RUNS = ("--runs-root", "@TMP@/runs")

Content = str | bytes | Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]  # substrings stderr must contain: the field, value or path at fault
    files: Mapping[str, Content] = field(default_factory=dict)  # path under @TMP@ -> its content
    subprocess: bool = False  # the real CLI under a time and memory limit (hangs, blow-ups)
    time_limit: float = 60.0  # seconds; a subprocess case gets SUBPROCESS_TIME_LIMIT (torch imports)
    bug: str | None = None  # a known harness bug: the case is expected to fail


def study(overrides: dict[str, Any] | None = None, **fields: Any) -> str:
    """A study file's text over search_spaces/small.yaml."""
    spec: dict[str, Any] = {"name": "bad", "base": SMALL}
    if overrides is not None:
        spec["overrides"] = overrides
    return yaml.safe_dump({**spec, **fields}, sort_keys=False)


def validate(
    id: str, text: Content, *expect: str, files: Mapping[str, Content] | None = None, **kwargs: Any
) -> Case:
    """``validate @TMP@/study.yaml`` on ``text`` (plus further files)."""
    return Case(id, ("validate", STUDY, *RUNS), expect, {"study.yaml": text, **(files or {})}, **kwargs)


def override(id: str, overrides: dict[str, Any], *expect: str, **kwargs: Any) -> Case:
    return validate(id, study(overrides), *expect, **kwargs)


# ---- files that are not what they claim ------------------------------------------------------------


def samples_npz(images_shape: tuple[int, ...], n_tokens: int = 64, **extra: Any) -> Callable[[Path], None]:
    """A samples.npz writer: tokens (N, n_tokens), images of ``images_shape`` in [0, 1], a sample seed."""

    def write(path: Path) -> None:
        n = images_shape[0]
        arrays = {
            "tokens": np.zeros((n, n_tokens), dtype=np.int64),
            "images": np.full(images_shape, 0.5, dtype=np.float32),
            "meta_json": np.array('{"sample_seed": 0}'),
            **extra,
        }
        np.savez(path, **arrays)

    return write


def truncated(writer: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        writer(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return write


def zip_without_arrays(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not an array")


class _Mkdir:
    """Unpickled, it creates ``marker`` beside the weights: proof that a load ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def pickled_object(path: Path) -> None:
    """A torch.save file holding a pickled callable: torch.load(weights_only=True) refuses it."""
    import torch

    torch.save({"weight": torch.zeros(1), "payload": _Mkdir(str(path.parent / "pwned"))}, path)


def plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(_Mkdir(str(path.parent / "pwned"))))


def images(count: int = 2, size: int = 16) -> Callable[[Path], None]:
    """A class folder ``<path>/<class>/<i>.png`` of grey PNGs (``path`` is a folder to create)."""

    def write(path: Path) -> None:
        from PIL import Image

        for label in ("a", "b"):
            folder = path / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("L", (size, size), 40 * i).save(folder / f"{i}.png")

    return write


def empty_folder(path: Path) -> None:
    path.mkdir(parents=True)


def nested(depth: int) -> str:
    return "name: deep\noverrides: " + "[" * depth + "]" * depth + "\n"


def alias_bomb() -> str:
    """Nine lists of nine aliases, nine deep: 9^9 (~387 million) nodes once expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "name: bomb\n" + "\n".join(lines) + "\nseeds: *a9\n"


def huge_grid() -> str:
    space = {
        "sampler.num_steps": list(range(1, 61)),
        "sampler.temperature": [round(0.5 + i / 60, 4) for i in range(60)],
        "sampler.top_k": list(range(1, 61)),
        "model.mlp_ratio": [float(i) for i in range(1, 61)],
    }
    return study(space=space)


def two_levels(base_text: str) -> Mapping[str, Content]:
    """A study over ``base.yaml`` (in @TMP@) whose text is ``base_text``."""
    return {"study.yaml": yaml.safe_dump({"name": "bad", "base": "base.yaml"}), "base.yaml": base_text}
