"""The PostgreSQL engine (`pip install 'evq[postgres]'`): one ledger per PostgreSQL
schema, written by psycopg 3. It runs the SQLite engine's operations through its own
statements (dialect.py) and orders every process's appends with one advisory lock."""

from .engine import PostgresLedger

__all__ = ["PostgresLedger"]
