"""Study and base files read safely: a size bound, UTF-8 only, no tag that builds an object,
no key twice, and a tree bounded with every alias expanded (an alias bomb is refused before
anything walks it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.config.trial import ConfigError

MAX_FILE_BYTES = 1 << 20  # a study or base file; anything larger is not a hand-written config
MAX_NODES = 100_000  # YAML nodes per file, aliases expanded


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no tag that builds an object) that refuses a document whose tree, with
    every alias expanded, has more than MAX_NODES nodes (an alias bomb: nine aliases of nine
    aliases of ... are a few lines that expand to billions), before anything is constructed, and
    a mapping with a key twice (YAML forbids it; PyYAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 (PyYAML's signature)
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} appears twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_document(self, node):  # noqa: ANN001 (PyYAML's signature)
        sizes: dict[int, int] = {}

        def expanded(n) -> int:  # noqa: ANN001
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a node inside itself (a recursive alias) counts once
                children = n.value if isinstance(n.value, list) else []
                items = [c for child in children for c in (child if isinstance(child, tuple) else (child,))]
                sizes[id(n)] = 1 + sum(expanded(c) for c in items)
            return sizes[id(n)]

        if expanded(node) > MAX_NODES:
            raise yaml.YAMLError(f"the document expands to more than {MAX_NODES:,} nodes (aliases expanded)")
        return super().construct_document(node)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, safely: its size and its expanded tree bounded, UTF-8 only."""
    if not path.is_file():
        raise ConfigError(f"file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; a study or base file is at most {MAX_FILE_BYTES:,}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err)[:300]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
