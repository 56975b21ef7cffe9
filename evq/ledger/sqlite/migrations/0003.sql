-- evq schema migration 3: upgrades a version 2 ledger to version 3.
-- Frozen: it has shipped, never edit it (generated once from the code that shipped it).
-- The current schema, readable in one piece, is ../schema.sql.
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
