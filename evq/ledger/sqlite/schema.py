"""The ledger's schema: versioned migrations, including the triggers that define every
job transition.

Writers only append to `evq_events`. A BEFORE INSERT trigger refuses a transition when
the job is not in a state that allows it (this is the fencing of stale workers, done by
the database itself), with one statement per rule; AFTER INSERT triggers fold the event
into `evq_jobs` and the other projected tables, one CASE arm or statement per transition.
Replay inserts the same events into a fresh schema, so the write path and the replay run
the one definition. Decisions (retry or not, when) are made by the writer and
recorded in the event's data, which keeps the fold a pure function of the events.
"""

from __future__ import annotations

import re

SCHEMA_VERSION_KEY = "schema_version"

# Error texts raised by the triggers; the ledger maps them to typed errors.
STALE = "evq:stale"
NOT_PENDING = "evq:not_pending"
UNKNOWN_JOB = "evq:unknown_job"
RUNNING = "evq:running"
APPEND_ONLY = "evq:append_only"
FLOW = "evq:flow"

def _kind(*kinds: str) -> str:
    """`NEW.kind = 'a' OR NEW.kind = 'b'`: SQLite 3.40 builds an ephemeral table for
    every evaluation of `NEW.kind IN ('a', 'b')`, which costs microseconds per event."""
    return "(" + " OR ".join(f"NEW.kind = '{kind}'" for kind in kinds) + ")"


# Archiving lifts this one trigger inside its own transaction, and restores it.
EVENTS_NO_DELETE = f"""CREATE TRIGGER evq_events_no_delete BEFORE DELETE ON evq_events
BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;"""

