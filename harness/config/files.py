"""Study, base and paper reference files read safely: a size bound, UTF-8 only, no tag that builds an object,
no key twice, and a tree bounded with every alias expanded (an alias bomb is refused before
anything walks it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.config.trial import ConfigError
from harness.errors import short

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


def _named(path: Path) -> str:
    """The path quoted, whole up to 500 characters (a longer one, no real file's, is cut)."""
    text = str(path)
    return repr(text if len(text) <= 500 else f"{text[:300]}...{text[-100:]}")


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, safely: its size and its expanded tree bounded, UTF-8 only."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_yaml(path: Path) -> Any:
    """Whatever YAML document a file holds, read as :func:`read_yaml` reads it."""
    try:
        exists, size = path.is_file(), None
        if exists:
            size = path.stat().st_size
            if size <= MAX_FILE_BYTES:
                raw = path.read_bytes()
    except (OSError, ValueError) as err:  # a name too long, a NUL byte in it, no permission
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"file {_named(path)} cannot be read: {reason}") from None
    if not exists:
        raise ConfigError(f"file {_named(path)} does not exist")
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; a study or base file is at most {MAX_FILE_BYTES:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err)[:300]}") from None
    return data


# Each kind of finding and the fields it reads (reports.findings).
FINDING_FIELDS = {
    "at_least_as_good": ("key", "a", "b"),
    "interior_optimum": ("axis",),
    "gap_shrinks": ("axis", "key", "better"),
    "improves_along": ("axis",),
    "worsens_along": ("axis",),
}
FINDING_KINDS = tuple(FINDING_FIELDS)


def read_reference(folder: Path, ref: str) -> dict[str, Any]:
    """The entry ``<file>#<entry>`` of a paper reference file, its findings' kinds checked."""
    file, _, entry = ref.partition("#")
    data = read_yaml(folder / file)
    if entry not in data:
        entries = [e[:60] for e in sorted(map(str, data))]
        listed = entries if len(entries) <= 20 else [*entries[:20], f"... {len(entries) - 20} more"]
        raise ConfigError(
            f"paper_reference {short(ref)}: no entry {short(entry)} in {short(file)};"
            f" expected one of {listed}"
        )
    reference = data[entry]
    if not isinstance(reference, dict):
        raise ConfigError(f"paper_reference {ref!r}: expected a mapping; got {short(reference)}")
    findings = reference.get("findings", [])
    if not isinstance(findings, list):
        raise ConfigError(f"paper_reference {ref!r}: findings: expected a list; got {short(findings)}")
    for finding in findings:
        if not isinstance(finding, dict):
            raise ConfigError(f"paper_reference {ref!r}: a finding: expected a mapping; got {short(finding)}")
        if finding.get("kind") not in FINDING_KINDS:
            raise ConfigError(
                f"paper_reference {ref!r}: finding kind {short(finding.get('kind'))};"
                f" expected one of {FINDING_KINDS}"
            )
        missing = [f for f in FINDING_FIELDS[finding["kind"]] if f not in finding]
        if missing or not isinstance(finding.get("where", {}), dict):
            what = f"lacks {missing}" if missing else f"where is {short(finding['where'])}, not a mapping"
            raise ConfigError(
                f"paper_reference {ref!r}: a {finding['kind']} finding {what}; expected its fields"
                f" {list(FINDING_FIELDS[finding['kind']])} (and optionally where: {{key: value}})"
            )
    return reference


def read_base(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A base config; one that names its own ``base`` (relative to itself) is deep-merged over it,
    so a family of studies can share a partial base (``search_spaces/paper/mini/base.yaml``)."""
    try:
        path = path.resolve()
    except (OSError, ValueError) as err:  # a NUL byte in the name, a loop of links
        raise ConfigError(f"base file {_named(path)} cannot be read: {err}") from None
    if path in seen:
        raise ConfigError(f"base files form a cycle: {' -> '.join(map(str, (*seen, path)))}")
    data = read_yaml(path)
    parent = data.pop("base", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: base is {short(parent)}; expected the path of a base file, as text")
    return _deep_merge(read_base(path.parent / parent, (*seen, path)), data)


def _deep_merge(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
