"""Every signature in the README's API tables is the real object's signature.

An API table is a Markdown table whose header's first cell is a dotted name in
backticks (`` `procwire.Queue` ``). Each call written in backticks in a row's
first cell, ``name(parameters)``, is that object's attribute ``name`` (or the
object itself, for a module's function or class), and its parameters must be
exactly those of ``inspect.signature``: the same names in the same order, the
same defaults, and the same ``*``, ``*args`` and ``**kwargs``. When the header's
second cell says ``methods``, the calls in the second cell are checked too, as
methods of the objects the first cell names. A ``/`` need not be written
(``self``'s is never shown). For a native method that has no introspectable
signature, the first line of its docstring stands in for it.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

_CALL = re.compile(r"`([A-Za-z_][\w.]*)\((.*?)\)`")
_HEADER = re.compile(r"^\|\s*`([A-Za-z_][\w.]*)`\s*\|\s*([^|]*)\|")


def _resolve(path: tuple[str, ...]) -> Any:
    """The header's object (the longest importable module prefix, then attributes),
    then the row's attributes on it (a function named like its module is found)."""
    parts = path[0].split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in (*parts[i:], *path[1:]):
            obj = getattr(obj, attr)
        return obj
    raise LookupError(path)


def _tables() -> list[tuple[str, bool, list[tuple[int, list[str]]]]]:
    """(header object, second cell holds methods, [(line number, cells)]) per API table."""
    lines = README.read_text().splitlines()
    tables = []
    i = 0
    while i < len(lines):
        m = _HEADER.match(lines[i])
        if m and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append((j + 1, [c.strip() for c in lines[j].strip("|").split(" | ")]))
                j += 1
            tables.append((m.group(1), m.group(2).strip() == "methods", rows))
            i = j
        else:
            i += 1
    return tables


def _documented_calls() -> list[tuple[tuple[str, ...], str, str, int]]:
    """(object path, name, parameters as written, README line) for every checked call."""
    calls = []
    for header, methods, rows in _tables():
        for line, cells in rows:
            owners = []
            for name, params in _CALL.findall(cells[0]):
                path = (header,) if header.rsplit(".", 1)[-1] == name else (header, name)
                calls.append((path, name, params, line))
                owners.append(path)
            if methods and len(cells) > 1:
                for name, params in _CALL.findall(cells[1]):
                    for owner in owners:
                        calls.append(((*owner, name), name, params, line))
    return calls


def _parameters(text: str) -> list[tuple[str, str, str | None]]:
    """[(kind, name, default source)] of a parameter list, '/' markers dropped."""
    text = ", ".join(p for p in (s.strip() for s in text.split(",")) if p and p != "/") \
        if "/" in text else text
    args = ast.parse(f"def f({text}): pass").body[0].args  # type: ignore[attr-defined]
    out: list[tuple[str, str, str | None]] = []
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for a, d in zip(positional, defaults):
        out.append(("positional", a.arg, None if d is None else ast.unparse(d)))
    if args.vararg:
        out.append(("*args", args.vararg.arg, None))
    elif args.kwonlyargs:
        out.append(("*", "", None))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        out.append(("keyword", a.arg, None if d is None else ast.unparse(d)))
    if args.kwarg:
        out.append(("**kwargs", args.kwarg.arg, None))
    return out


def _real_parameters(obj: Any, name: str) -> list[tuple[str, str, str | None]]:
    try:
        sig = inspect.signature(obj)
    except ValueError:  # a native method without a text signature: its docstring's
        first = (obj.__doc__ or "").strip().splitlines()[0]
        m = re.match(rf"{re.escape(name)}\((.*?)\)", first)
        assert m, f"{name} has no signature and its docstring does not start with one"
        return _parameters(m.group(1))
    params = [p for p in sig.parameters.values()
              if not (p.name in ("self", "cls") and p.kind is p.POSITIONAL_ONLY)]
    if params and params[0].name == "self" and inspect.isfunction(obj):
        params = params[1:]  # a plain function looked up on its class
    text = []
    star = False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star:
            text.append("*")
            star = True
        if p.kind is p.VAR_POSITIONAL:
            text.append(f"*{p.name}")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            text.append(f"**{p.name}")
        elif p.default is p.empty:
            text.append(p.name)
        else:
            text.append(f"{p.name}={p.default!r}")
    return _parameters(", ".join(text))


CALLS = _documented_calls()


def test_the_readme_has_api_tables():
    assert len(CALLS) >= 60, "README.md's API tables were not found"


@pytest.mark.parametrize(("path", "name", "params", "line"), CALLS,
                         ids=[f"{'.'.join(c[0])}@{c[3]}" for c in CALLS])
def test_documented_signature_is_the_real_one(path, name, params, line):
    obj = _resolve(path)
    documented = _parameters(params)
    real = _real_parameters(obj, name)
    assert documented == real, (
        f"README.md line {line} documents {name}({params}); the real signature is "
        f"{name}({', '.join(_show(p) for p in real)})")


def _show(p: tuple[str, str, str | None]) -> str:
    kind, name, default = p
    if kind == "*":
        return "*"
    prefix = {"*args": "*", "**kwargs": "**"}.get(kind, "")
    return f"{prefix}{name}" + ("" if default is None else f"={default}")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_every_link_inside_the_readme_reaches_a_heading():
    text = README.read_text()
    text_outside_code = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    anchors = {_slug(h) for h in re.findall(r"^#+ (.*)$", text_outside_code, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text_outside_code))
    assert links, "no links found"
    assert not links - anchors, f"links to no heading: {sorted(links - anchors)}"
