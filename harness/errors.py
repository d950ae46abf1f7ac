"""The project's own error for bad input, and the one "did you mean" every refusal uses.

``run_study.py`` turns a ``UserError`` (and only that) into a one-line message and exit code 2;
any other exception is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import difflib
import errno
import reprlib
from collections.abc import Iterable

UNWRITABLE = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EIO}
)  # a path that cannot be written: run_study.py exits 5 naming it (disk full, quota, read-only)


def unwritable(err: BaseException) -> bool:
    """Whether ``err`` says a path cannot be written (disk full, quota, read-only, permission)."""
    return isinstance(err, OSError) and err.errno in UNWRITABLE


class UserError(ValueError):
    """Bad input (a study, a config field, a file the user named); the message names the field or
    path, the value and what was expected. A ValueError, so pydantic validators may raise it."""


def did_you_mean(name: object, known: Iterable[str], cutoff: float = 0.6) -> str:
    """'; did you mean 'x'?' for the closest known name, or ''. Among difflib's close matches the
    fewest edits wins (a swap of two letters is one edit: 'fdi' -> 'fid', not 'fvd')."""
    close = difflib.get_close_matches(str(name), sorted({str(k) for k in known}), n=5, cutoff=cutoff)
    if not close:
        return ""
    best = min(close, key=lambda k: (_edits(str(name), k), close.index(k)))
    return f"; did you mean {best!r}?"


def _edits(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def check_known(name: object, known: Iterable[str], field: str) -> None:
    """Raises UserError for a name not among ``known``, listing them and the closest one."""
    known = sorted(str(k) for k in known)
    if name not in known:
        raise UserError(f"{field}: unknown {name!r}; expected one of {known}{did_you_mean(name, known)}")


def short(value: object, limit: int = 80) -> str:
    """A repr of ``value`` bounded in depth, items and length: an error message never echoes
    unbounded input (a huge list, a YAML alias bomb, a self-referencing structure)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keywords
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = 6
