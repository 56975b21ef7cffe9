"""The SQLite engine: the only code that imports sqlite3 or aiosqlite or holds SQL text."""

from .engine import SqliteLedger

__all__ = ["SqliteLedger"]