_V1_TABLES = """
CREATE TABLE IF NOT EXISTS evq_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- position is the rowid, not AUTOINCREMENT (which writes sqlite_sequence on every commit):
-- events are never deleted, so the newest position never goes away and max(rowid) + 1
-- never hands out a position twice. Archiving must keep the newest event for that reason.
CREATE TABLE evq_events (
    position INTEGER PRIMARY KEY,
    at       REAL    NOT NULL,
    kind     TEXT    NOT NULL,
    job_id   TEXT,
    queue    TEXT,
    job      TEXT,
    attempt  INTEGER,
    worker   TEXT,
    data     TEXT    NOT NULL DEFAULT '{}',
    v        INTEGER NOT NULL DEFAULT 1
);
-- Partial: events without a job (seals, queue and schedule events) need no entry, so a
-- commit's seal touches no page the commit had not already written.
CREATE INDEX evq_events_by_job ON evq_events (job_id, position) WHERE job_id IS NOT NULL;

CREATE TABLE evq_jobs (
    id               TEXT    PRIMARY KEY,
    queue            TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    run_at           REAL    NOT NULL,
    attempt          INTEGER NOT NULL,
    errors           INTEGER NOT NULL,
    max_attempts     INTEGER,
    lease_until      REAL,
    worker           TEXT,
    enqueued_at      REAL    NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    result           TEXT,
    error            TEXT,
    idempotency_key  TEXT,
    job_group        TEXT,
    hook_state       TEXT,
    orphaned_at      REAL,
    enqueue_position INTEGER NOT NULL,
    updated_position INTEGER NOT NULL
) WITHOUT ROWID;
-- Claim order. On -priority rather than priority DESC: a DESC column makes every insert
-- into the index markedly slower.
CREATE INDEX evq_jobs_due ON evq_jobs (queue, -priority, run_at, enqueue_position)
    WHERE state = 'pending';
CREATE INDEX evq_jobs_leases ON evq_jobs (lease_until) WHERE state = 'running';
-- Running jobs by queue (concurrency limits across processes) and by group (the group lock).
CREATE INDEX evq_jobs_running_queue ON evq_jobs (queue) WHERE state = 'running';
CREATE INDEX evq_jobs_running_group ON evq_jobs (job_group)
    WHERE state = 'running' AND job_group IS NOT NULL;
-- No second live job with the same idempotency key.
CREATE UNIQUE INDEX evq_jobs_live_key ON evq_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND (state = 'pending' OR state = 'running');

-- Finished jobs by age, for cleanup.
CREATE INDEX evq_jobs_finished ON evq_jobs (queue, state, finished_at)
    WHERE finished_at IS NOT NULL;

-- Job definitions recorded with `deploy` events, so every process can see them.
CREATE TABLE evq_definitions (
    name             TEXT    PRIMARY KEY,
    queue            TEXT    NOT NULL,
    data             TEXT    NOT NULL,
    updated_position INTEGER NOT NULL
) WITHOUT ROWID;

-- Repeating jobs: when each is due next (moved on by `schedule` events).
CREATE TABLE evq_schedules (
    name             TEXT    PRIMARY KEY,
    spec             TEXT    NOT NULL,
    next_at          REAL    NOT NULL,
    updated_position INTEGER NOT NULL
) WITHOUT ROWID;

-- Coordination, not history (not derived from events, not replayed): who leads the
-- orchestrators, and which workers are alive and what they can run.
CREATE TABLE evq_leaders (
    role        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    lease_until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE evq_workers (
    name      TEXT PRIMARY KEY,
    jobs      TEXT NOT NULL,
    last_seen REAL NOT NULL
) WITHOUT ROWID;
-- Durable event handlers: how far each has got, and which consumer holds it now.
CREATE TABLE evq_cursors (
    name        TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL,
    holder      TEXT,
    lease_until REAL,
    updated_at  REAL    NOT NULL
) WITHOUT ROWID;

-- Queues whose state the ledger holds (pause and resume are events).
CREATE TABLE evq_queues (
    name             TEXT    PRIMARY KEY,
    paused           INTEGER NOT NULL,
    updated_position INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Each rule's refusal condition, written once. Version 1 gave each its own trigger;
# version 2 makes each a statement of one guard trigger.
_UNCLAIMABLE = """NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'pending' AND attempt + 1 = NEW.attempt)"""
_NOT_HELD = """NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND worker IS NEW.worker)"""
_NOT_RESCUABLE = """NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND (lease_until <= NEW.at
               OR json_extract(NEW.data, '$.reason') <> 'lease_expired'))"""
_NOT_EXPIRABLE = """NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt)"""
_HOOK_NOT_FREE = """NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id
          AND CASE json_extract(NEW.data, '$.status')
              WHEN 'started' THEN hook_state = 'due'
                                  OR (hook_state = 'running' AND lease_until <= NEW.at)
              ELSE hook_state = 'running' AND worker IS NEW.worker END)"""
_SCHEDULE_FIRED = """EXISTS (
        SELECT 1 FROM evq_schedules WHERE name = NEW.job
          AND next_at IS NOT json_extract(NEW.data, '$.due_at'))"""


def _admin_rules(cancellable: str) -> str:
    """Cancel takes a job in one of the `cancellable` states; delete: by the handler
    holding the attempt, or by anyone when the job is not running."""
    return f"""
    SELECT RAISE(ABORT, '{UNKNOWN_JOB}')
    WHERE {_kind("cancel", "delete")}
      AND NOT EXISTS (SELECT 1 FROM evq_jobs WHERE id = NEW.job_id);
    SELECT RAISE(ABORT, '{NOT_PENDING}')
    WHERE NEW.kind = 'cancel' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND ({cancellable}));
    SELECT RAISE(ABORT, '{STALE}')
    WHERE NEW.kind = 'delete' AND NEW.attempt IS NOT NULL AND {_NOT_HELD};
    SELECT RAISE(ABORT, '{RUNNING}')
    WHERE NEW.kind = 'delete' AND NEW.attempt IS NULL AND EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND state = 'running');"""


def _own_trigger(name: str, kinds: str, refused: str) -> str:
    """A version 1 guard: one rule in a trigger of its own."""
    return (f"CREATE TRIGGER evq_guard_{name} BEFORE INSERT ON evq_events\n"
            f"WHEN {kinds} AND {refused}\nBEGIN SELECT RAISE(ABORT, '{STALE}'); END;")


_V1_GUARDS = f"""
CREATE TRIGGER evq_events_no_update BEFORE UPDATE ON evq_events
BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;

{EVENTS_NO_DELETE}

-- Which transitions are allowed: one trigger per rule, each behind a WHEN on the kind so
-- that an event pays only for the rules that concern it.

-- A claim takes a pending job and opens its next attempt: nobody else holds it then.
{_own_trigger("claim", "NEW.kind = 'dequeue'", _UNCLAIMABLE)}

-- Only the holder of the current attempt may report on it.
{_own_trigger("holder", _kind("run", "heartbeat", "success", "error", "fail", "requeue",
                               "defer"), _NOT_HELD)}

-- A lease may only be rescued once it has run out.
{_own_trigger("rescue", "NEW.kind = 'rescue'", _NOT_RESCUABLE)}

-- Expiry closes an attempt that has just errored or been rescued, in the same commit.
{_own_trigger("expire", "NEW.kind = 'expire'", _NOT_EXPIRABLE)}

