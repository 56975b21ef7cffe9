-- evq schema migration 1: upgrades a version 0 ledger to version 1.
-- Frozen: it has shipped, never edit it (generated once from the code that shipped it).
-- The current schema, readable in one piece, is ../schema.sql.
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

CREATE TRIGGER evq_events_no_update BEFORE UPDATE ON evq_events
BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END;

CREATE TRIGGER evq_events_no_delete BEFORE DELETE ON evq_events
BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END;

-- Which transitions are allowed: one trigger per rule, each behind a WHEN on the kind so
-- that an event pays only for the rules that concern it.

-- A claim takes a pending job and opens its next attempt: nobody else holds it then.
CREATE TRIGGER evq_guard_claim BEFORE INSERT ON evq_events
WHEN NEW.kind = 'dequeue' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'pending' AND attempt + 1 = NEW.attempt)
BEGIN SELECT RAISE(ABORT, 'evq:stale'); END;

-- Only the holder of the current attempt may report on it.
CREATE TRIGGER evq_guard_holder BEFORE INSERT ON evq_events
WHEN (NEW.kind = 'run' OR NEW.kind = 'heartbeat' OR NEW.kind = 'success' OR NEW.kind = 'error' OR NEW.kind = 'fail' OR NEW.kind = 'requeue' OR NEW.kind = 'defer') AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND worker IS NEW.worker)
BEGIN SELECT RAISE(ABORT, 'evq:stale'); END;

-- A lease may only be rescued once it has run out.
CREATE TRIGGER evq_guard_rescue BEFORE INSERT ON evq_events
WHEN NEW.kind = 'rescue' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND (lease_until <= NEW.at
               OR json_extract(NEW.data, '$.reason') <> 'lease_expired'))
BEGIN SELECT RAISE(ABORT, 'evq:stale'); END;

-- Expiry closes an attempt that has just errored or been rescued, in the same commit.
CREATE TRIGGER evq_guard_expire BEFORE INSERT ON evq_events
WHEN NEW.kind = 'expire' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt)
BEGIN SELECT RAISE(ABORT, 'evq:stale'); END;

-- The exhausted-attempts hook: started once it is due (or its runner's lease ran out),
-- then done or failed by that runner only.
CREATE TRIGGER evq_guard_hook BEFORE INSERT ON evq_events
WHEN NEW.kind = 'hook' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id
          AND CASE json_extract(NEW.data, '$.status')
              WHEN 'started' THEN hook_state = 'due'
                                  OR (hook_state = 'running' AND lease_until <= NEW.at)
              ELSE hook_state = 'running' AND worker IS NEW.worker END)
BEGIN SELECT RAISE(ABORT, 'evq:stale'); END;

-- A repeating job fires once per due time: the event names the due time it fires for,
-- which must be the one the ledger expects (or the schedule is new).
CREATE TRIGGER evq_guard_schedule BEFORE INSERT ON evq_events
WHEN (NEW.kind = 'schedule' OR NEW.kind = 'schedule_orphan') AND EXISTS (
        SELECT 1 FROM evq_schedules WHERE name = NEW.job
          AND next_at IS NOT json_extract(NEW.data, '$.due_at'))
BEGIN SELECT RAISE(ABORT, 'evq:stale'); END;

-- Cancel takes a job that has not ended: pending, or running (its worker is asked to
-- stop, and its own report is then refused).
CREATE TRIGGER evq_guard_admin BEFORE INSERT ON evq_events
WHEN (NEW.kind = 'cancel' OR NEW.kind = 'delete')
BEGIN
    SELECT RAISE(ABORT, 'evq:unknown_job')
    WHERE (NEW.kind = 'cancel' OR NEW.kind = 'delete')
      AND NOT EXISTS (SELECT 1 FROM evq_jobs WHERE id = NEW.job_id);
    SELECT RAISE(ABORT, 'evq:not_pending')
    WHERE NEW.kind = 'cancel' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND (state = 'pending' OR state = 'running'));
    SELECT RAISE(ABORT, 'evq:stale')
    WHERE NEW.kind = 'delete' AND NEW.attempt IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND worker IS NEW.worker);
    SELECT RAISE(ABORT, 'evq:running')
    WHERE NEW.kind = 'delete' AND NEW.attempt IS NULL AND EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND state = 'running');
