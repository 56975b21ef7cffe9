"""The files evq creates: private (0600 under the usual umask 022, or the mode asked for),
and written whole or not at all. import, replay and export never delete or overwrite a
file they did not create, and a refused one leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import evq

TIMEOUT = 20


def evq_cli(*args: str | Path, umask: int = 0o022, **env: str
            ) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "NO_COLOR": "1", **env}
    environment.pop("EVQ_DB", None)
    if "EVQ_FILE_MODE" not in env:
        environment.pop("EVQ_FILE_MODE", None)
    return subprocess.run([sys.executable, "-m", "evq", *map(str, args)], env=environment,
                          capture_output=True, text=True, timeout=TIMEOUT,
                          preexec_fn=lambda: os.umask(umask))


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every regular file of a directory and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def umask_022() -> Iterator[None]:
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of a small ledger: three jobs, one of them failed once."""
    where = tmp_path_factory.mktemp("source")
    db = where / "source.db"

    async def fill() -> None:
        async with evq.Context(db, clock=evq.FakeClock()) as ctx:
            calls: list[int] = []

            @ctx.job(backoff=evq.Fixed(0))
            def flaky(payload: int) -> int:
                calls.append(payload)
                if len(calls) == 1:
                    raise RuntimeError("once")
                return payload

            for number in range(3):
                await flaky.enqueue(number)
            await ctx.drain()

    asyncio.run(fill())
    target = where / "source.jsonl"
    assert evq_cli("export", "--db", db, "--to", target).returncode == 0
    return target


def forged(exported: Path, where: Path) -> Path:
    """The export with one payload changed: every transition is legal, the chain is not."""
    lines = exported.read_text().splitlines()
    event = json.loads(lines[0])
    assert event["kind"] == "enqueue"
    event["data"] = event["data"].replace('"payload":0', '"payload":1000')
    lines[0] = json.dumps(event)
    path = where / "forged.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def illegal(exported: Path, where: Path) -> Path:
    """The export with a claim missing: a transition the ledger refuses."""
    lines = exported.read_text().splitlines()
    path = where / "illegal.jsonl"
    path.write_text("\n".join(lines[:1] + lines[3:]) + "\n")
    return path


# --- import ---------------------------------------------------------------------------
def test_a_refused_import_leaves_nothing_behind(exported: Path, tmp_path: Path):
    where = tmp_path / "out"
    where.mkdir()
    for source, why in ((forged(exported, tmp_path), "hash chain is broken"),
                        (illegal(exported, tmp_path), "refused")):
        result = evq_cli("import", source, "--db", where / "new.db")
        assert result.returncode == 2 and why in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert list(where.iterdir()) == []  # no ledger, no -wal, no temporary file


def test_import_never_deletes_or_writes_into_an_existing_file(exported: Path,
                                                              tmp_path: Path):
    where = tmp_path / "out"
    where.mkdir()
    (where / "empty.db").write_bytes(b"")
    (where / "empty.db-wal").write_bytes(b"not ours")  # someone else's WAL, beside it
    (where / "full.db").write_bytes(b"precious")
    (where / "lonely.db-wal").write_bytes(b"a WAL whose database is gone")
    before = snapshot(where)
    for source in (exported, forged(exported, tmp_path), illegal(exported, tmp_path)):
        for name in ("empty.db", "full.db", "lonely.db"):
            result = evq_cli("import", source, "--db", where / name)
            assert result.returncode == 2, (name, result.stdout, result.stderr)
            assert "exists" in result.stderr
            assert snapshot(where) == before
    assert not (where / "lonely.db").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="making a device node needs root")
def test_import_leaves_a_device_node_alone(exported: Path, tmp_path: Path):
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    for source in (exported, illegal(exported, tmp_path)):
        result = evq_cli("import", source, "--db", node)
        assert node.exists() and stat.S_ISCHR(os.lstat(node).st_mode)
        assert result.returncode == 2 and "exists" in result.stderr
    assert not Path(f"{node}-wal").exists()


def test_import_creates_a_private_ledger(exported: Path, tmp_path: Path):
    result = evq_cli("import", exported, "--db", tmp_path / "copy.db")
    assert result.returncode == 0 and "hash chain holds" in result.stdout, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db"]
    assert mode(tmp_path / "copy.db") == 0o600
    assert evq_cli("verify", "--db", tmp_path / "copy.db").returncode == 0
    relaxed = evq_cli("import", exported, "--db", tmp_path / "shared.db",
                      EVQ_FILE_MODE="640")
    assert relaxed.returncode == 0, relaxed.stderr
    assert mode(tmp_path / "shared.db") == 0o640


# --- replay and export ----------------------------------------------------------------
@pytest.fixture
def ledger(exported: Path, tmp_path: Path) -> Path:
    db = tmp_path / "ledger.db"
    assert evq_cli("import", exported, "--db", db).returncode == 0
    return db


