-- evq schema migration 4: upgrades a version 3 ledger to version 4.
-- Frozen: it has shipped, never edit it (generated once from the code that shipped it).
-- The current schema, readable in one piece, is ../schema.sql.
DROP TRIGGER evq_fold_job;
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
        finished_at = iif((NEW.kind = 'success' OR NEW.kind = 'expire' OR NEW.kind = 'fail' OR NEW.kind = 'cancel'), NEW.at,
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

CREATE INDEX evq_jobs_hooks ON evq_jobs (lease_until)
    WHERE hook_state = 'due' OR hook_state = 'running';

ALTER TABLE evq_workers ADD COLUMN host TEXT;
ALTER TABLE evq_workers ADD COLUMN pid INTEGER;

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
