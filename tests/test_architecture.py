"""The allowed arrows between evq's parts, as ARCHITECTURE.md's table writes them, hold for
every import in the package (top level, inside functions, under TYPE_CHECKING)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "evq"
DRIVERS = {"sqlite3", "aiosqlite", "psycopg", "psycopg_pool", "asyncpg"}


def read_table() -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(module -> part, package prefix -> part, part -> parts it may import)."""
    modules: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("part", "---") or not line.startswith("|"):
            continue
        part, placed, may = cells
        for name in re.findall(r"`([\w.]+)`", placed):
            if "every module under it" in placed:
                prefixes[name] = part
            modules[name] = part
        allowed[part] = {p.split(" (")[0].strip() for p in re.split(r",\s*", may)}
    return modules, prefixes, allowed


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """Every module `path` (the module `name`) imports, resolved to absolute names, with
    its line."""
    tree = ast.parse(path.read_text())
    here = (name or module_name(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            if node.level == 0:
                target = node.module or ""
            # `from . import x` / `from .ledger import records` may name submodules: then
            # the arrow goes to each of those, otherwise to the module named.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else target))
    return found


def part_of(name: str, modules: dict[str, str], prefixes: dict[str, str]) -> str | None:
    for prefix, part in prefixes.items():
        if name == prefix or name.startswith(prefix + "."):
            return part
    return modules.get(name)


def is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (ROOT / relative).with_suffix(".py").exists() or (ROOT / relative).is_dir()


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_table_places_every_module_of_the_package():
    modules, prefixes, _ = read_table()
    unplaced = [module_name(p) for p in SOURCES
                if part_of(module_name(p), modules, prefixes) is None]
    assert unplaced == [], ("add these modules to a part of ARCHITECTURE.md's table: "
                            f"{unplaced}")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_every_import_follows_an_allowed_arrow(path: Path):
    modules, prefixes, allowed = read_table()
    me = module_name(path)
    mine = part_of(me, modules, prefixes)
    assert mine is not None
    wrong = []
    for line, target in imports_of(path):
        top = target.split(".")[0]
        if top in DRIVERS:
            if mine != "engines":
                wrong.append(f"line {line}: imports the driver {target}")
            continue
        if top != "evq" or not is_module(target):
            continue
        theirs = part_of(target, modules, prefixes)
        if theirs is None or (theirs == mine and me != "evq.ledger"):
            continue
        if theirs not in allowed[mine]:
            wrong.append(f"line {line}: {mine} -> {theirs} ({target})")
        elif mine == "seam" and theirs == "engines" and me != "evq.ledger":
            wrong.append(f"line {line}: only evq.ledger picks an engine ({target})")
    assert wrong == [], f"{me}: " + "; ".join(wrong)


def test_sql_text_lives_only_in_engines():
    statement = re.compile(r"\b(SELECT\s+[\w*(]|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                           r"PRAGMA\s+\w|CREATE\s+(TABLE|INDEX|TRIGGER|VIEW)|BEGIN\s+IMMEDIATE)")
    modules, prefixes, _ = read_table()
    holding = [module_name(p) for p in SOURCES
               if part_of(module_name(p), modules, prefixes) != "engines"
               and statement.search(p.read_text())]
    assert holding == []


def test_the_checker_sees_a_forbidden_arrow(tmp_path: Path):
    """The walker resolves relative imports, including those inside functions."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from .ledger.sqlite import ops, tx\n"
                      "    from .ledger.sqlite.writer import Writer\n    import sqlite3\n")
    found = {target for _, target in imports_of(source, "evq.worker")}
    assert found == {"evq.ledger.sqlite.ops", "evq.ledger.sqlite.tx", "evq.ledger.sqlite.writer",
                     "sqlite3"}


def test_the_public_names_come_from_above_the_engines():
    """`evq.__all__` holds what users need, none of it an engine's (no driver types)."""
    import evq

    from_engines = [name for name in evq.__all__ if name != "__version__"
                    and getattr(getattr(evq, name), "__module__", "").startswith(
                        "evq.ledger.sqlite")]
    assert from_engines == []
    assert "SyncProducer" in evq.__all__ and "Durability" not in evq.__all__
