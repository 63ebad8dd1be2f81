"""Every config key with its type, default and doc, read from the schema's dataclasses themselves.

A key's doc is the comment lines just above its field in the source, the comment on the field's
line, or both, joined: the dataclasses stay the one place where keys are documented, and
`harmonyray config` and the README's table (`harmonyray config --markdown`) are generated here.
"""
from __future__ import annotations

import ast
import inspect
import io
import math
import textwrap
import tokenize
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from functools import cache
from typing import Any

import yaml

from system.config import Config


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, as in an override: `agent.model.size`
    type: str  # its annotation: `int | None`
    default: str  # as YAML writes it: `null`, `{}`, `auto`
    doc: str  # "" where the field has no comment


def key_docs(schema: type = Config) -> dict[str, list[KeyDoc]]:
    """The keys of `schema`, grouped by the section (dotted path of a dataclass; "" at the top) that holds them, in field order."""
    groups: dict[str, list[KeyDoc]] = {}

    def walk(cls: type, section: str) -> None:
        rows = groups.setdefault(section, [])
        hints, docs = typing.get_type_hints(cls), _field_comments(cls)
        for f in fields(cls):
            key = f"{section}.{f.name}" if section else f.name
            if is_dataclass(hints[f.name]):
                walk(hints[f.name], key)
            else:
                default = f.default_factory() if f.default is MISSING else f.default
                rows.append(KeyDoc(key, inspect.formatannotation(hints[f.name]).replace("typing.", ""), _yaml(default), docs.get(f.name, "")))

    walk(schema, "")
    return {section: rows for section, rows in groups.items() if rows}


@cache
def _field_comments(cls: type) -> dict[str, str]:
    """Each field of a dataclass and its doc: the comment lines right above it, then any comment on its own lines."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    docs: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        on_field = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        docs[node.target.id] = " ".join(above + on_field)
    return docs


def config_text(schema: type = Config) -> str:
    """Every key as one line (key, type, default, doc), aligned within its section, under a `[section]` line."""
    out: list[str] = []
    for section, group in key_docs(schema).items():
        widths = [max(len(getattr(row, name)) for row in group) for name in ("key", "type", "default")]
        out.append(f"[{section or 'top level'}]")
        out += [f"  {r.key:<{widths[0]}}  {r.type:<{widths[1]}}  {r.default:<{widths[2]}}  {r.doc}".rstrip() for r in group]
        out.append("")
    return "\n".join(out)


def config_markdown(schema: type = Config) -> str:
    """Every key as a Markdown table row, one table per section under its name in bold."""
    out: list[str] = []
    for section, group in key_docs(schema).items():
        out += [f"**{section or 'top level'}**", "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
        out += [f"| `{r.key}` | {_cell(r.type)} | `{_cell(r.default)}` | {_cell(r.doc)} |" for r in group]
        out.append("")
    return "\n".join(out)


def _yaml(value: Any) -> str:
    """A default as one would write it in YAML or an override."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=math.inf).removesuffix("\n").removesuffix("\n...")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