-- The exhausted-attempts hook: started once it is due (or its runner's lease ran out),
-- then done or failed by that runner only.
{_own_trigger("hook", "NEW.kind = 'hook'", _HOOK_NOT_FREE)}

-- A repeating job fires once per due time: the event names the due time it fires for,
-- which must be the one the ledger expects (or the schedule is new).
{_own_trigger("schedule", _kind("schedule", "schedule_orphan"), _SCHEDULE_FIRED)}

-- Cancel takes a job that has not ended: pending, or running (its worker is asked to
-- stop, and its own report is then refused).
CREATE TRIGGER evq_guard_admin BEFORE INSERT ON evq_events
WHEN {_kind("cancel", "delete")}
BEGIN{_admin_rules("state = 'pending' OR state = 'running'")}
END;
"""

# What each kind of event does to the current state: the fold, defined once. One trigger
# per transition, each behind a WHEN on the kind: a statement inside a shared trigger
# would open its table and indexes for every event, even when its kind does not match.
_TRANSITIONS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("enqueue", ("enqueue",), """
    INSERT INTO evq_jobs (id, queue, name, state, priority, run_at, attempt, errors,
        max_attempts, enqueued_at, idempotency_key, job_group, enqueue_position,
        updated_position)
    VALUES (NEW.job_id, NEW.queue, NEW.job, 'pending',
        json_extract(NEW.data, '$.priority'), json_extract(NEW.data, '$.run_at'), 0, 0,
        json_extract(NEW.data, '$.max_attempts'), NEW.at,
        json_extract(NEW.data, '$.key'), json_extract(NEW.data, '$.group'),
        NEW.position, NEW.position);"""),
    # A claim writes dequeue and run together, at one instant: dequeue opens the attempt
    # and stamps its start; run changes nothing more (its guard still applies).
    ("dequeue", ("dequeue",), """
    UPDATE evq_jobs SET state = 'running', attempt = NEW.attempt, worker = NEW.worker,
        lease_until = json_extract(NEW.data, '$.lease_until'), started_at = NEW.at,
        orphaned_at = NULL, updated_position = NEW.position
    WHERE id = NEW.job_id;"""),
    ("heartbeat", ("heartbeat",), """
    UPDATE evq_jobs SET lease_until = json_extract(NEW.data, '$.lease_until'),
        updated_position = NEW.position
    WHERE id = NEW.job_id;"""),
    ("success", ("success",), """
    UPDATE evq_jobs SET state = 'succeeded', result = NEW.data -> '$.result',
        lease_until = NULL, finished_at = NEW.at, updated_position = NEW.position
    WHERE id = NEW.job_id;"""),
    # error and rescue count a failed attempt; with retry_at the job waits for its next
    # try, without it the job stays closed until the expire or fail of the same commit.
    ("failure", ("error", "rescue"), """
    UPDATE evq_jobs SET errors = errors + 1, error = NEW.data -> '$.error',
        state = CASE WHEN json_extract(NEW.data, '$.retry_at') IS NULL THEN state
                     ELSE 'pending' END,
        run_at = coalesce(json_extract(NEW.data, '$.retry_at'), run_at),
        lease_until = NULL, updated_position = NEW.position
    WHERE id = NEW.job_id;"""),
    ("requeue", ("requeue", "defer"), """
    UPDATE evq_jobs SET state = 'pending', run_at = json_extract(NEW.data, '$.run_at'),
        lease_until = NULL, updated_position = NEW.position
    WHERE id = NEW.job_id;"""),
    ("close", ("expire", "fail", "cancel"), """
    UPDATE evq_jobs SET
        state = CASE NEW.kind WHEN 'expire' THEN 'expired' WHEN 'fail' THEN 'failed'
                ELSE 'cancelled' END,
        error = coalesce(NEW.data -> '$.error', error),
        hook_state = CASE WHEN json_extract(NEW.data, '$.hook') IS NOT NULL THEN 'due' END,
        lease_until = NULL, finished_at = NEW.at, updated_position = NEW.position
    WHERE id = NEW.job_id;"""),
    ("hook", ("hook",), """
    UPDATE evq_jobs SET
        hook_state = CASE json_extract(NEW.data, '$.status') WHEN 'started' THEN 'running'
                     ELSE json_extract(NEW.data, '$.status') END,
        worker = NEW.worker, lease_until = json_extract(NEW.data, '$.lease_until'),
        updated_position = NEW.position
    WHERE id = NEW.job_id;"""),
    ("orphan", ("orphan",), """
    UPDATE evq_jobs SET orphaned_at = NEW.at, updated_position = NEW.position
    WHERE id = NEW.job_id;"""),
    ("delete", ("delete",), """
    DELETE FROM evq_jobs WHERE id = NEW.job_id;"""),
    ("deploy", ("deploy",), """
    INSERT OR REPLACE INTO evq_definitions (name, queue, data, updated_position)
    VALUES (NEW.job, NEW.queue, NEW.data, NEW.position);"""),
    ("schedule", ("schedule", "schedule_orphan"), """
    INSERT OR REPLACE INTO evq_schedules (name, spec, next_at, updated_position)
    VALUES (NEW.job, json_extract(NEW.data, '$.spec'), json_extract(NEW.data, '$.next_at'),
            NEW.position);"""),
    ("pause", ("pause", "resume"), """
    INSERT OR REPLACE INTO evq_queues (name, paused, updated_position)
    VALUES (NEW.queue, NEW.kind = 'pause', NEW.position);"""),
)

_V1_FOLD = "\n".join(
    f"CREATE TRIGGER evq_fold_{name} AFTER INSERT ON evq_events WHEN {_kind(*kinds)}\n"
    f"BEGIN{body}\nEND;\n"
    for name, kinds, body in _TRANSITIONS
)

# Version 2: flows. A parent job waits (state `waiting`) for its children; each edge is a
# row of evq_dependencies, opened by the parent's `wait` event and settled by `child`
# events; `ready` makes the parent pending once nothing is left to wait for, and a `fail`
# without an attempt fails a waiting parent because of a child. The writer decides each
# of these (see ledger/sqlite/flows.py) and the events record the decision.
_V2_FLOWS = f"""
ALTER TABLE evq_jobs ADD COLUMN parent_id TEXT;
ALTER TABLE evq_jobs ADD COLUMN children INTEGER NOT NULL DEFAULT 0;
ALTER TABLE evq_jobs ADD COLUMN blocked_by TEXT;

-- One row per parent -> child edge. state: open, succeeded, failed (blocks the parent),
-- ignored, removed, replaced (by a retry of the child). The child's result or error is
-- copied here, so the parent can read it even after cleanup removed the child.
CREATE TABLE evq_dependencies (
    parent_id        TEXT    NOT NULL,
    child_id         TEXT    NOT NULL,
    child_name       TEXT    NOT NULL,
    child_queue      TEXT    NOT NULL,
    on_failure       TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    result           TEXT,
    error            TEXT,
    opened_position  INTEGER NOT NULL,
    rank             INTEGER NOT NULL,
    updated_position INTEGER NOT NULL,
    PRIMARY KEY (parent_id, child_id)
) WITHOUT ROWID;
CREATE INDEX evq_dependencies_by_child ON evq_dependencies (child_id);
CREATE INDEX evq_jobs_parent ON evq_jobs (parent_id) WHERE parent_id IS NOT NULL;

-- A waiting parent is live too: its idempotency key stays taken.
DROP INDEX evq_jobs_live_key;
CREATE UNIQUE INDEX evq_jobs_live_key ON evq_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL
      AND (state = 'pending' OR state = 'running' OR state = 'waiting');

-- Fewer triggers: SQLite runs every trigger on the table as a sub-program for every
-- event, matching or not (about 0.25 us each), so version 2 defines the rules in one
-- guard trigger and the job-row transitions in one fold; each rule and each transition
-- still appears once, as a statement or a CASE arm behind its kind.
DROP TRIGGER evq_guard_claim;
DROP TRIGGER evq_guard_holder;
DROP TRIGGER evq_guard_rescue;
DROP TRIGGER evq_guard_expire;
DROP TRIGGER evq_guard_hook;
DROP TRIGGER evq_guard_schedule;
DROP TRIGGER evq_guard_admin;
DROP TRIGGER evq_fold_dequeue;
DROP TRIGGER evq_fold_heartbeat;
DROP TRIGGER evq_fold_success;
DROP TRIGGER evq_fold_failure;
DROP TRIGGER evq_fold_requeue;
DROP TRIGGER evq_fold_close;
DROP TRIGGER evq_fold_hook;
DROP TRIGGER evq_fold_orphan;
DROP TRIGGER evq_fold_delete;

-- Which transitions are allowed, one statement per rule (a statement whose kind does not
-- match stops at that comparison, before reading any table).
CREATE TRIGGER evq_guard BEFORE INSERT ON evq_events
WHEN NEW.kind <> 'enqueue' AND NEW.kind <> 'seal'
BEGIN
    -- A claim takes a pending job and opens its next attempt: nobody else holds it then.
    SELECT RAISE(ABORT, '{STALE}') WHERE NEW.kind = 'dequeue' AND {_UNCLAIMABLE};
    -- Only the holder of the current attempt may report on it. (A fail without an
    -- attempt is a waiting parent failed because of a child: see below.)
    SELECT RAISE(ABORT, '{STALE}')
    WHERE ({_kind("run", "heartbeat", "success", "error", "requeue", "defer")}
           OR (NEW.kind = 'fail' AND NEW.attempt IS NOT NULL)) AND {_NOT_HELD};
    SELECT RAISE(ABORT, '{STALE}')
    WHERE NEW.kind = 'fail' AND NEW.attempt IS NULL AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND state = 'waiting');
    -- A lease may only be rescued once it has run out.
    SELECT RAISE(ABORT, '{STALE}') WHERE NEW.kind = 'rescue' AND {_NOT_RESCUABLE};
    -- Expiry closes an attempt that has just errored or been rescued, in the same commit.
    SELECT RAISE(ABORT, '{STALE}') WHERE NEW.kind = 'expire' AND {_NOT_EXPIRABLE};
    -- The exhausted-attempts hook: started once it is due (or its runner's lease ran
    -- out), then done or failed by that runner only.
    SELECT RAISE(ABORT, '{STALE}') WHERE NEW.kind = 'hook' AND {_HOOK_NOT_FREE};
    -- A repeating job fires once per due time: the event names the due time it fires
    -- for, which must be the one the ledger expects (or the schedule is new).
    SELECT RAISE(ABORT, '{STALE}')
    WHERE {_kind("schedule", "schedule_orphan")} AND {_SCHEDULE_FIRED};
    -- Cancel takes a job that has not ended: pending, waiting, or running (its worker is
    -- asked to stop, and its own report is then refused).{_admin_rules(
        "state = 'pending' OR state = 'running' OR state = 'waiting'")}
    -- A parent takes children only before it starts; each child exists, has not ended,
    -- is not the parent and has no other parent. (Cycles through grandparents are
    -- refused by the writer: a trigger cannot walk the tree.)
    SELECT RAISE(ABORT, '{NOT_PENDING}') WHERE NEW.kind = 'wait' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id
          AND (state = 'pending' OR state = 'waiting'));
    SELECT RAISE(ABORT, '{FLOW}') WHERE NEW.kind = 'wait'
      AND coalesce(json_array_length(NEW.data, '$.children'), 0) = 0;
    SELECT RAISE(ABORT, '{FLOW}') WHERE NEW.kind = 'wait' AND EXISTS (
        SELECT 1 FROM json_each(NEW.data, '$.children') AS c
        LEFT JOIN evq_jobs AS j ON j.id = json_extract(c.value, '$.id')
        WHERE j.id IS NULL OR j.id = NEW.job_id OR j.parent_id IS NOT NULL
           OR NOT (j.state = 'pending' OR j.state = 'running' OR j.state = 'waiting'));
    -- A child settles an open edge once; a failed one can still be replaced (the child
    -- was retried) or removed (the child was deleted).
    SELECT RAISE(ABORT, '{STALE}') WHERE NEW.kind = 'child' AND NOT EXISTS (
        SELECT 1 FROM evq_dependencies
        WHERE parent_id = NEW.job_id AND child_id = json_extract(NEW.data, '$.child')
          AND (state = 'open'
               OR (state = 'failed' AND (json_extract(NEW.data, '$.outcome') = 'replaced'
                                         OR json_extract(NEW.data, '$.outcome') = 'removed'))));
    -- A parent is ready once no edge is open or failed.
    SELECT RAISE(ABORT, '{STALE}') WHERE NEW.kind = 'ready' AND (
        NOT EXISTS (SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND state = 'waiting')
        OR EXISTS (SELECT 1 FROM evq_dependencies WHERE parent_id = NEW.job_id
                     AND (state = 'open' OR state = 'failed')));
