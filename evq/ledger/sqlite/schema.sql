-- evq's ledger schema for SQLite: the current version, in one piece.
--
-- A new ledger is created by running this script; it ends by stamping its version in
-- evq_meta. A ledger written by an older evq is upgraded instead by the frozen scripts in
-- migrations/ (0001.sql, 0002.sql, ...), one version each, from the version it has.
-- Changing the schema therefore means two edits: this file, and a new migration (with the
-- version below raised to its number). tests/unit/test_schema.py checks that both roads
-- lead to the same sqlite_master, so the two cannot drift apart.
--
-- Writers only append to evq_events. A BEFORE INSERT trigger (evq_guard) refuses a
-- transition the job's state does not allow: the fencing of stale workers is done by the
-- database itself. AFTER INSERT triggers (evq_fold_*) fold each event into the projected
-- tables. Replay inserts the same events into a fresh ledger, so the write path and
-- replay run the one definition. Decisions (retry or not, and when) are made by the
-- writer and recorded in the event's data, which keeps the fold a pure function of the
-- events. The trigger errors ('evq:stale', ...) are mapped to typed errors by tx.py.


-- === Metadata ===========================================================================

-- schema_version, and other small facts about the file.
CREATE TABLE IF NOT EXISTS evq_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);


-- === The log ============================================================================

-- Every change, in order; the only table writers write to.
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
-- A job's events after its enqueue. Partial: events without a job (seals, queue and
-- schedule events) need no entry, so a commit's seal touches no page the commit had not
-- already written; nor do enqueues (a job names its enqueue event: enqueue_position),
-- whose entry was a B-tree page of its own in every enqueue's commit.
CREATE INDEX evq_events_by_job ON evq_events (job_id, position)
    WHERE job_id IS NOT NULL AND kind <> 'enqueue';

-- The log is append-only. Archiving lifts evq_events_no_delete inside its own
-- transaction and restores it (schema.EVENTS_NO_DELETE is this statement).
CREATE TRIGGER evq_events_no_update BEFORE UPDATE ON evq_events
BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END;

CREATE TRIGGER evq_events_no_delete BEFORE DELETE ON evq_events
BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END;

-- Archiving keeps each removed event's own hash (seals.event_hash), so the seals that
-- cover it can be recomputed without the archive file. Written in the archive's
-- transaction, one row per event it removed, with the position of its `archive` event;
-- append-only like the events.
CREATE TABLE evq_archived (
    position         INTEGER PRIMARY KEY,
    hash             TEXT    NOT NULL,
    archive_position INTEGER NOT NULL
);
CREATE INDEX evq_archived_by_archive ON evq_archived (archive_position);

CREATE TRIGGER evq_archived_no_update BEFORE UPDATE ON evq_archived
BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END;

CREATE TRIGGER evq_archived_no_delete BEFORE DELETE ON evq_archived
BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END;


-- === The projection: current state, folded from the log by the triggers below ==========

-- One row per live job (a deleted job's row goes; see evq_deleted_jobs).
-- state: pending, running, waiting (a parent waiting for its children), succeeded,
-- failed, expired, cancelled. hook_state: the exhausted-attempts hook (due, running,
-- done, failed). The last three columns are the job's place in a flow.
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
    updated_position INTEGER NOT NULL,
    parent_id        TEXT,
    children         INTEGER NOT NULL DEFAULT 0,
    blocked_by       TEXT
) WITHOUT ROWID;
-- (Indexes are listed in the order a migrated ledger has them, which is the order the
-- query planner considers them in.)
-- Claim order. On -priority rather than priority DESC: a DESC column makes every insert
-- into the index markedly slower.
CREATE INDEX evq_jobs_due ON evq_jobs (queue, -priority, run_at, enqueue_position)
    WHERE state = 'pending';
CREATE INDEX evq_jobs_leases ON evq_jobs (lease_until) WHERE state = 'running';
-- Running jobs by queue (concurrency limits across processes) and by group (the group lock).
CREATE INDEX evq_jobs_running_queue ON evq_jobs (queue) WHERE state = 'running';
CREATE INDEX evq_jobs_running_group ON evq_jobs (job_group)
    WHERE state = 'running' AND job_group IS NOT NULL;
