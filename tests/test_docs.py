"""docs/guarantees.md names, for every statement, the test that checks it; those tests exist."""

from __future__ import annotations

import ast
import os
import re

from .helpers import ROOT

DOC = os.path.join(ROOT, "docs", "guarantees.md")
REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _statements(text: str) -> list[str]:
    """List items (with their continuation lines) and table body rows."""
    out: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("- "):
            if current:
                out.append(" ".join(current))
            current = [line]
        elif current is not None and line.startswith("  ") and line.strip():
            current.append(line.strip())
        else:
            if current:
                out.append(" ".join(current))
            current = None
            if line.startswith("|") and not set(line) <= set("|-: ") and "Who dies" not in line:
                out.append(line)
    if current:
        out.append(" ".join(current))
    return out


def _test_names(path: str) -> set[str]:
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test")
    }


def test_every_test_named_in_the_guarantees_exists() -> None:
    with open(DOC) as f:
        refs = REF.findall(f.read())
    assert len(refs) > 20
    missing = []
    names: dict[str, set[str]] = {}
    for path, test in refs:
        if not os.path.exists(os.path.join(ROOT, path)):
            missing.append(f"{path} (no such file)")
            continue
        if test not in names.setdefault(path, _test_names(path)):
            missing.append(f"{path}::{test}")
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"


def test_every_statement_in_the_guarantees_names_a_test() -> None:
    with open(DOC) as f:
        statements = _statements(f.read())
    assert len(statements) > 20
    bare = [s[:80] for s in statements if not REF.search(s)]
    assert not bare, f"statements without a test: {bare}"
