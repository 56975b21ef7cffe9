-- evq schema migration 5: upgrades a version 4 ledger to version 5.
-- Frozen: it has shipped, never edit it.
-- The current schema, readable in one piece, is ../schema.sql.
CREATE INDEX evq_jobs_by_state ON evq_jobs (state COLLATE NOCASE, enqueue_position);
