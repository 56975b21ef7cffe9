"""The SQL an engine package ships: its frozen migration scripts, read in order."""

from __future__ import annotations

import re
from importlib import resources


def migrations(package: str) -> tuple[str, ...]:
    """The scripts of `package`'s migrations/ folder in order, checked to be numbered
    0001 to N without a gap (a missing file would otherwise shift every version after
    it)."""
    folder = resources.files(package) / "migrations"
    names = sorted(entry.name for entry in folder.iterdir()
                   if re.fullmatch(r"\d{4}\.sql", entry.name))
    expected = [f"{number:04d}.sql" for number in range(1, len(names) + 1)]
    if names != expected:
        raise RuntimeError(f"evq's migrations in {package} are damaged: found {names}, "
                           f"expected {expected}; reinstall evq")
    return tuple((folder / name).read_text("utf-8") for name in names)
