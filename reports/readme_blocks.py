"""The README's generated blocks and the quoted values in the spec: found, rendered, rewritten.

A block is delimited in the README by two lines::

    <!-- readme-numbers: video-fvd begin -->
    ... the block's template with its figures' quoted values, then its provenance line ...
    <!-- readme-numbers: video-fvd end -->

Rewriting touches only the text between a block's markers, and in the spec only the ``quoted``
and ``ci`` scalars of the figures measured (located through PyYAML's node marks, so comments
and layout stay as they are).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from harness.errors import UserError
from reports.readme_numbers import NUMBER_FORMAT, PLACEHOLDER, Block, ReadmeNumbers

MARKER = re.compile(r"^<!-- readme-numbers: (?P<id>\S+) (?P<edge>begin|end) -->\n?", re.MULTILINE)
PROVENANCE = "Study: `{study}`; checked by `make check-readme`."


def marker(block_id: str, edge: str) -> str:
    return f"<!-- readme-numbers: {block_id} {edge} -->"


def find_blocks(text: str) -> dict[str, tuple[int, int]]:
    """Block id -> (start, end): the character span between its begin and end marker lines."""
    spans: dict[str, tuple[int, int]] = {}
    open_id, start = None, 0
    for m in MARKER.finditer(text):
        block_id, edge = m["id"], m["edge"]
        if edge == "begin":
            if open_id is not None:
                raise UserError(f"README: block {open_id!r} has no end marker before {block_id!r} begins")
            if block_id in spans:
                raise UserError(f"README: block {block_id!r} appears twice")
            open_id, start = block_id, m.end()
        elif block_id != open_id:
            raise UserError(f"README: an end marker of block {block_id!r} without its begin marker")
        else:
            spans[block_id], open_id = (start, m.start()), None
    if open_id is not None:
        raise UserError(f"README: block {open_id!r} has no end marker ({marker(open_id, 'end')})")
    return spans


def render(block: Block, values: Mapping[str, tuple[float, float | None]]) -> str:
    """The block's text: its template with ``{name}`` -> value and ``{name.ci}`` -> the interval's
    half-width, each in the figure's number format, then the provenance line."""

    def number(m: re.Match) -> str:
        value, ci = values[m[1]]
        return format(ci if m[2] else value, block.number_format(m[1]))

    body = PLACEHOLDER.sub(number, block.template.strip("\n"))
    return f"{body}\n\n{PROVENANCE.format(study=block.study)}\n"


def quoted(block: Block) -> dict[str, tuple[float, float | None]]:
    """The values the spec says the README quotes."""
    return {name: (figure.quoted, figure.ci) for name, figure in block.figures.items()}


def rewrite_blocks(text: str, rendered: Mapping[str, str]) -> str:
    """``text`` with the content of each named block replaced; every other character kept."""
    spans = find_blocks(text)
    missing = sorted(set(rendered) - set(spans))
    if missing:
        raise UserError(f"README: no block {missing[0]!r} (add {marker(missing[0], 'begin')} / end lines)")
    for block_id in sorted(rendered, key=lambda b: spans[b][0], reverse=True):
        start, end = spans[block_id]
        text = text[:start] + rendered[block_id] + text[end:]
    return text


def stale_blocks(text: str, spec: ReadmeNumbers) -> dict[str, str]:
    """Block id -> why the README's block is not what the spec renders from its quoted values (it
    is missing, unknown to the spec, or edited by hand). Empty when they agree."""
    spans = find_blocks(text)
    problems = {b: f"README has no block {b!r} (its markers)" for b in spec.blocks if b not in spans}
    problems |= {b: f"README block {b!r} is in no spec block" for b in spans if b not in spec.blocks}
    for block_id, block in spec.blocks.items():
        if block_id in spans and text[slice(*spans[block_id])] != render(block, quoted(block)):
            problems[block_id] = (
                f"README block {block_id!r} is not what its template renders from the quoted values:"
                " edit the template in the spec, then run benchmarks/check_readme.py --render"
            )
    return problems


def number_text(value: float, number_format: str) -> str:
    """The value as the README prints it, as a YAML number (no thousands separator)."""
    digits = int(NUMBER_FORMAT.fullmatch(number_format)[1])
    text = f"{value:.{digits}f}"
    return "0" if float(text) == 0 and digits == 0 else text


def rewrite_quoted(spec_text: str, new: Mapping[tuple[str, str], Mapping[str, str]]) -> str:
    """The spec's text with ``blocks.<block>.figures.<name>.<field>`` set to the given YAML text for
    each ((block, name), {field: text}); each field must be in the file already."""
    root = yaml.compose(spec_text)
    edits = []
    for (block_id, name), fields in new.items():
        figure = _child(_child(_child(_child(root, "blocks"), block_id), "figures"), name)
        for field, text in fields.items():
            node = _child(figure, field)
            edits.append((node.start_mark.index, node.end_mark.index, text))
    for start, end, text in sorted(edits, reverse=True):
        spec_text = spec_text[:start] + text + spec_text[end:]
    return spec_text


def _child(node: yaml.Node, key: str) -> yaml.Node:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    raise UserError(f"spec: no key {key!r} where a quoted value was to be written")