END;

-- What each kind does to the job's row, one CASE arm per transition and column (SQLite
-- computes every SET expression from the row as it was). A claim writes dequeue and
-- run together: dequeue opens the attempt and stamps its start; run changes nothing.
-- error and rescue count a failed attempt; with retry_at the job waits for its next try,
-- without it the job stays closed until the expire or fail of the same commit.
CREATE TRIGGER evq_fold_job AFTER INSERT ON evq_events
WHEN {_kind("dequeue", "heartbeat", "success", "error", "rescue", "requeue", "defer",
            "expire", "fail", "cancel", "hook", "orphan", "ready")}
BEGIN
    UPDATE evq_jobs SET
        state = CASE NEW.kind
            WHEN 'dequeue' THEN 'running'
            WHEN 'success' THEN 'succeeded'
            WHEN 'error' THEN iif(json_extract(NEW.data, '$.retry_at') IS NULL, state,
                                  'pending')
            WHEN 'rescue' THEN iif(json_extract(NEW.data, '$.retry_at') IS NULL, state,
                                   'pending')
            WHEN 'requeue' THEN 'pending' WHEN 'defer' THEN 'pending'
            WHEN 'ready' THEN 'pending'
            WHEN 'expire' THEN 'expired' WHEN 'fail' THEN 'failed'
            WHEN 'cancel' THEN 'cancelled'
            ELSE state END,
        attempt = iif(NEW.kind = 'dequeue', NEW.attempt, attempt),
        worker = iif(NEW.kind = 'dequeue' OR NEW.kind = 'hook', NEW.worker, worker),
        lease_until = CASE NEW.kind
            WHEN 'dequeue' THEN json_extract(NEW.data, '$.lease_until')
            WHEN 'heartbeat' THEN json_extract(NEW.data, '$.lease_until')
            WHEN 'hook' THEN json_extract(NEW.data, '$.lease_until')
            WHEN 'orphan' THEN lease_until
            WHEN 'ready' THEN lease_until
            ELSE NULL END,
        started_at = iif(NEW.kind = 'dequeue', NEW.at, started_at),
        orphaned_at = CASE NEW.kind WHEN 'dequeue' THEN NULL WHEN 'orphan' THEN NEW.at
                      ELSE orphaned_at END,
        result = iif(NEW.kind = 'success', NEW.data -> '$.result', result),
        errors = iif(NEW.kind = 'error' OR NEW.kind = 'rescue', errors + 1, errors),
        error = CASE NEW.kind
            WHEN 'error' THEN NEW.data -> '$.error'
            WHEN 'rescue' THEN NEW.data -> '$.error'
            WHEN 'expire' THEN coalesce(NEW.data -> '$.error', error)
            WHEN 'fail' THEN coalesce(NEW.data -> '$.error', error)
            WHEN 'cancel' THEN coalesce(NEW.data -> '$.error', error)
            ELSE error END,
        run_at = CASE NEW.kind
            WHEN 'error' THEN coalesce(json_extract(NEW.data, '$.retry_at'), run_at)
            WHEN 'rescue' THEN coalesce(json_extract(NEW.data, '$.retry_at'), run_at)
            WHEN 'requeue' THEN json_extract(NEW.data, '$.run_at')
            WHEN 'defer' THEN json_extract(NEW.data, '$.run_at')
            WHEN 'ready' THEN json_extract(NEW.data, '$.run_at')
            ELSE run_at END,
        finished_at = iif({_kind("success", "expire", "fail", "cancel")}, NEW.at,
                          finished_at),
        hook_state = CASE NEW.kind
            WHEN 'expire' THEN iif(json_extract(NEW.data, '$.hook') IS NULL, NULL, 'due')
            WHEN 'fail' THEN iif(json_extract(NEW.data, '$.hook') IS NULL, NULL, 'due')
            WHEN 'cancel' THEN iif(json_extract(NEW.data, '$.hook') IS NULL, NULL, 'due')
            WHEN 'hook' THEN iif(json_extract(NEW.data, '$.status') = 'started', 'running',
                                 json_extract(NEW.data, '$.status'))
            ELSE hook_state END,
        updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_wait AFTER INSERT ON evq_events WHEN NEW.kind = 'wait'
