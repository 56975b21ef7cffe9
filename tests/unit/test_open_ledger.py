"""open_ledger picks the engine from a path or URL; what it cannot open is refused with a
typed error that says what to give instead."""

from __future__ import annotations

from pathlib import Path

import pytest

import evq
from evq.ledger import open_ledger


async def test_a_path_and_a_sqlite_url_are_the_same_ledger(tmp_path: Path, clock):
    path = tmp_path / "jobs.db"
    async with evq.Context(f"sqlite:///{path}", clock=clock) as ctx:
        ctx.define("job", lambda p: None)
        job_id = await ctx.enqueue("job", {"n": 1})
    by_path = open_ledger(path)
    assert by_path.read_job(job_id) is not None
    assert open_ledger(str(path)).location == open_ledger(f"sqlite:///{path}").location


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql://evq@localhost/test?schema=Bad-Name", "schema 'Bad-Name'"),
    ("postgresql://evq:secret@localhost/test?schema=1x", "postgresql://evq:\\*\\*\\*@"),
    ("redis://localhost:6379/0", "unknown ledger URL scheme 'redis'"),
    ("sqlite:///", "the ledger path is empty"),
])
def test_what_cannot_be_a_ledger_is_refused_by_name(url: str, says: str):
    with pytest.raises(evq.InvalidInput, match=says):
        open_ledger(url)
    with pytest.raises(evq.InvalidInput, match=says):
        evq.Context(url)


def test_a_postgresql_url_names_its_server_and_schema_and_never_shows_the_password():
    ledger = open_ledger("postgresql://evq:s3cret@db.example:5433/app?schema=jobs"
                         "&sslmode=disable")
    assert ledger.location == "postgresql://evq:***@db.example:5433/app?schema=jobs&sslmode=disable"
    assert "s3cret" not in repr(vars(ledger).get("location"))
    default = open_ledger("postgres://evq@db.example/app")
    assert default.location == "postgres://evq@db.example/app"
