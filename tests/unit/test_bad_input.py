"""Bad input gets a typed error before anything is written, and the ledger is unchanged."""

from __future__ import annotations

import math
import re
import sqlite3
from pathlib import Path

import attrs
import pytest

import evq
from evq.testing import kinds_of


def ledger_rows(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db)
    try:
        return (conn.execute("SELECT count(*) FROM evq_events").fetchone()[0],
                conn.execute("SELECT count(*) FROM evq_jobs").fetchone()[0])
    finally:
        conn.close()


@attrs.define
class Email:
    to: str
    subject: str = ""


BAD_PAYLOADS = [
    {1, 2},
    b"bytes",
    object(),
    math.nan,
    {"x": math.inf},
    [-math.inf],
    2**63,
    {"deep": [-(2**63) - 1]},
    "lone \ud800 surrogate",
    {"\udfff": 1},
    {1: "int key"},
    {"when": __import__("datetime").datetime(2026, 1, 1)},
]


@pytest.mark.parametrize("payload", BAD_PAYLOADS, ids=lambda p: type(p).__name__)
async def test_non_json_payload_is_refused_and_nothing_written(ctx, db, payload):
    ctx.define("job", lambda p: None)
    before = ledger_rows(db)
    with pytest.raises(evq.InvalidPayload) as info:
        await ctx.enqueue("job", payload)
    assert "payload" in str(info.value)
    assert ledger_rows(db) == before


async def test_payload_over_limit_is_refused(db, clock):
    async with evq.Context(db, clock=clock, max_payload_bytes=100) as ctx:
        ctx.define("job", lambda p: None)
        await ctx.enqueue("job", "x" * 50)
        before = ledger_rows(db)
        with pytest.raises(evq.PayloadTooLarge, match="over the limit of 100"):
            await ctx.enqueue("job", "x" * 200)
        assert ledger_rows(db) == before


async def test_default_limit_is_one_mebibyte(ctx, db):
    ctx.define("job", lambda p: None)
    with pytest.raises(evq.PayloadTooLarge):
        await ctx.enqueue("job", "x" * (1024 * 1024 + 1))


async def test_int64_bounds_are_accepted(ctx):
    ctx.define("job", lambda p: None)
    job_id = await ctx.enqueue("job", [2**63 - 1, -(2**63)])
    assert (await ctx.history(job_id))[0].data["payload"] == [2**63 - 1, -(2**63)]


async def test_unknown_job_name(ctx, db):
    ctx.define("known", lambda p: None)
    with pytest.raises(evq.UnknownJob, match="known"):
        await ctx.enqueue("unknown", {})
    assert ledger_rows(db) == (0, 0)


@pytest.mark.parametrize("name", ["", " ", "a b", "x" * 129, "-lead", "naïve", "a/b", None, 3])
def test_malformed_names_are_refused(ctx, name):
    with pytest.raises(evq.InvalidName):
        ctx.define(name, lambda p: None)
    with pytest.raises(evq.InvalidName):
        ctx.define("fine", lambda p: None, queue=name)


@pytest.mark.parametrize("run_at", ["tomorrow", "2026-13-01T00:00:00", object(), math.nan, True])
async def test_run_at_that_is_not_a_time(ctx, db, run_at):
    ctx.define("job", lambda p: None)
    with pytest.raises(evq.InvalidTime):
        await ctx.enqueue("job", {}, run_at=run_at)
    assert ledger_rows(db) == (0, 0)


@pytest.mark.parametrize("delay", [-1, -0.001, math.inf, math.nan, "5"])
async def test_bad_delay(ctx, db, delay):
    ctx.define("job", lambda p: None)
    with pytest.raises(evq.InvalidTime):
        await ctx.enqueue("job", {}, delay=delay)
    assert ledger_rows(db) == (0, 0)


async def test_bad_item_in_bulk_enqueue_adds_none(ctx, db):
    ctx.define("job", lambda p: None)
    with pytest.raises(evq.InvalidPayload):
        await ctx.enqueue_many([("job", {"ok": 1}), ("job", {1, 2}), ("job", {"ok": 3})])
    assert ledger_rows(db) == (0, 0)


