"""Decoded JSON or YAML that no store or encoder will take, found before anything
is written: lone surrogates (`"\\ud800"` decodes, but is not Unicode text: UTF-8
cannot encode it, so neither the database nor the JSON response can), NUL
characters (PostgreSQL's text refuses them, and no command line or environment
can hold one) and nesting deeper than any recipe or request needs (a parser or
encoder would die of recursion).

Called by the recipe parser (`recipes/envelope.py`, on every recipe, the CLI's
offline check included) and by the API's body check (`server/errors.py`, on every
JSON body). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Deeper than any recipe (about 6 levels) or request needs, far below the
# interpreter's recursion limit that a deeper document would hit in an encoder.
MAX_DEPTH = 64
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_MAX_PROBLEMS = 10

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class TextProblem:
    """Where (the keys and indexes leading to the value) and what is wrong."""

    loc: Loc
    message: str


def unstorable_text(data: Any, max_depth: int = MAX_DEPTH) -> list[TextProblem]:
    """Every string (mapping keys too) that cannot be stored, and any nesting
    deeper than `max_depth`; at most a few, in document order. Iterative, so a
    deep document cannot exhaust the stack here."""
    problems: list[TextProblem] = []
    stack: list[tuple[Loc, Any]] = [((), data)]
    while stack and len(problems) < _MAX_PROBLEMS:
        loc, value = stack.pop()
        if isinstance(value, str):
            if (found := _UNSTORABLE.search(value)) is not None:
                problems.append(TextProblem(loc, _what(found.group())))
            continue
        items = _items(value)
        if items is None:
            continue
        if len(loc) >= max_depth:
            problems.append(TextProblem(loc, f"nested deeper than {max_depth} levels"))
            continue
        children: list[tuple[Loc, Any]] = []
        for key, item in items:
            if isinstance(key, str) and (found := _UNSTORABLE.search(key)) is not None:
                # The key cannot be part of the path: the answer must stay encodable.
                problems.append(TextProblem(loc, f"the key {key!a} {_what(found.group())}"))
                continue
            children.append(((*loc, key if isinstance(key, str | int) else str(key)), item))
        stack.extend(reversed(children))
    return problems


def _items(value: Any) -> Iterable[tuple[Any, Any]] | None:
    if isinstance(value, dict):
        return value.items()
    if isinstance(value, list | tuple):
        return enumerate(value)
    return None


def _what(char: str) -> str:
    if char == "\x00":
        return "contains a NUL character (\\u0000), which cannot be stored"
    return (
        f"contains a lone surrogate ({ascii(char)[1:-1]}), which is not Unicode text; "
        "send the character itself or its full surrogate pair"
    )