-- Finished jobs by age, for cleanup.
CREATE INDEX evq_jobs_finished ON evq_jobs (queue, state, finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX evq_jobs_parent ON evq_jobs (parent_id) WHERE parent_id IS NOT NULL;
-- No second live job with the same idempotency key (a waiting parent is live too).
CREATE UNIQUE INDEX evq_jobs_live_key ON evq_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL
      AND (state = 'pending' OR state = 'running' OR state = 'waiting');
-- Hooks to run: workers look for them (hooks made due by other processes, and leases of
-- hook runners that died) while they serve, not only when they start.
CREATE INDEX evq_jobs_hooks ON evq_jobs (lease_until)
    WHERE hook_state = 'due' OR hook_state = 'running';
-- The jobs of a state newest first (the dashboard's lists, a page at a time; every
-- state's ranges merged give all jobs newest first). NOCASE, which states (lowercase
-- words) do not feel, keeps the planner from taking it for the runtime's `state = ...`
-- queries, which their partial indexes serve better: only a query that asks for NOCASE
-- reads it.
CREATE INDEX evq_jobs_by_state ON evq_jobs (state COLLATE NOCASE, enqueue_position);

-- Flows: one row per parent -> child edge, opened by the parent's `wait` event and
-- settled by `child` events. state: open, succeeded, failed (blocks the parent),
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

-- Deleted jobs: where each one's enqueue event is (a live job names it in evq_jobs), so
-- its whole history can still be read. Written by the delete fold; archiving a job's
-- events removes its row.
CREATE TABLE evq_deleted_jobs (
    id               TEXT    PRIMARY KEY,
    enqueue_position INTEGER NOT NULL,
    deleted_position INTEGER NOT NULL
) WITHOUT ROWID;

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

-- Queues whose state the ledger holds (pause and resume are events).
CREATE TABLE evq_queues (
    name             TEXT    PRIMARY KEY,
    paused           INTEGER NOT NULL,
    updated_position INTEGER NOT NULL
) WITHOUT ROWID;


-- === Coordination, not history (not derived from events, not replayed) ================

-- Who leads the orchestrators.
CREATE TABLE evq_leaders (
    role        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    lease_until REAL NOT NULL
) WITHOUT ROWID;

-- Which workers are alive, what they can run, and where each runs (host and process
-- id), so a worker taking a name can tell whether the previous holder of it is gone.
CREATE TABLE evq_workers (
    name      TEXT PRIMARY KEY,
    jobs      TEXT NOT NULL,
    last_seen REAL NOT NULL,
    host      TEXT,
    pid       INTEGER
) WITHOUT ROWID;

-- Durable event handlers: how far each has got, and which consumer holds it now.
CREATE TABLE evq_cursors (
    name        TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL,
    holder      TEXT,
    lease_until REAL,
    updated_at  REAL    NOT NULL
) WITHOUT ROWID;


-- === Which transitions are allowed: the guard ==========================================

-- One trigger, one statement per rule: SQLite runs every trigger on the table as a
-- sub-program for every event, matching or not, so fewer triggers cost less; a statement
-- whose kind does not match stops at that comparison, before reading any table.
-- Kinds are tested with `NEW.kind = 'a' OR NEW.kind = 'b'`: SQLite builds an ephemeral
-- table for every evaluation of `NEW.kind IN ('a', 'b')`, which costs microseconds.
CREATE TRIGGER evq_guard BEFORE INSERT ON evq_events
WHEN NEW.kind <> 'enqueue' AND NEW.kind <> 'seal'
BEGIN
    -- A claim takes a pending job and opens its next attempt: nobody else holds it then.
    SELECT RAISE(ABORT, 'evq:stale') WHERE NEW.kind = 'dequeue' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'pending' AND attempt + 1 = NEW.attempt);
    -- Only the holder of the current attempt may report on it. (A fail without an
    -- attempt is a waiting parent failed because of a child: see the next rule.)
    SELECT RAISE(ABORT, 'evq:stale')
    WHERE ((NEW.kind = 'run' OR NEW.kind = 'heartbeat' OR NEW.kind = 'success'
            OR NEW.kind = 'error' OR NEW.kind = 'requeue' OR NEW.kind = 'defer')
           OR (NEW.kind = 'fail' AND NEW.attempt IS NOT NULL)) AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND worker IS NEW.worker);
    SELECT RAISE(ABORT, 'evq:stale')
    WHERE NEW.kind = 'fail' AND NEW.attempt IS NULL AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND state = 'waiting');
    -- A lease may only be rescued once it has run out.
    SELECT RAISE(ABORT, 'evq:stale') WHERE NEW.kind = 'rescue' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND (lease_until <= NEW.at
               OR json_extract(NEW.data, '$.reason') <> 'lease_expired'));
    -- Expiry closes an attempt that has just errored or been rescued, in the same commit.
    SELECT RAISE(ABORT, 'evq:stale') WHERE NEW.kind = 'expire' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt);
    -- The exhausted-attempts hook: started once it is due (or its runner's lease ran
    -- out), then renewed, done or failed by that runner only.
    SELECT RAISE(ABORT, 'evq:stale') WHERE NEW.kind = 'hook' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id
          AND CASE json_extract(NEW.data, '$.status')
              WHEN 'started' THEN hook_state = 'due'
                                  OR (hook_state = 'running' AND lease_until <= NEW.at)
              ELSE hook_state = 'running' AND worker IS NEW.worker END);
    -- A repeating job fires once per due time: the event names the due time it fires
    -- for, which must be the one the ledger expects (or the schedule is new).
    SELECT RAISE(ABORT, 'evq:stale')
    WHERE (NEW.kind = 'schedule' OR NEW.kind = 'schedule_orphan') AND EXISTS (
        SELECT 1 FROM evq_schedules WHERE name = NEW.job
          AND next_at IS NOT json_extract(NEW.data, '$.due_at'));
    -- Cancel and delete name a job that exists. Cancel takes a job that has not ended:
    -- pending, waiting, or running (its worker is asked to stop, and its own report is
    -- then refused). Delete: by the handler holding the attempt, or by anyone when the
    -- job is not running.
    SELECT RAISE(ABORT, 'evq:unknown_job')
    WHERE (NEW.kind = 'cancel' OR NEW.kind = 'delete' OR NEW.kind = 'run_now')
      AND NOT EXISTS (SELECT 1 FROM evq_jobs WHERE id = NEW.job_id);
    -- Run now: an operator makes a pending job (a delayed one) due at once.
    SELECT RAISE(ABORT, 'evq:not_pending')
    WHERE NEW.kind = 'run_now' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND state = 'pending');
    SELECT RAISE(ABORT, 'evq:not_pending')
    WHERE NEW.kind = 'cancel' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id
          AND (state = 'pending' OR state = 'running' OR state = 'waiting'));
    SELECT RAISE(ABORT, 'evq:stale')
    WHERE NEW.kind = 'delete' AND NEW.attempt IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND worker IS NEW.worker);
    SELECT RAISE(ABORT, 'evq:running')
    WHERE NEW.kind = 'delete' AND NEW.attempt IS NULL AND EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND state = 'running');
    -- A parent takes children only before it starts; each child exists, has not ended,
    -- is not the parent and has no other parent. (Cycles through grandparents are
    -- refused by the writer: a trigger cannot walk the tree.)
    SELECT RAISE(ABORT, 'evq:not_pending') WHERE NEW.kind = 'wait' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id
          AND (state = 'pending' OR state = 'waiting'));
    SELECT RAISE(ABORT, 'evq:flow') WHERE NEW.kind = 'wait'
      AND coalesce(json_array_length(NEW.data, '$.children'), 0) = 0;
    SELECT RAISE(ABORT, 'evq:flow') WHERE NEW.kind = 'wait' AND EXISTS (
        SELECT 1 FROM json_each(NEW.data, '$.children') AS c
        LEFT JOIN evq_jobs AS j ON j.id = json_extract(c.value, '$.id')
        WHERE j.id IS NULL OR j.id = NEW.job_id OR j.parent_id IS NOT NULL
           OR NOT (j.state = 'pending' OR j.state = 'running' OR j.state = 'waiting'));
    -- A child settles an open edge once; a failed one can still be replaced (the child
    -- was retried) or removed (the child was deleted).
    SELECT RAISE(ABORT, 'evq:stale') WHERE NEW.kind = 'child' AND NOT EXISTS (
        SELECT 1 FROM evq_dependencies
        WHERE parent_id = NEW.job_id AND child_id = json_extract(NEW.data, '$.child')
          AND (state = 'open'
               OR (state = 'failed' AND (json_extract(NEW.data, '$.outcome') = 'replaced'
                                         OR json_extract(NEW.data, '$.outcome') = 'removed'))));
    -- A parent is ready once no edge is open or failed.
    SELECT RAISE(ABORT, 'evq:stale') WHERE NEW.kind = 'ready' AND (
        NOT EXISTS (SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND state = 'waiting')
        OR EXISTS (SELECT 1 FROM evq_dependencies WHERE parent_id = NEW.job_id
                     AND (state = 'open' OR state = 'failed')));
