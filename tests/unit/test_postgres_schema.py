"""The PostgreSQL ledger's schema: schema.sql and the frozen migrations give the same
schema, the shipped migrations are never edited and are packaged, and an older ledger is
upgraded in place by `evq migrate` and works on."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_server import drop_handed_out, new_place, split_place
from psycopg import sql

import evq
from evq.ledger import open_ledger
from evq.ledger.postgres import schema

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60

# The shipped migrations, by version: one that has shipped is never edited (a ledger
# upgraded by it would differ from one upgraded later). A new version adds its file and
# its line here, and changes schema.sql to match.
FROZEN = {
    1: "c76e650c625ade03b302fbcf6545b996d8873b2b6ddc5e6c7e680a0eb1edfd7c",
    2: "7fc891642cba80f45521ea4dec90732d13428807cd2be663030d34d352316e58",
}


@pytest.fixture
def places(postgres_url: str) -> Iterator[tuple[str, str]]:
    """Two ledger URLs on fresh schemas, dropped afterwards."""
    yield new_place(), new_place()
    drop_handed_out()


def connect(place: str) -> psycopg.Connection[Any]:
    url, _ = split_place(place)
    return psycopg.connect(url, autocommit=True)


def ledger_at(place: str, version: int) -> None:
    """An empty ledger of an older `version` at `place`, as the evq of that version made
    it: its migrations run one by one into a new schema, each version stamped."""
    _, name = split_place(place)
    with connect(place) as conn, conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(name)))
        for number, script in enumerate(schema.MIGRATIONS[:version], 1):
            conn.execute(script.encode())
            conn.execute("INSERT INTO evq_meta (key, value) VALUES ('schema_version', %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (str(number),))


def version_of(place: str) -> str:
    _, name = split_place(place)
    with connect(place) as conn:
        row = conn.execute(sql.SQL("SELECT value FROM {}.evq_meta WHERE key = %s").format(
            sql.Identifier(name)), (schema.SCHEMA_VERSION_KEY,)).fetchone()
    assert row is not None
    return str(row[0])


# Each kind of object in one schema (%s: its name), as rows that do not name it.
CATALOG = {
    "tables": "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
    "columns": (
        "SELECT table_name, ordinal_position, column_name, data_type, collation_name, "
        "is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = %s"),
    "constraints": (
        "SELECT r.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint AS c "
        "JOIN pg_class AS r ON r.oid = c.conrelid "
        "JOIN pg_namespace AS n ON n.oid = r.relnamespace WHERE n.nspname = %s"),
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s",
    "triggers": (
        "SELECT r.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger AS t "
        "JOIN pg_class AS r ON r.oid = t.tgrelid "
        "JOIN pg_namespace AS n ON n.oid = r.relnamespace "
        "WHERE n.nspname = %s AND NOT t.tgisinternal"),
    "functions": (
        "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc AS p "
        "JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = %s"),
}


def schema_of(place: str) -> dict[str, list[tuple[str, ...]]]:
    """Every object of the ledger's schema, with the schema's own name taken out (each
    ledger has its own), by kind."""
    _, name = split_place(place)
    with connect(place) as conn:
        return {kind: sorted(tuple(str(v).replace(name, "<schema>") for v in row)
                             for row in conn.execute(query, (name,)))
                for kind, query in CATALOG.items()}


def evq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("EVQ_DB", None)
    return subprocess.run([sys.executable, "-m", "evq", *args], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("version", range(1, len(FROZEN)))
def test_schema_sql_equals_the_migrations_from_every_older_version(places, version):
    """A ledger made from schema.sql and one made at an older version then migrated have
    the same tables, columns, constraints, indexes, triggers and functions, and the
    latest version stamped; migrating again changes nothing."""
    fresh, older = places
    assert evq.migrate(fresh) == (0, schema.LATEST_VERSION)  # a new ledger: schema.sql
    ledger_at(older, version)
    assert version_of(older) == str(version)
    assert evq.migrate(older) == (version, schema.LATEST_VERSION)
    made, migrated = schema_of(fresh), schema_of(older)
    assert made == migrated
    assert {row[0] for row in made["tables"]} == schema.TABLES
    assert ("evq_jobs", "evq_jobs_by_state",
            "CREATE INDEX evq_jobs_by_state ON <schema>.evq_jobs USING btree "
            "(lower(state), enqueue_position)") in made["indexes"]
    for place in (fresh, older):
        assert version_of(place) == str(schema.LATEST_VERSION) == str(len(FROZEN))
        assert evq.migrate(place) == (schema.LATEST_VERSION, schema.LATEST_VERSION)
        assert schema_of(place) == made


def test_the_migrations_from_nothing_make_schema_sqls_ledger(places):
    """Every migration run from an empty schema gives what schema.sql gives."""
    fresh, migrated = places
    evq.migrate(fresh)
    ledger_at(migrated, schema.LATEST_VERSION)
    assert schema_of(fresh) == schema_of(migrated)
    assert version_of(migrated) == version_of(fresh) == str(schema.LATEST_VERSION)


def test_a_newer_ledger_is_refused(places):
    place, _ = places
    evq.migrate(place)
    _, name = split_place(place)
    with connect(place) as conn:
        conn.execute(sql.SQL("UPDATE {}.evq_meta SET value = %s WHERE key = %s").format(
            sql.Identifier(name)), (str(schema.LATEST_VERSION + 1), schema.SCHEMA_VERSION_KEY))
    with pytest.raises(evq.LedgerSchemaError, match="upgrade evq"):
        evq.migrate(place)


async def test_a_version_1_ledger_is_upgraded_by_evq_migrate_and_works_on(places):
    """A ledger made by evq's first PostgreSQL schema is refused until `evq migrate`
    upgrades it; then jobs run on it and it verifies."""
    place, _ = places
    ledger_at(place, 1)
    refused = evq_cli("verify", "--db", place)
    assert refused.returncode != 0 and "evq migrate" in refused.stderr, refused.stderr
    migrated = evq_cli("migrate", "--db", place)
    assert migrated.returncode == 0, migrated.stderr
    assert f"schema version 1 -> {schema.LATEST_VERSION}" in migrated.stdout
    async with evq.Context(place, clock=evq.FakeClock()) as ctx:
        ctx.define("double", lambda p: p * 2)
        job = await ctx.enqueue("double", 21)
        assert await ctx.drain() == 1
        assert (await ctx.get_job(job)).result == 42
    verified = evq_cli("verify", "--db", place)
    assert verified.returncode == 0, (verified.stdout, verified.stderr)


async def test_a_version_1_ledger_with_history_keeps_it_through_the_upgrade(places):
    """A ledger with jobs, taken back to version 1 (version 2 only added an index), is
    upgraded with its history: the same jobs, a chain and replay that verify, and the new
    index holding every job."""
    place, _ = places
    async with evq.Context(place, clock=evq.FakeClock()) as ctx:
        ctx.define("double", lambda p: p * 2)
        jobs = [await ctx.enqueue("double", n) for n in range(3)]
        await ctx.drain()
        await ctx.cancel(await ctx.enqueue("double", 9), "no")
        before = sorted((r.id, r.state, r.result) for r in await ctx.jobs())
    _, name = split_place(place)
    with connect(place) as conn, conn.transaction():
        conn.execute(sql.SQL("DROP INDEX {}.evq_jobs_by_state").format(sql.Identifier(name)))
        conn.execute(sql.SQL("UPDATE {}.evq_meta SET value = '1' WHERE key = %s").format(
            sql.Identifier(name)), (schema.SCHEMA_VERSION_KEY,))
    assert evq.migrate(place) == (1, schema.LATEST_VERSION)
    ledger = open_ledger(place)
    check = ledger.verify()
    assert check.chain is not None and check.chain.ok
    assert check.replay is not None and check.replay.ok
    async with evq.Context(place, clock=evq.FakeClock()) as ctx:
        assert sorted((r.id, r.state, r.result) for r in await ctx.jobs()) == before
        assert {r.id for r in await ctx.jobs()} >= set(jobs)
    with connect(place) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(name)))
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN SELECT id FROM evq_jobs WHERE lower(state) = 'succeeded' "
            "ORDER BY enqueue_position DESC LIMIT 10"))
        assert "evq_jobs_by_state" in plan, plan
        # The runtime's own `state = ...` never reads it, whatever the statistics say.
        runtime = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN SELECT id FROM evq_jobs WHERE state = 'succeeded' "
            "ORDER BY enqueue_position DESC LIMIT 10"))
        assert "evq_jobs_by_state" not in runtime, runtime


def test_shipped_migrations_are_frozen():
    assert len(schema.MIGRATIONS) == len(FROZEN) == schema.LATEST_VERSION
    for version, script in enumerate(schema.MIGRATIONS, 1):
        digest = hashlib.sha256(script.encode()).hexdigest()
        assert digest == FROZEN[version], f"migrations/{version:04d}.sql was edited"


def test_schema_sql_stamps_the_last_migrations_version():
    stamp = ("INSERT INTO evq_meta (key, value) VALUES ('schema_version', "
             f"'{schema.LATEST_VERSION}')")
    assert stamp in schema.SCHEMA
    assert schema.schema_sql() == schema.SCHEMA


def test_the_schema_files_are_packaged():
    """Every SQL file of the engine is matched by the package-data of pyproject.toml,
    so a wheel carries it (it is read with importlib.resources)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["evq.ledger.postgres"]
    package = resources.files("evq.ledger.postgres")
    files = ["schema.sql"] + [f"migrations/{entry.name}"
                              for entry in (package / "migrations").iterdir()
                              if entry.name.endswith(".sql")]
    assert len(files) == 1 + schema.LATEST_VERSION
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
        assert (package / name).is_file()