BEGIN
    INSERT INTO evq_dependencies (parent_id, child_id, child_name, child_queue,
        on_failure, state, opened_position, rank, updated_position)
    SELECT NEW.job_id, j.id, j.name, j.queue, json_extract(c.value, '$.on_failure'),
        'open', NEW.position, c.key, NEW.position
    FROM json_each(NEW.data, '$.children') AS c
    JOIN evq_jobs AS j ON j.id = json_extract(c.value, '$.id');
    UPDATE evq_jobs SET parent_id = NEW.job_id
    WHERE id IN (SELECT json_extract(value, '$.id') FROM json_each(NEW.data, '$.children'));
    UPDATE evq_jobs SET state = 'waiting',
        children = children + json_array_length(NEW.data, '$.children'),
        updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_child AFTER INSERT ON evq_events WHEN NEW.kind = 'child'
BEGIN
    UPDATE evq_dependencies SET state = json_extract(NEW.data, '$.outcome'),
        result = NEW.data -> '$.result', error = NEW.data -> '$.error',
        updated_position = NEW.position
    WHERE parent_id = NEW.job_id AND child_id = json_extract(NEW.data, '$.child');
    UPDATE evq_jobs SET blocked_by = (
            SELECT min(child_id) FROM evq_dependencies
            WHERE parent_id = NEW.job_id AND state = 'failed'),
        updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