END;
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

CREATE TRIGGER evq_fold_dequeue AFTER INSERT ON evq_events WHEN (NEW.kind = 'dequeue')
BEGIN
    UPDATE evq_jobs SET state = 'running', attempt = NEW.attempt, worker = NEW.worker,
        lease_until = json_extract(NEW.data, '$.lease_until'), started_at = NEW.at,
        orphaned_at = NULL, updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_heartbeat AFTER INSERT ON evq_events WHEN (NEW.kind = 'heartbeat')
BEGIN
    UPDATE evq_jobs SET lease_until = json_extract(NEW.data, '$.lease_until'),
        updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_success AFTER INSERT ON evq_events WHEN (NEW.kind = 'success')
BEGIN
    UPDATE evq_jobs SET state = 'succeeded', result = NEW.data -> '$.result',
        lease_until = NULL, finished_at = NEW.at, updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_failure AFTER INSERT ON evq_events WHEN (NEW.kind = 'error' OR NEW.kind = 'rescue')
BEGIN
    UPDATE evq_jobs SET errors = errors + 1, error = NEW.data -> '$.error',
        state = CASE WHEN json_extract(NEW.data, '$.retry_at') IS NULL THEN state
                     ELSE 'pending' END,
        run_at = coalesce(json_extract(NEW.data, '$.retry_at'), run_at),
        lease_until = NULL, updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_requeue AFTER INSERT ON evq_events WHEN (NEW.kind = 'requeue' OR NEW.kind = 'defer')
BEGIN
    UPDATE evq_jobs SET state = 'pending', run_at = json_extract(NEW.data, '$.run_at'),
        lease_until = NULL, updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_close AFTER INSERT ON evq_events WHEN (NEW.kind = 'expire' OR NEW.kind = 'fail' OR NEW.kind = 'cancel')
BEGIN
    UPDATE evq_jobs SET
        state = CASE NEW.kind WHEN 'expire' THEN 'expired' WHEN 'fail' THEN 'failed'
                ELSE 'cancelled' END,
        error = coalesce(NEW.data -> '$.error', error),
        hook_state = CASE WHEN json_extract(NEW.data, '$.hook') IS NOT NULL THEN 'due' END,
        lease_until = NULL, finished_at = NEW.at, updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_hook AFTER INSERT ON evq_events WHEN (NEW.kind = 'hook')
BEGIN
    UPDATE evq_jobs SET
        hook_state = CASE json_extract(NEW.data, '$.status') WHEN 'started' THEN 'running'
                     ELSE json_extract(NEW.data, '$.status') END,
        worker = NEW.worker, lease_until = json_extract(NEW.data, '$.lease_until'),
        updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_orphan AFTER INSERT ON evq_events WHEN (NEW.kind = 'orphan')
BEGIN
    UPDATE evq_jobs SET orphaned_at = NEW.at, updated_position = NEW.position
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_delete AFTER INSERT ON evq_events WHEN (NEW.kind = 'delete')
BEGIN
    DELETE FROM evq_jobs WHERE id = NEW.job_id;
END;

CREATE TRIGGER evq_fold_deploy AFTER INSERT ON evq_events WHEN (NEW.kind = 'deploy')
BEGIN
    INSERT OR REPLACE INTO evq_definitions (name, queue, data, updated_position)
    VALUES (NEW.job, NEW.queue, NEW.data, NEW.position);
END;

CREATE TRIGGER evq_fold_schedule AFTER INSERT ON evq_events WHEN (NEW.kind = 'schedule' OR NEW.kind = 'schedule_orphan')
BEGIN
    INSERT OR REPLACE INTO evq_schedules (name, spec, next_at, updated_position)
    VALUES (NEW.job, json_extract(NEW.data, '$.spec'), json_extract(NEW.data, '$.next_at'),
            NEW.position);
END;

CREATE TRIGGER evq_fold_pause AFTER INSERT ON evq_events WHEN (NEW.kind = 'pause' OR NEW.kind = 'resume')
BEGIN
    INSERT OR REPLACE INTO evq_queues (name, paused, updated_position)
    VALUES (NEW.queue, NEW.kind = 'pause', NEW.position);
END;
