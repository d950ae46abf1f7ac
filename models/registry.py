"""A name -> constructor table that fails loudly, listing the known names on a miss."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message names the kind, the value and the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to constructors. ``registry["cosine"]`` returns the constructor."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            return fn

        return decorator

    def __getitem__(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; expected one of {sorted(self._entries)}.{hint}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)


def check_keys(section: str, d: dict, cls: type) -> None:
    """Unknown keys are an error that names them and the allowed ones."""
    allowed = sorted(cls.__dataclass_fields__)
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; allowed keys are {allowed}")