-- A deleted job leaves the current state; a deleted parent takes its edges with it, and
-- its children no longer name it: nothing in the current state depends on a deleted
-- job's events, so they can be archived.
CREATE TRIGGER evq_fold_delete AFTER INSERT ON evq_events WHEN NEW.kind = 'delete'
BEGIN
    DELETE FROM evq_jobs WHERE id = NEW.job_id;
    DELETE FROM evq_dependencies WHERE parent_id = NEW.job_id;
    UPDATE evq_jobs SET parent_id = NULL WHERE parent_id = NEW.job_id;
END;
"""

# Version 3: a job's enqueue event is found through its job, not through
# evq_events_by_job: that index entry was a B-tree page of its own in every enqueue's
# commit. A live job names its enqueue event (enqueue_position); a deleted one leaves a
# row in evq_deleted_jobs, written by the delete fold, so its whole history can still be
# read. Archiving a job's events removes that row too.
_V3_ENQUEUE_BY_JOB = """
CREATE TABLE evq_deleted_jobs (
    id               TEXT    PRIMARY KEY,
    enqueue_position INTEGER NOT NULL,
    deleted_position INTEGER NOT NULL
) WITHOUT ROWID;
-- Jobs already deleted: exactly the rows the delete fold below would have written.
INSERT INTO evq_deleted_jobs (id, enqueue_position, deleted_position)
SELECT e.job_id, e.position, d.position
FROM evq_events AS e JOIN evq_events AS d ON d.job_id = e.job_id AND d.kind = 'delete'
WHERE e.kind = 'enqueue' AND NOT EXISTS (SELECT 1 FROM evq_jobs AS j WHERE j.id = e.job_id);

