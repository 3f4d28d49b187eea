"""RELIABILITY.md stays true: every test it cites exists, and its fault table is the one the
fault test asserts (so a changed outcome fails here until the document says it too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from test_faults import EXPECTED

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "RELIABILITY.md"
CITED = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")
FAULT_ROW = re.compile(r"^\|\s*`([\w-]+)`\s*\|[^|]*\|\s*`(\w+)`\s*\|\s*`(\w+)`\s*\|\s*$")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_cited_test_exists():
    cited = CITED.findall(DOC.read_text())
    assert len(cited) >= 20
    missing = [f"{f}::{t}" for f, t in cited if not (ROOT / f).exists() or t not in _test_names(ROOT / f)]
    assert not missing, f"RELIABILITY.md cites tests that do not exist: {missing}"


def test_every_table_row_cites_a_test():
    rows = [line for line in DOC.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("|---") and "`tests/" not in line]
    headers = [r for r in rows if r.lower().startswith(("| fault |", "| input |", "| what "))]
    fault_rows = [r for r in rows if FAULT_ROW.match(r)]
    assert set(rows) == set(headers) | set(fault_rows), \
        f"rows without a test: {sorted(set(rows) - set(headers) - set(fault_rows))}"


def test_the_fault_table_is_what_the_fault_test_asserts():
    table = {m.group(1): (m.group(2), m.group(3))
             for m in map(FAULT_ROW.match, DOC.read_text().splitlines()) if m}
    assert table == EXPECTED
