"""The security checklist (docs: SECURITY.md, README "Security checklist") as an index.

Every test in this package is named after the checklist item it proves, `test_oa_02_...` for
OA-02. This module fails when a P0 item has no such test, or when a test names an item that
does not exist, so the checklist cannot silently lose coverage."""

from __future__ import annotations

import ast
import re
from pathlib import Path

# Section letter prefix, numbers, and the items the checklist marks P0 (the rest are P1).
SECTIONS = {
    "oa": (range(1, 16), {1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 15}),
    "ks": (range(1, 13), set(range(1, 13))),
    "ak": (range(1, 10), {1, 2, 3, 4, 5, 6, 7, 9}),
    "au": (range(1, 5), {1, 2, 3}),
    "iv": (range(1, 4), {1, 2}),
    "ft": (range(1, 7), {1, 2, 3, 4, 5}),
    "cc": (range(1, 8), {1, 2, 3, 4, 5, 7}),
    "lg": (range(1, 5), {1, 2, 3, 4}),
}
ALL = {f"{s}_{n:02d}" for s, (numbers, _) in SECTIONS.items() for n in numbers}
P0 = {f"{s}_{n:02d}" for s, (_, p0) in SECTIONS.items() for n in p0}
NAME = re.compile(r"^test_([a-z]{2}_\d{2})_")


def _covered() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                match = NAME.match(node.name)
                if match:
                    found.setdefault(match.group(1), []).append(f"{path.name}::{node.name}")
    return found


def test_the_checklist_has_sixty_items_of_which_fifty_one_are_p0() -> None:
    assert (len(ALL), len(P0)) == (60, 51)


def test_every_p0_item_has_a_test_named_after_it() -> None:
    missing = sorted(P0 - _covered().keys())
    assert not missing, f"P0 items without a test: {missing}"


def test_every_test_names_a_real_item() -> None:
    unknown = sorted(_covered().keys() - ALL)
    assert not unknown, f"tests name items the checklist does not have: {unknown}"
