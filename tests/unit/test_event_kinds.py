"""EventKind is the one list of event kinds: every kind evq's code writes, and every kind
the schema's triggers know, is in it, and each of its kinds is written somewhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from evq import EventKind
from evq.ledger import schema_sql

PACKAGE = Path(__file__).resolve().parents[2] / "evq"
KIND = re.compile(r"^[a-z][a-z_]*$")
# Calls whose first argument (or first element of a tuple argument) is an event's kind.
WRITERS = {"append": 0, "Planned": 0, "FlowEvent": 0, "after_failure": 0}


def constants(node: ast.expr, names: dict[str, str]) -> list[str]:
    """The strings an expression can be: a literal, either branch of `a if c else b`, or
    a module-level NAME = "literal" of evq."""
    if isinstance(node, ast.IfExp):
        return constants(node.body, names) + constants(node.orelse, names)
    if isinstance(node, ast.Tuple) and node.elts:
        return constants(node.elts[0], names)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Attribute | ast.Name):
        key = node.attr if isinstance(node, ast.Attribute) else node.id
        return [names[key]] if key in names else []
    return []


def kinds_in_code() -> dict[str, str]:
    trees = {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
    names = {target.id: node.value.value
             for tree in trees.values() for node in tree.body
             if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
             and isinstance(node.value.value, str)
             for target in node.targets if isinstance(target, ast.Name)}
    found: dict[str, str] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = (func.attr if isinstance(func, ast.Attribute)
                    else func.id if isinstance(func, ast.Name) else "")
            if name not in WRITERS:
                continue
            for kind in constants(node.args[WRITERS[name]], names):
                if KIND.match(kind):
                    found.setdefault(kind, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def kinds_in_schema() -> set[str]:
    """The kinds the triggers test for (comments set aside)."""
    text = re.sub(r"--[^\n]*", "", schema_sql())
    return {kind for clause in re.findall(r"NEW\.kind\s*(?:=\s*'[a-z_]+'|IN\s*\([^)]*\))",
                                          text)
            for kind in re.findall(r"'([a-z_]+)'", clause)}


def kinds_in_engine_sql() -> set[str]:
    """The kinds the engines' statements write as literals (`INSERT INTO evq_events ...
    'seal'`)."""
    found = set()
    for path in (PACKAGE / "ledger").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if "INSERT INTO evq_events" in text or "'seal'" in text:
                    found |= set(re.findall(r"'([a-z_]+)'", text))
    return found


def test_every_kind_the_code_writes_is_an_event_kind():
    unknown = {kind: where for kind, where in kinds_in_code().items()
               if kind not in EventKind.__members__.values()}
    assert unknown == {}, "add these kinds to evq.EventKind (and the README's catalogue)"


def test_every_kind_the_schema_knows_is_an_event_kind():
    assert kinds_in_schema() - set(EventKind) == set()


def test_every_event_kind_is_written_somewhere():
    written = set(kinds_in_code()) | kinds_in_engine_sql()
    assert set(EventKind) - written == set()


def test_every_kind_the_engines_statements_write_is_an_event_kind():
    assert kinds_in_engine_sql() - set(EventKind) == set()


def test_the_scan_finds_the_kinds_of_the_job_path():
    """The scan itself sees kinds written each way: tx.append, a tuple of a batch, a
    Planned step, both branches of a conditional, and SQL text (the seal)."""
    assert {"enqueue", "dequeue", "success", "pause", "resume", "rescue"} <= set(
        kinds_in_code())
    assert "seal" in kinds_in_engine_sql()