def test_replay_writes_a_new_private_file_or_nothing(ledger: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken.db").write_bytes(b"")
    (out / "stale.db-wal").write_bytes(b"not ours")
    before = snapshot(out)
    for name in ("taken.db", "stale.db"):
        result = evq_cli("replay", "--db", ledger, "--to", out / name)
        assert result.returncode == 2 and "exists" in result.stderr, result.stderr
        assert snapshot(out) == before
    made = evq_cli("replay", "--db", ledger, "--to", out / "then.db")
    assert made.returncode == 0, made.stderr
    assert mode(out / "then.db") == 0o600
    assert set(snapshot(out)) == set(before) | {"then.db"}  # no temporary file left


def test_a_refused_replay_leaves_nothing(ledger: Path, tmp_path: Path):
    conn = sqlite3.connect(ledger)
    conn.execute("DROP TRIGGER evq_events_no_update")
    conn.execute("UPDATE evq_events SET kind = 'success' WHERE position = ("
                 "SELECT min(position) FROM evq_events WHERE kind = 'run')")
    conn.commit()
    conn.close()
    out = tmp_path / "out"
    out.mkdir()
    result = evq_cli("replay", "--db", ledger, "--to", out / "then.db")
    assert result.returncode == 2 and "refused" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert list(out.iterdir()) == []


def test_export_is_private_and_never_replaces_a_file(ledger: Path, tmp_path: Path):
    target = tmp_path / "events.jsonl"
    assert evq_cli("export", "--db", ledger, "--to", target).returncode == 0
    assert mode(target) == 0o600
    assert evq_cli("export", "--db", ledger, "--to", tmp_path / "shared.jsonl",
                   EVQ_FILE_MODE="640").returncode == 0
    assert mode(tmp_path / "shared.jsonl") == 0o640
    target.write_text("mine")
    again = evq_cli("export", "--db", ledger, "--to", target)
    assert again.returncode == 2 and "exists" in again.stderr
    assert target.read_text() == "mine"


# --- modes of ledgers -----------------------------------------------------------------
def ledger_modes(db: Path) -> dict[str, int]:
    return {suffix: mode(f"{db}{suffix}") for suffix in ("", "-wal", "-shm")
            if Path(f"{db}{suffix}").exists()}


@pytest.mark.usefixtures("umask_022")
async def test_a_new_ledger_and_its_wal_are_private(tmp_path: Path):
    db = tmp_path / "jobs.db"
    async with evq.Context(db) as ctx:
        @ctx.job()
        def work(payload: int) -> None:
            pass

        await work.enqueue(1)
        modes = ledger_modes(db)
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}


@pytest.mark.usefixtures("umask_022")
async def test_file_mode_relaxes_a_new_ledger_but_not_an_existing_one(tmp_path: Path):
    shared = tmp_path / "shared.db"
    async with evq.Context(shared, file_mode=0o640) as ctx:
        await ctx.enqueue(ctx.job(name="work")(lambda: None).name)
        assert ledger_modes(shared) == {"": 0o640, "-wal": 0o640, "-shm": 0o640}
    existing = tmp_path / "existing.db"
    existing.touch(mode=0o644)
    os.chmod(existing, 0o644)
    async with evq.Context(existing) as ctx:
        await ctx.enqueue(ctx.job(name="work")(lambda: None).name)
        assert ledger_modes(existing) == {"": 0o644, "-wal": 0o644, "-shm": 0o644}
    for bad in (0o1777, -1, "640", 6.4, True):
        with pytest.raises(evq.InvalidInput, match="file_mode"):
            evq.Context(tmp_path / "bad.db", file_mode=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "bad.db").exists()


@pytest.mark.usefixtures("umask_022")
def test_migrate_and_sync_producer_create_private_ledgers(tmp_path: Path):
    evq.migrate(tmp_path / "migrated.db")
    assert mode(tmp_path / "migrated.db") == 0o600
    evq.migrate(tmp_path / "group.db", file_mode=0o660)
    assert mode(tmp_path / "group.db") == 0o660
    ctx = evq.Context(tmp_path / "sync.db")
    ctx.job(name="work")(lambda: None)
    with ctx.sync() as producer:
        producer.enqueue("work")
        assert ledger_modes(tmp_path / "sync.db") == {"": 0o600, "-wal": 0o600,
                                                      "-shm": 0o600}


def test_the_command_line_creates_private_files(tmp_path: Path):
    demo = evq_cli("demo", "--db", tmp_path / "demo.db")
    assert demo.returncode == 0, demo.stderr
    assert set(ledger_modes(tmp_path / "demo.db").values()) == {0o600}
    assert evq_cli("migrate", "--db", tmp_path / "m.db").returncode == 0
    assert mode(tmp_path / "m.db") == 0o600
    relaxed = evq_cli("migrate", "--db", tmp_path / "g.db", EVQ_FILE_MODE="640")
    assert relaxed.returncode == 0 and mode(tmp_path / "g.db") == 0o640
    for bad in ("rw-r-----", "9", "1777"):
        refused = evq_cli("migrate", "--db", tmp_path / "x.db", EVQ_FILE_MODE=bad)
        assert refused.returncode == 2 and "EVQ_FILE_MODE" in refused.stderr
        assert not (tmp_path / "x.db").exists()