END;


-- === What each event does to the current state: the fold ===============================

-- Each fold trigger takes its own kinds (no kind is in two), so their order is free;
-- kinds no trigger takes (run, seal, reject, retry, leader, archive) change nothing.
-- wait, child, ready and a fail without an attempt are flows: the writer decides each
-- (see flows.py) and the event records the decision.

-- What each kind does to the job's row, one CASE arm per transition and column (SQLite
-- computes every SET expression from the row as it was).
-- - A claim writes dequeue and run together: dequeue opens the attempt and stamps its
--   start; run changes nothing. (A job whose definition has okay_to_run is claimed with
--   a dequeue alone; its run follows once okay_to_run agreed.)
-- - error and rescue count a failed attempt; with retry_at the job waits for its next
--   try, without it the job stays closed until the expire or fail of the same commit.
-- - A defer is not a run: it carries attempt_before, the attempt the job had before
--   that claim, and puts it back. (Defers written before schema 4 have none.)
-- - hook: started, then renewed (the runner extends its lease while the hook runs, so a
--   slow hook is not started twice), then done or failed.
-- - ready: a waiting parent whose children are all settled becomes pending.
-- - run_now: a pending job's run_at moves to now (an operator's "run now").
CREATE TRIGGER evq_fold_job AFTER INSERT ON evq_events
WHEN (NEW.kind = 'dequeue' OR NEW.kind = 'heartbeat' OR NEW.kind = 'success'
      OR NEW.kind = 'error' OR NEW.kind = 'rescue' OR NEW.kind = 'requeue'
      OR NEW.kind = 'defer' OR NEW.kind = 'expire' OR NEW.kind = 'fail'
      OR NEW.kind = 'cancel' OR NEW.kind = 'hook' OR NEW.kind = 'orphan'
      OR NEW.kind = 'ready' OR NEW.kind = 'run_now')
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
            WHEN 'run_now' THEN lease_until
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
            WHEN 'run_now' THEN json_extract(NEW.data, '$.run_at')
            ELSE run_at END,
        finished_at = iif((NEW.kind = 'success' OR NEW.kind = 'expire' OR NEW.kind = 'fail'
                           OR NEW.kind = 'cancel'), NEW.at, finished_at),
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