async def test_attrs_payload_round_trips_and_wrong_type_is_refused(ctx, clock):
    got: list[Email] = []

    @ctx.job(payload_type=Email)
    async def send(payload: Email) -> None:
        got.append(payload)

    await send.enqueue(Email("ada@example.com", "hi"))
    await send.enqueue({"to": "grace@example.com"})
    with pytest.raises(evq.InvalidPayload, match="Email"):
        await send.enqueue(["not", "an", "email"])
    with pytest.raises(evq.InvalidPayload, match="does not fit Email"):
        await send.enqueue({"wrong": "field"})
    await ctx.drain()
    assert got == [Email("ada@example.com", "hi"), Email("grace@example.com", "")]


async def test_names_are_bound_parameters_not_sql(ctx):
    name = "x'); DROP TABLE evq_jobs; --"
    with pytest.raises(evq.InvalidName):
        ctx.define(name, lambda p: None)
    ctx.define("ok", lambda p: None)
    job_id = await ctx.enqueue("ok", {"text": "'); DROP TABLE evq_jobs; --"})
    assert await kinds_of(ctx, job_id) == ["enqueue"]


async def test_durability_setting_is_checked(db):
    with pytest.raises(evq.InvalidInput, match="durability"):
        evq.Context(db, durability="sometimes")


async def test_using_a_closed_context_says_so(db):
    ctx = evq.Context(db)
    ctx.define("job", lambda p: None)
    with pytest.raises(evq.ContextClosed, match="async with"):
        await ctx.enqueue("job", {})


def test_max_attempts_must_be_positive(ctx):
    with pytest.raises(evq.InvalidInput, match="max_attempts"):
        ctx.define("job", lambda p: None, max_attempts=0)


async def test_subclasses_of_json_types_are_stored_as_plain_json(ctx):
    import collections
    import enum

    class Color(enum.StrEnum):
        RED = "red"

    class Size(enum.IntEnum):
        BIG = 3

    class Point(__import__("typing").NamedTuple):
        x: int
        y: int

    ctx.define("job", lambda p: None)
    payload = collections.OrderedDict(color=Color.RED, size=Size.BIG, at=Point(1, 2))
    job_id = await ctx.enqueue("job", payload)
    stored = (await ctx.history(job_id))[0].data["payload"]
    assert stored == {"color": "red", "size": 3, "at": [1, 2]}
    assert type(stored["color"]) is str and type(stored["size"]) is int


def nested(levels: int) -> list[object]:
    outer: list[object] = []
    inner = outer
    for _ in range(levels):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    return outer


@pytest.mark.parametrize("levels", [101, 995, 5000])
async def test_a_payload_nested_past_the_limit_is_refused(ctx, db, levels):
    ctx.define("job", lambda p: None)
    await ctx.enqueue("job", nested(evq.codec.MAX_DEPTH - 1))  # within the limit
    before = ledger_rows(db)
    with pytest.raises(evq.InvalidPayload, match="nested more than 100 levels"):
        await ctx.enqueue("job", nested(levels))
    assert ledger_rows(db) == before


async def test_a_payload_that_contains_itself_is_refused(ctx, db):
    ctx.define("job", lambda p: None)
    looped: dict[str, object] = {"a": [1, 2]}
    looped["a"].append(looped)  # type: ignore[attr-defined]
    before = ledger_rows(db)
    with pytest.raises(evq.InvalidPayload, match="contains itself"):
        await ctx.enqueue("job", looped)
    with pytest.raises(evq.InvalidPayload, match="contains itself"):
        await ctx.enqueue_many([("job", 1), ("job", looped)])
    assert ledger_rows(db) == before


@pytest.mark.parametrize("job", [5, None, b"job", ["job"]])
async def test_a_job_that_is_not_a_name_or_definition_is_refused(ctx, db, job):
    ctx.define("job", lambda p: None)
    before = ledger_rows(db)
    with pytest.raises(evq.UnknownJob, match="a job is named by its name"):
        await ctx.enqueue(job, {})
    assert ledger_rows(db) == before


@pytest.mark.parametrize("item, message", [
    (5, "5 is not a job to enqueue"),
    ([5], "a job is named by its name"),
    (("job", 1, None, None, 0, None, None, "extra"), "is not a job to enqueue"),
    ((), "is not a job to enqueue"),
])
async def test_malformed_bulk_items_are_refused_by_index(ctx, db, item, message):
    ctx.define("job", lambda p: None)
    before = ledger_rows(db)
    with pytest.raises(evq.EvqError, match="item 1 of enqueue_many") as info:
        await ctx.enqueue_many([("job", 0), item])
    assert message in str(info.value)
    with pytest.raises(evq.EvqError, match="item 1 of enqueue_many"):
        ctx.sync().enqueue_many([("job", 0), item])
    assert ledger_rows(db) == before