DROP INDEX evq_events_by_job;
CREATE INDEX evq_events_by_job ON evq_events (job_id, position)
    WHERE job_id IS NOT NULL AND kind <> 'enqueue';

DROP TRIGGER evq_fold_delete;
CREATE TRIGGER evq_fold_delete AFTER INSERT ON evq_events WHEN NEW.kind = 'delete'
BEGIN
    INSERT OR REPLACE INTO evq_deleted_jobs (id, enqueue_position, deleted_position)
    SELECT id, enqueue_position, NEW.position FROM evq_jobs WHERE id = NEW.job_id;
    DELETE FROM evq_jobs WHERE id = NEW.job_id;
    DELETE FROM evq_dependencies WHERE parent_id = NEW.job_id;
    UPDATE evq_jobs SET parent_id = NULL WHERE parent_id = NEW.job_id;
END;
"""


# Version 4: a defer is not a run, and a hook's runner renews its lease.
# - A job whose definition has `okay_to_run` is claimed with a `dequeue` alone; its `run`
#   follows only once okay_to_run agreed. A `defer` carries `attempt_before`, the attempt
#   the job had before that claim, and puts it back: no attempt is used. (Defers written
#   before version 4 have no `attempt_before` and replay as they were.)
# - `hook` with status `renewed`: the runner of an exhausted-attempts hook extends its
#   lease (`lease_until`) while the hook runs, so a slow hook is not started twice.
_V4_DEFER_AND_HOOKS = f"""
DROP TRIGGER evq_fold_job;
CREATE TRIGGER evq_fold_job AFTER INSERT ON evq_events
WHEN {_kind("dequeue", "heartbeat", "success", "error", "rescue", "requeue", "defer",
            "expire", "fail", "cancel", "hook", "orphan", "ready")}
