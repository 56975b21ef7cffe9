-- evq schema migration 2: upgrades a version 1 ledger to version 2.
-- Frozen: it has shipped, never edit it (generated once from the code that shipped it).
-- The current schema, readable in one piece, is ../schema.sql.
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
    SELECT RAISE(ABORT, 'evq:stale') WHERE NEW.kind = 'dequeue' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'pending' AND attempt + 1 = NEW.attempt);
    -- Only the holder of the current attempt may report on it. (A fail without an
    -- attempt is a waiting parent failed because of a child: see below.)
    SELECT RAISE(ABORT, 'evq:stale')
    WHERE ((NEW.kind = 'run' OR NEW.kind = 'heartbeat' OR NEW.kind = 'success' OR NEW.kind = 'error' OR NEW.kind = 'requeue' OR NEW.kind = 'defer')
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
    -- out), then done or failed by that runner only.
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
    -- Cancel takes a job that has not ended: pending, waiting, or running (its worker is
    -- asked to stop, and its own report is then refused).
    SELECT RAISE(ABORT, 'evq:unknown_job')
    WHERE (NEW.kind = 'cancel' OR NEW.kind = 'delete')
      AND NOT EXISTS (SELECT 1 FROM evq_jobs WHERE id = NEW.job_id);
    SELECT RAISE(ABORT, 'evq:not_pending')
    WHERE NEW.kind = 'cancel' AND NOT EXISTS (
        SELECT 1 FROM evq_jobs WHERE id = NEW.job_id AND (state = 'pending' OR state = 'running' OR state = 'waiting'));
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

-- What each kind does to the job's row, one CASE arm per transition and column (SQLite
-- computes every SET expression from the row as it was). A claim writes dequeue and
-- run together: dequeue opens the attempt and stamps its start; run changes nothing.
-- error and rescue count a failed attempt; with retry_at the job waits for its next try,
-- without it the job stays closed until the expire or fail of the same commit.
CREATE TRIGGER evq_fold_job AFTER INSERT ON evq_events
WHEN (NEW.kind = 'dequeue' OR NEW.kind = 'heartbeat' OR NEW.kind = 'success' OR NEW.kind = 'error' OR NEW.kind = 'rescue' OR NEW.kind = 'requeue' OR NEW.kind = 'defer' OR NEW.kind = 'expire' OR NEW.kind = 'fail' OR NEW.kind = 'cancel' OR NEW.kind = 'hook' OR NEW.kind = 'orphan' OR NEW.kind = 'ready')
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
        finished_at = iif((NEW.kind = 'success' OR NEW.kind = 'expire' OR NEW.kind = 'fail' OR NEW.kind = 'cancel'), NEW.at,
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
