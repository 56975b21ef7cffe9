-- evq PostgreSQL schema migration 2: upgrades a version 1 ledger to version 2.
-- Frozen: it has shipped, never edit it.
-- The current schema, readable in one piece, is ../schema.sql.
CREATE INDEX evq_jobs_by_state ON evq_jobs (state, enqueue_position);
