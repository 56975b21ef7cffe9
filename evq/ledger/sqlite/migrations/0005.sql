-- evq schema migration 5: upgrades a version 4 ledger to version 5.
-- Frozen: it has shipped, never edit it.
-- The current schema, readable in one piece, is ../schema.sql.
CREATE INDEX evq_jobs_by_state ON evq_jobs (state COLLATE NOCASE, enqueue_position);

-- Run now (an operator makes a delayed job due at once): a `run_now` event.
DROP TRIGGER evq_guard;
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

DROP TRIGGER evq_fold_job;
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