@pytest.mark.parametrize("options, named", [
    ({"busy_timeout": math.nan}, "busy_timeout"), ({"busy_timeout": -1}, "busy_timeout"),
    ({"busy_timeout": 0}, "busy_timeout"),
    ({"max_payload_bytes": -1}, "-1"), ({"max_payload_bytes": "x"}, "'x'"),
    ({"max_payload_bytes": 1.5}, "1.5"), ({"poll_interval": 0}, "poll_interval"),
    ({"sync_handler_threads": 0}, "sync_handler_threads"), ({"clock": 5}, "clock"),
])
def test_bad_context_settings_are_refused_before_the_file_is_touched(db, options, named):
    with pytest.raises(evq.InvalidInput, match=re.escape(named)):
        evq.Context(db, **options)
    assert not db.exists()


@pytest.mark.parametrize("make, named", [
    (lambda: evq.Fixed(-1), "-1"), (lambda: evq.Fixed(math.inf), "inf"),
    (lambda: evq.Fixed("10"), "'10'"), (lambda: evq.Exponential(base=math.nan), "nan"),
    (lambda: evq.Exponential(factor=0), "factor"),
    (lambda: evq.Exponential(maximum=-5), "-5"), (lambda: evq.Exponential(jitter="no"), "'no'"),
])
def test_bad_backoff_settings_are_refused(make, named):
    with pytest.raises(evq.InvalidInput, match=re.escape(named)):
        make()


def test_an_exponential_backoff_never_overflows():
    backoff = evq.Exponential(base=1, maximum=60, jitter=False)
    assert backoff(1) == 1 and backoff(3) == 4
    assert backoff(100_000) == 60


@pytest.mark.parametrize("options, named", [
    ({"priority": 1.5}, "1.5"), ({"priority": "high"}, "'high'"),
    ({"max_attempts": 10**30}, str(10**30)), ({"max_attempts": 2.0}, "2.0"),
    ({"backoff": 30}, "30"), ({"okay_to_run": "yes"}, "'yes'"), ({"group": 7}, "7"),
    ({"requeue_on_failure": -1}, "-1"), ({"payload_type": "Email"}, "'Email'"),
    ({"retries": 3}, "retries"), ({"lease": 0}, "0"),
])
def test_bad_definition_settings_are_refused_when_defined(ctx, options, named):
    with pytest.raises(evq.InvalidInput, match=re.escape(named)):
        ctx.define("job", lambda p: None, **options)
    assert "job" not in ctx.definitions


def test_unknown_queue_settings_are_refused(ctx):
    with pytest.raises(evq.InvalidInput, match="unknown queue option"):
        ctx.queue("mail", limit=3)
    with pytest.raises(evq.InvalidInput, match="cleanup"):
        ctx.queue("mail", cleanup=3600)


async def test_a_definition_priority_applies_to_every_enqueue(ctx):
    ctx.define("job", lambda p: None, priority=7)
    job_id = await ctx.enqueue("job", {})
    assert (await ctx.get_job(job_id)).priority == 7


@attrs.define
class Order:
    sku: str
    address: Email


async def test_a_typed_payload_with_an_unknown_field_is_refused_not_trimmed(ctx, db):
    ctx.define("order", lambda p: None, payload_type=Order)
    before = ledger_rows(db)
    with pytest.raises(evq.InvalidPayload, match="'colour'"):
        await ctx.enqueue("order", {"sku": "A1", "colour": "red",
                                    "address": {"to": "ada"}})
    with pytest.raises(evq.InvalidPayload, match="'cc'"):
        await ctx.enqueue("order", {"sku": "A1", "address": {"to": "ada", "cc": "bob"}})
    assert ledger_rows(db) == before
    job_id = await ctx.enqueue("order", {"sku": "A1", "address": {"to": "ada"}})
    assert (await ctx.history(job_id))[0].data["payload"] == {
        "sku": "A1", "address": {"to": "ada"}}