BEGIN
    UPDATE evq_jobs SET
        state = CASE NEW.kind
            WHEN 'dequeue' THEN 'running'
            WHEN 'success' THEN 'succeeded'
            WHEN 'error' THEN iif(json_extract(NEW.data, '$.retry_at') IS NULL, state,
                                  'pending')
            WHEN 'rescue' THEN iif(json_extract(NEW.data, '$.retry_at') IS NULL, state,
                                   'pending')
            WHEN 'requeue' THEN 'pending' WHEN 'defer' THEN 'pending'
            WHEN 'ready' THEN 'pending'
            WHEN 'expire' THEN 'expired' WHEN 'fail' THEN 'failed'
            WHEN 'cancel' THEN 'cancelled'
            ELSE state END,
        attempt = CASE NEW.kind
            WHEN 'dequeue' THEN NEW.attempt
            WHEN 'defer' THEN coalesce(json_extract(NEW.data, '$.attempt_before'), attempt)
            ELSE attempt END,
        worker = iif(NEW.kind = 'dequeue' OR NEW.kind = 'hook', NEW.worker, worker),
        lease_until = CASE NEW.kind
            WHEN 'dequeue' THEN json_extract(NEW.data, '$.lease_until')
            WHEN 'heartbeat' THEN json_extract(NEW.data, '$.lease_until')
            WHEN 'hook' THEN json_extract(NEW.data, '$.lease_until')
            WHEN 'orphan' THEN lease_until
            WHEN 'ready' THEN lease_until
            ELSE NULL END,
        started_at = iif(NEW.kind = 'dequeue', NEW.at, started_at),
        orphaned_at = CASE NEW.kind WHEN 'dequeue' THEN NULL WHEN 'orphan' THEN NEW.at
                      ELSE orphaned_at END,
        result = iif(NEW.kind = 'success', NEW.data -> '$.result', result),
        errors = iif(NEW.kind = 'error' OR NEW.kind = 'rescue', errors + 1, errors),
        error = CASE NEW.kind
            WHEN 'error' THEN NEW.data -> '$.error'
            WHEN 'rescue' THEN NEW.data -> '$.error'
            WHEN 'expire' THEN coalesce(NEW.data -> '$.error', error)
            WHEN 'fail' THEN coalesce(NEW.data -> '$.error', error)
            WHEN 'cancel' THEN coalesce(NEW.data -> '$.error', error)
            ELSE error END,
        run_at = CASE NEW.kind
            WHEN 'error' THEN coalesce(json_extract(NEW.data, '$.retry_at'), run_at)
            WHEN 'rescue' THEN coalesce(json_extract(NEW.data, '$.retry_at'), run_at)
            WHEN 'requeue' THEN json_extract(NEW.data, '$.run_at')
            WHEN 'defer' THEN json_extract(NEW.data, '$.run_at')
            WHEN 'ready' THEN json_extract(NEW.data, '$.run_at')
            ELSE run_at END,
        finished_at = iif({_kind("success", "expire", "fail", "cancel")}, NEW.at,
                          finished_at),
        hook_state = CASE NEW.kind
            WHEN 'expire' THEN iif(json_extract(NEW.data, '$.hook') IS NULL, NULL, 'due')
            WHEN 'fail' THEN iif(json_extract(NEW.data, '$.hook') IS NULL, NULL, 'due')
            WHEN 'cancel' THEN iif(json_extract(NEW.data, '$.hook') IS NULL, NULL, 'due')
            WHEN 'hook' THEN iif(json_extract(NEW.data, '$.status') = 'started'
                                 OR json_extract(NEW.data, '$.status') = 'renewed', 'running',
                                 json_extract(NEW.data, '$.status'))
            ELSE hook_state END,
        updated_position = NEW.position
    WHERE id = NEW.job_id;
END;
"""

# Version 4: hooks to run are found through an index, since workers look for them
# (hooks made due by other processes, and leases of hook runners that died) while they
# serve, not only when they start.
_V4_HOOKS = """
CREATE INDEX evq_jobs_hooks ON evq_jobs (lease_until)
    WHERE hook_state = 'due' OR hook_state = 'running';
"""

# Version 4: the registry of live workers says where each runs (host and process id), so
# a worker taking a name can tell whether the previous holder of that name is gone.
_V4_WORKERS = """
ALTER TABLE evq_workers ADD COLUMN host TEXT;
ALTER TABLE evq_workers ADD COLUMN pid INTEGER;
"""

# Version 4: archiving keeps each removed event's own hash (seals.event_hash), so the
# scheme-2 seals that cover it can be recomputed without the archive file. Written in the
# archive's transaction, one row per event it removed, with the position of its `archive`
# event; append-only like the events.
_V4_ARCHIVED_HASHES = f"""
CREATE TABLE evq_archived (
    position         INTEGER PRIMARY KEY,
    hash             TEXT    NOT NULL,
    archive_position INTEGER NOT NULL
);
CREATE INDEX evq_archived_by_archive ON evq_archived (archive_position);
CREATE TRIGGER evq_archived_no_update BEFORE UPDATE ON evq_archived
BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;
CREATE TRIGGER evq_archived_no_delete BEFORE DELETE ON evq_archived
BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;
"""

# Each entry upgrades the schema by one version; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (_V1_TABLES + _V1_GUARDS + _V1_FOLD, _V2_FLOWS,
                               _V3_ENQUEUE_BY_JOB,
                               _V4_DEFER_AND_HOOKS + _V4_HOOKS + _V4_WORKERS + _V4_ARCHIVED_HASHES)

LATEST_VERSION = len(MIGRATIONS)

# Every table the migrations create (none drops one): a ledger missing any is damaged.
TABLES = frozenset(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", "".join(MIGRATIONS)))


def schema_sql() -> str:
    """The whole schema as one SQL script, as `evq schema` prints it."""
    parts = [f"-- evq schema, migration {i + 1}\n{sql.strip()}\n"
             for i, sql in enumerate(MIGRATIONS)]
    parts.append(
        f"INSERT OR REPLACE INTO evq_meta (key, value) VALUES "
        f"('{SCHEMA_VERSION_KEY}', '{LATEST_VERSION}');\n"
    )
    return "\n".join(parts)