-- A new job, pending.
CREATE TRIGGER evq_fold_enqueue AFTER INSERT ON evq_events WHEN (NEW.kind = 'enqueue')
BEGIN
    INSERT INTO evq_jobs (id, queue, name, state, priority, run_at, attempt, errors,
        max_attempts, enqueued_at, idempotency_key, job_group, enqueue_position,
        updated_position)
    VALUES (NEW.job_id, NEW.queue, NEW.job, 'pending',
        json_extract(NEW.data, '$.priority'), json_extract(NEW.data, '$.run_at'), 0, 0,
        json_extract(NEW.data, '$.max_attempts'), NEW.at,
        json_extract(NEW.data, '$.key'), json_extract(NEW.data, '$.group'),
        NEW.position, NEW.position);
END;

-- A parent starts waiting for its children: one open edge per child, each child names
-- its parent.
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

-- A child settles its edge (with its result or error); a failed edge blocks the parent.
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

-- A deleted job leaves the current state (remembered in evq_deleted_jobs); a deleted
-- parent takes its edges with it, and its children no longer name it: nothing in the
-- current state depends on a deleted job's events, so they can be archived.
CREATE TRIGGER evq_fold_delete AFTER INSERT ON evq_events WHEN NEW.kind = 'delete'
BEGIN
    INSERT OR REPLACE INTO evq_deleted_jobs (id, enqueue_position, deleted_position)
    SELECT id, enqueue_position, NEW.position FROM evq_jobs WHERE id = NEW.job_id;
    DELETE FROM evq_jobs WHERE id = NEW.job_id;
    DELETE FROM evq_dependencies WHERE parent_id = NEW.job_id;
    UPDATE evq_jobs SET parent_id = NULL WHERE parent_id = NEW.job_id;
END;

-- A job definition deployed.
CREATE TRIGGER evq_fold_deploy AFTER INSERT ON evq_events WHEN (NEW.kind = 'deploy')
BEGIN
    INSERT OR REPLACE INTO evq_definitions (name, queue, data, updated_position)
    VALUES (NEW.job, NEW.queue, NEW.data, NEW.position);
END;

-- A repeating job fired (or was orphaned): its next due time.
CREATE TRIGGER evq_fold_schedule AFTER INSERT ON evq_events
WHEN (NEW.kind = 'schedule' OR NEW.kind = 'schedule_orphan')
BEGIN
    INSERT OR REPLACE INTO evq_schedules (name, spec, next_at, updated_position)
    VALUES (NEW.job, json_extract(NEW.data, '$.spec'), json_extract(NEW.data, '$.next_at'),
            NEW.position);
END;

-- A queue paused or resumed.
CREATE TRIGGER evq_fold_pause AFTER INSERT ON evq_events
WHEN (NEW.kind = 'pause' OR NEW.kind = 'resume')
BEGIN
    INSERT OR REPLACE INTO evq_queues (name, paused, updated_position)
    VALUES (NEW.queue, NEW.kind = 'pause', NEW.position);
END;


-- === The version this script creates: the number of the last migration ===============
INSERT OR REPLACE INTO evq_meta (key, value) VALUES ('schema_version', '5');
