-- evq's ledger schema for PostgreSQL: the current version, in one piece.
--
-- It is the SQLite ledger's schema (evq/ledger/sqlite/schema.sql, which explains every
-- rule) written for PostgreSQL, with the same tables, columns in the same order, the
-- same indexes and the same transitions; what is particular to PostgreSQL is said here.
--
-- A ledger lives in a PostgreSQL schema of its own (`evq` unless the URL names another).
-- The engine creates that schema and runs this script once, in one transaction, with
-- search_path set to it: every object below is unqualified. Every function is declared
-- with `SET search_path FROM CURRENT`, so its triggers find the ledger's tables when they
-- fire from a connection whose search_path points elsewhere (a user's own connection).
-- PostgreSQL ledgers number their schema versions on their own, from 1; the script ends
-- by stamping its version in evq_meta. An older ledger is upgraded instead by the frozen
-- scripts migrations/NNNN.sql, which must leave it with the same schema as this one.
--
-- Writers only append to evq_events. position has no default and no sequence: the engine
-- supplies it, taking the next number under an advisory lock held until its transaction
-- commits, so positions are gap-free and in commit order, which a sequence cannot give
-- (it hands numbers out in call order and loses the ones of a rolled-back transaction).
--
-- One AFTER INSERT row trigger (evq_fold) does what SQLite's evq_guard and evq_fold_*
-- triggers do, for each event in turn: first the guard refuses a transition the job's
-- state does not allow (RAISE EXCEPTION with the same texts, 'evq:stale', ..., which the
-- engine maps to typed errors), then the fold projects the event into the current state.
-- The guard is not a BEFORE trigger because PostgreSQL runs a statement's AFTER row
-- triggers only once all its rows are in: in a statement appending several events (a
-- claim's dequeue and run, a batch of enqueues), a BEFORE guard would judge every event
-- against the state before the first one was folded. In the AFTER trigger, event n is
-- judged against the state events 1..n-1 left, as SQLite, which runs each row's triggers
-- before the next row, does. (Neither the guard nor the fold reads evq_events, so it
-- makes no difference that the event's own row is already there; a refusal aborts the
-- statement, row and all.) A guard rule and the fold's change of the same row are often
-- one UPDATE whose WHERE is the rule (no row updated: refused).
--
-- SQLite runs its fold triggers in reverse order of creation, but no kind is taken by
-- two of them, so the order never mattered; here each kind is one arm of a CASE.
--
-- Types: INTEGER is bigint, REAL is double precision, TEXT is text; flags stay 0/1
-- integers (evq_queues.paused). Every text column has the "C" collation, so that text
-- compares and sorts by bytes as SQLite's BINARY does, whatever the database's default
-- collation. evq_events.data stays text: the hash chain hashes its exact text. The
-- triggers read it as json (not jsonb), which keeps each sub-value's text as written
-- (a job's result or error is stored as that text, as SQLite's `->` gives it).


-- === Metadata ===========================================================================

-- schema_version, and other small facts about the ledger.
CREATE TABLE IF NOT EXISTS evq_meta (
    key   text COLLATE "C" PRIMARY KEY,
    value text COLLATE "C" NOT NULL
);


-- === The log ============================================================================

-- Every change, in order; the only table writers write to.
CREATE TABLE evq_events (
    position bigint           PRIMARY KEY,
    at       double precision NOT NULL,
    kind     text COLLATE "C" NOT NULL,
    job_id   text COLLATE "C",
    queue    text COLLATE "C",
    job      text COLLATE "C",
    attempt  bigint,
    worker   text COLLATE "C",
    data     text COLLATE "C" NOT NULL DEFAULT '{}',
    v        bigint           NOT NULL DEFAULT 1
);
-- A job's events after its enqueue (a job names its enqueue event: enqueue_position).
CREATE INDEX evq_events_by_job ON evq_events (job_id, position)
    WHERE job_id IS NOT NULL AND kind <> 'enqueue';

-- Archiving keeps each removed event's own hash, with the position of its `archive`
-- event (see the SQLite schema); append-only like the events.
CREATE TABLE evq_archived (
    position         bigint           PRIMARY KEY,
    hash             text COLLATE "C" NOT NULL,
    archive_position bigint           NOT NULL
);
CREATE INDEX evq_archived_by_archive ON evq_archived (archive_position);

-- The log and the archived hashes are append-only: one function refuses every update,
-- delete and truncate of them. Archiving drops evq_events_no_delete inside its own
-- transaction and creates it again (schema.EVENTS_NO_DELETE is that statement).
CREATE FUNCTION evq_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    RAISE EXCEPTION 'evq:append_only';
END;
$$;

CREATE TRIGGER evq_events_no_update BEFORE UPDATE ON evq_events
    FOR EACH ROW EXECUTE FUNCTION evq_append_only();

CREATE TRIGGER evq_events_no_delete BEFORE DELETE ON evq_events
    FOR EACH ROW EXECUTE FUNCTION evq_append_only();

-- TRUNCATE fires no row trigger; SQLite has no way to empty a table past its triggers.
CREATE TRIGGER evq_events_no_truncate BEFORE TRUNCATE ON evq_events
    FOR EACH STATEMENT EXECUTE FUNCTION evq_append_only();

CREATE TRIGGER evq_archived_no_update BEFORE UPDATE ON evq_archived
    FOR EACH ROW EXECUTE FUNCTION evq_append_only();

CREATE TRIGGER evq_archived_no_delete BEFORE DELETE ON evq_archived
    FOR EACH ROW EXECUTE FUNCTION evq_append_only();

CREATE TRIGGER evq_archived_no_truncate BEFORE TRUNCATE ON evq_archived
    FOR EACH STATEMENT EXECUTE FUNCTION evq_append_only();


-- === The projection: current state, folded from the log by the trigger below ===========

-- One row per live job (a deleted job's row goes; see evq_deleted_jobs). The states and
-- hook states are the SQLite schema's.
CREATE TABLE evq_jobs (
    id               text COLLATE "C" PRIMARY KEY,
    queue            text COLLATE "C" NOT NULL,
    name             text COLLATE "C" NOT NULL,
    state            text COLLATE "C" NOT NULL,
    priority         bigint           NOT NULL,
    run_at           double precision NOT NULL,
    attempt          bigint           NOT NULL,
    errors           bigint           NOT NULL,
    max_attempts     bigint,
    lease_until      double precision,
    worker           text COLLATE "C",
    enqueued_at      double precision NOT NULL,
    started_at       double precision,
    finished_at      double precision,
    result           text COLLATE "C",
    error            text COLLATE "C",
    idempotency_key  text COLLATE "C",
    job_group        text COLLATE "C",
    hook_state       text COLLATE "C",
    orphaned_at      double precision,
    enqueue_position bigint           NOT NULL,
    updated_position bigint           NOT NULL,
    parent_id        text COLLATE "C",
    children         bigint           NOT NULL DEFAULT 0,
    blocked_by       text COLLATE "C"
);
-- Claim order: on -priority, as the SQLite engine's claim query orders.
CREATE INDEX evq_jobs_due ON evq_jobs (queue, (-priority), run_at, enqueue_position)
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
-- Hooks to run (due, or their runner's lease ran out).
CREATE INDEX evq_jobs_hooks ON evq_jobs (lease_until)
    WHERE hook_state = 'due' OR hook_state = 'running';
-- The jobs of a state newest first: the dashboard's lists. On lower(state), which only
-- the dashboard's queries name, so that the runtime's `state = ...` queries keep their
-- partial indexes whatever the planner's statistics say.
CREATE INDEX evq_jobs_by_state ON evq_jobs (lower(state), enqueue_position);

-- Flows: one row per parent -> child edge (states: open, succeeded, failed, ignored,
-- removed, replaced), with the child's result or error.
CREATE TABLE evq_dependencies (
    parent_id        text COLLATE "C" NOT NULL,
    child_id         text COLLATE "C" NOT NULL,
    child_name       text COLLATE "C" NOT NULL,
    child_queue      text COLLATE "C" NOT NULL,
    on_failure       text COLLATE "C" NOT NULL,
    state            text COLLATE "C" NOT NULL,
    result           text COLLATE "C",
    error            text COLLATE "C",
    opened_position  bigint           NOT NULL,
    rank             bigint           NOT NULL,
    updated_position bigint           NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX evq_dependencies_by_child ON evq_dependencies (child_id);
-- Edges not yet settled: while there are none (no flow in progress), an ending job
-- has no edge to settle, and the engine learns that from one read per transaction
-- instead of one per job.
CREATE INDEX evq_dependencies_unsettled ON evq_dependencies (parent_id)
    WHERE state = 'open' OR state = 'failed';

-- Deleted jobs: where each one's enqueue event is.
CREATE TABLE evq_deleted_jobs (
    id               text COLLATE "C" PRIMARY KEY,
    enqueue_position bigint           NOT NULL,
    deleted_position bigint           NOT NULL
);

-- Job definitions recorded with `deploy` events.
CREATE TABLE evq_definitions (
    name             text COLLATE "C" PRIMARY KEY,
    queue            text COLLATE "C" NOT NULL,
    data             text COLLATE "C" NOT NULL,
    updated_position bigint           NOT NULL
);

-- Repeating jobs: when each is due next.
CREATE TABLE evq_schedules (
    name             text COLLATE "C" PRIMARY KEY,
    spec             text COLLATE "C" NOT NULL,
    next_at          double precision NOT NULL,
    updated_position bigint           NOT NULL
);

-- Queues whose state the ledger holds (paused: 1 or 0).
CREATE TABLE evq_queues (
    name             text COLLATE "C" PRIMARY KEY,
    paused           bigint           NOT NULL,
    updated_position bigint           NOT NULL
);


-- === Coordination, not history (not derived from events, not replayed) ================

-- Who leads the orchestrators.
CREATE TABLE evq_leaders (
    role        text COLLATE "C" PRIMARY KEY,
    holder      text COLLATE "C" NOT NULL,
    lease_until double precision NOT NULL
);

-- Which workers are alive, what they can run, and where each runs.
CREATE TABLE evq_workers (
    name      text COLLATE "C" PRIMARY KEY,
    jobs      text COLLATE "C" NOT NULL,
    last_seen double precision NOT NULL,
    host      text COLLATE "C",
    pid       bigint
);

-- Durable event handlers: how far each has got, and which consumer holds it now.
CREATE TABLE evq_cursors (
    name        text COLLATE "C" PRIMARY KEY,
    position    bigint           NOT NULL,
    holder      text COLLATE "C",
    lease_until double precision,
    updated_at  double precision NOT NULL
);


-- === Each event: the guard, then the fold ==============================================

-- evq's JSON may hold the escape \u0000 (a NUL in a string: evq accepts one in payloads,
-- results and errors). PostgreSQL's json functions refuse to read any field of a
-- document that holds one anywhere (text cannot hold NUL), so the fold reads such an
-- event's data with each \u0000 escape swapped for \u007f, an escape evq's encoder never
-- writes (it writes DEL as it is), and this function swaps them back in a JSON text it
-- copies out. The pattern takes a backslash that starts an escape (one preceded by an
-- even run of backslashes), not the last one of an escaped backslash.
CREATE FUNCTION evq_nul_back(swapped text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path FROM CURRENT
AS $$
    SELECT regexp_replace(swapped, E'(?<!\\\\)((?:\\\\\\\\)*)\\\\u007f', E'\\1\\\\u0000', 'g')
$$;

-- One arm per kind. In each, the guard's rules come first, in the SQLite guard's order
-- (so a refusal has the same text), then the fold's change, which is the SQLite fold's
-- CASE arm for that kind (columns the arm leaves as they were are not named). The data
-- is parsed once, as json, by the kinds that read it:
--   json_extract(data, '$.x') is (d ->> 'x') cast to the column's type: strings come
--     unquoted, JSON null and a missing key are NULL, numbers are cast to bigint or
--     double precision (both read the shortest text Python writes to the same value);
--   data -> '$.x' is (d -> 'x')::text: the value's JSON text as written (evq writes
--     compact JSON, so it is the text SQLite gives), NULL when the key is missing and
--     the text 'null' for a JSON null, as in SQLite.
CREATE FUNCTION evq_fold() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    d          json;
    nul        boolean := false;
    listed     json;
    status     text;
    outcome    text;
    res        text;
    err        text;
    ikey       text;
    igroup     text;
    due        double precision;
    old_state  text;
    old_try    bigint;
    old_worker text;
BEGIN
    IF NEW.kind <> 'run' AND NEW.kind <> 'orphan' AND NEW.kind <> 'delete'
       AND NEW.kind <> 'deploy' AND NEW.kind <> 'pause' AND NEW.kind <> 'resume' THEN
        IF strpos(NEW.data, E'\\u0000') = 0 THEN
            d := NEW.data::json;
        ELSE
            nul := true;
            d := regexp_replace(NEW.data, E'(?<!\\\\)((?:\\\\\\\\)*)\\\\u0000',
                                E'\\1\\\\u007f', 'g')::json;
        END IF;
    END IF;

    CASE NEW.kind

    -- A new job, pending. (A key or group holding a NUL is refused when read back from
    -- its own text: PostgreSQL's text cannot hold it.)
    WHEN 'enqueue' THEN
        IF nul THEN
            ikey := evq_nul_back((d -> 'key')::text)::json #>> '{}';
            igroup := evq_nul_back((d -> 'group')::text)::json #>> '{}';
        ELSE
            ikey := d ->> 'key';
            igroup := d ->> 'group';
        END IF;
        INSERT INTO evq_jobs (id, queue, name, state, priority, run_at, attempt, errors,
            max_attempts, enqueued_at, idempotency_key, job_group, enqueue_position,
            updated_position)
        VALUES (NEW.job_id, NEW.queue, NEW.job, 'pending', (d ->> 'priority')::bigint,
            (d ->> 'run_at')::double precision, 0, 0, (d ->> 'max_attempts')::bigint,
            NEW.at, ikey, igroup, NEW.position, NEW.position);

    -- A claim takes a pending job and opens its next attempt (a run changes nothing).
    WHEN 'dequeue' THEN
        UPDATE evq_jobs SET state = 'running', attempt = NEW.attempt, worker = NEW.worker,
            lease_until = (d ->> 'lease_until')::double precision,
            started_at = NEW.at, orphaned_at = NULL, updated_position = NEW.position
        WHERE id = NEW.job_id AND state = 'pending' AND attempt + 1 = NEW.attempt;
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:stale'; END IF;

    -- Only the holder of the current attempt may report on it.
    WHEN 'run' THEN
        PERFORM FROM evq_jobs
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND worker IS NOT DISTINCT FROM NEW.worker;
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:stale'; END IF;

    WHEN 'heartbeat' THEN
        UPDATE evq_jobs SET lease_until = (d ->> 'lease_until')::double precision,
            updated_position = NEW.position
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND worker IS NOT DISTINCT FROM NEW.worker;
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:stale'; END IF;

    WHEN 'success' THEN
        res := (d -> 'result')::text;
        IF nul THEN res := evq_nul_back(res); END IF;
        UPDATE evq_jobs SET state = 'succeeded', lease_until = NULL, result = res,
            finished_at = NEW.at, updated_position = NEW.position
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND worker IS NOT DISTINCT FROM NEW.worker;
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:stale'; END IF;

    -- error and rescue count a failed attempt; with retry_at the job waits for its next
    -- try, without it the job stays as it was until the expire or fail of the commit.
    -- A rescue takes a lease only once it has run out (unless for another reason).
    WHEN 'error', 'rescue' THEN
        err := (d -> 'error')::text;
        IF nul THEN err := evq_nul_back(err); END IF;
        UPDATE evq_jobs SET
            state = CASE WHEN d ->> 'retry_at' IS NULL THEN state ELSE 'pending' END,
            lease_until = NULL, errors = errors + 1, error = err,
            run_at = coalesce((d ->> 'retry_at')::double precision, run_at),
            updated_position = NEW.position
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND CASE NEW.kind
              WHEN 'error' THEN worker IS NOT DISTINCT FROM NEW.worker
              ELSE lease_until <= NEW.at OR d ->> 'reason' <> 'lease_expired' END;
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:stale'; END IF;

    -- A requeue, or a defer (not a run: it puts back the attempt the job had before
    -- that claim, when the event carries it).
    WHEN 'requeue', 'defer' THEN
        UPDATE evq_jobs SET state = 'pending',
            attempt = CASE NEW.kind
                WHEN 'defer' THEN coalesce((d ->> 'attempt_before')::bigint, attempt)
                ELSE attempt END,
            lease_until = NULL, run_at = (d ->> 'run_at')::double precision,
            updated_position = NEW.position
        WHERE id = NEW.job_id AND state = 'running' AND attempt = NEW.attempt
          AND worker IS NOT DISTINCT FROM NEW.worker;
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:stale'; END IF;

    -- The job ends. Expiry closes an attempt that has just errored or been rescued; a
    -- fail with an attempt comes from its holder, one without from a flow (a waiting
    -- parent failed because of a child); cancel takes a job that exists and has not
    -- ended (a running one's worker is asked to stop).
    WHEN 'expire', 'fail', 'cancel' THEN
        err := (d -> 'error')::text;
        IF nul THEN err := evq_nul_back(err); END IF;
        UPDATE evq_jobs SET
            state = CASE NEW.kind WHEN 'expire' THEN 'expired' WHEN 'fail' THEN 'failed'
                    ELSE 'cancelled' END,
            lease_until = NULL, error = coalesce(err, error), finished_at = NEW.at,
            hook_state = CASE WHEN d ->> 'hook' IS NULL THEN NULL ELSE 'due' END,
            updated_position = NEW.position
        WHERE id = NEW.job_id AND CASE
              WHEN NEW.kind = 'cancel' THEN
                  state = 'pending' OR state = 'running' OR state = 'waiting'
              WHEN NEW.kind = 'fail' AND NEW.attempt IS NULL THEN state = 'waiting'
              ELSE state = 'running' AND attempt = NEW.attempt
                   AND (NEW.kind = 'expire' OR worker IS NOT DISTINCT FROM NEW.worker) END;
        IF NOT FOUND THEN
            IF NEW.kind <> 'cancel' THEN
                RAISE EXCEPTION 'evq:stale';
            ELSIF EXISTS (SELECT FROM evq_jobs WHERE id = NEW.job_id) THEN
                RAISE EXCEPTION 'evq:not_pending';
            ELSE
                RAISE EXCEPTION 'evq:unknown_job';
            END IF;
        END IF;

    -- The exhausted-attempts hook: started once due (or its runner's lease ran out),
    -- then renewed (the runner extends its lease), done or failed by that runner only.
    WHEN 'hook' THEN
        status := d ->> 'status';
        UPDATE evq_jobs SET worker = NEW.worker,
            lease_until = (d ->> 'lease_until')::double precision,
            hook_state = CASE WHEN status = 'started' OR status = 'renewed' THEN 'running'
                         ELSE status END,
            updated_position = NEW.position
        WHERE id = NEW.job_id AND CASE status
              WHEN 'started' THEN hook_state = 'due'
                                  OR (hook_state = 'running' AND lease_until <= NEW.at)
              ELSE hook_state = 'running' AND worker IS NOT DISTINCT FROM NEW.worker END;
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:stale'; END IF;

    WHEN 'orphan' THEN
        UPDATE evq_jobs SET orphaned_at = NEW.at, updated_position = NEW.position
        WHERE id = NEW.job_id;

    -- A waiting parent with no edge open or failed becomes pending.
    WHEN 'ready' THEN
        UPDATE evq_jobs SET state = 'pending', run_at = (d ->> 'run_at')::double precision,
            updated_position = NEW.position
        WHERE id = NEW.job_id AND state = 'waiting' AND NOT EXISTS (
            SELECT FROM evq_dependencies WHERE parent_id = NEW.job_id
              AND (state = 'open' OR state = 'failed'));
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:stale'; END IF;

    -- Run now: an operator makes a pending job (a delayed one) due at once.
    WHEN 'run_now' THEN
        UPDATE evq_jobs SET run_at = (d ->> 'run_at')::double precision,
            updated_position = NEW.position
        WHERE id = NEW.job_id AND state = 'pending';
        IF NOT FOUND THEN
            IF EXISTS (SELECT FROM evq_jobs WHERE id = NEW.job_id) THEN
                RAISE EXCEPTION 'evq:not_pending';
            END IF;
            RAISE EXCEPTION 'evq:unknown_job';
        END IF;

    -- A repeating job fires once per due time (the one the ledger expects, or the
    -- schedule is new); its next due time.
    WHEN 'schedule', 'schedule_orphan' THEN
        SELECT next_at INTO due FROM evq_schedules WHERE name = NEW.job;
        IF FOUND AND due IS DISTINCT FROM (d ->> 'due_at')::double precision THEN
            RAISE EXCEPTION 'evq:stale';
        END IF;
        INSERT INTO evq_schedules (name, spec, next_at, updated_position)
        VALUES (NEW.job, d ->> 'spec', (d ->> 'next_at')::double precision, NEW.position)
        ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, next_at = EXCLUDED.next_at,
            updated_position = EXCLUDED.updated_position;

    -- Delete: a job that exists, by the handler holding the attempt or by anyone when it
    -- is not running. It leaves the current state (remembered in evq_deleted_jobs); a
    -- deleted parent takes its edges with it, and its children no longer name it.
    WHEN 'delete' THEN
        SELECT state, attempt, worker INTO old_state, old_try, old_worker
        FROM evq_jobs WHERE id = NEW.job_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'evq:unknown_job';
        END IF;
        IF NEW.attempt IS NOT NULL THEN
            IF NOT (old_state = 'running' AND old_try = NEW.attempt
                    AND old_worker IS NOT DISTINCT FROM NEW.worker) THEN
                RAISE EXCEPTION 'evq:stale';
            END IF;
        ELSIF old_state = 'running' THEN
            RAISE EXCEPTION 'evq:running';
        END IF;
        INSERT INTO evq_deleted_jobs (id, enqueue_position, deleted_position)
        SELECT id, enqueue_position, NEW.position FROM evq_jobs WHERE id = NEW.job_id
        ON CONFLICT (id) DO UPDATE SET enqueue_position = EXCLUDED.enqueue_position,
            deleted_position = EXCLUDED.deleted_position;
        DELETE FROM evq_jobs WHERE id = NEW.job_id;
        DELETE FROM evq_dependencies WHERE parent_id = NEW.job_id;
        UPDATE evq_jobs SET parent_id = NULL WHERE parent_id = NEW.job_id;

    -- A parent takes children only before it starts; each child exists, has not ended,
    -- is not the parent and has no other parent. Then one open edge per child (rank: its
    -- place in the list, from 0), each child names its parent, and the parent waits.
    WHEN 'wait' THEN
        PERFORM FROM evq_jobs
        WHERE id = NEW.job_id AND (state = 'pending' OR state = 'waiting');
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:not_pending'; END IF;
        listed := d -> 'children';
        -- SQLite's json_array_length is 0 for a value that is not an array.
        IF json_typeof(listed) IS DISTINCT FROM 'array'
           OR json_array_length(listed) = 0 THEN
            RAISE EXCEPTION 'evq:flow';
        END IF;
        IF EXISTS (
            SELECT FROM json_array_elements(listed) AS c (value)
            LEFT JOIN evq_jobs AS j ON j.id = c.value ->> 'id'
            WHERE j.id IS NULL OR j.id = NEW.job_id OR j.parent_id IS NOT NULL
               OR NOT (j.state = 'pending' OR j.state = 'running' OR j.state = 'waiting'))
        THEN
            RAISE EXCEPTION 'evq:flow';
        END IF;
        INSERT INTO evq_dependencies (parent_id, child_id, child_name, child_queue,
            on_failure, state, opened_position, rank, updated_position)
        SELECT NEW.job_id, j.id, j.name, j.queue, c.value ->> 'on_failure', 'open',
            NEW.position, c.ordinality - 1, NEW.position
        FROM json_array_elements(listed) WITH ORDINALITY AS c (value, ordinality)
        JOIN evq_jobs AS j ON j.id = c.value ->> 'id';
        UPDATE evq_jobs SET parent_id = NEW.job_id
        WHERE id IN (SELECT c.value ->> 'id' FROM json_array_elements(listed) AS c (value));
        UPDATE evq_jobs SET state = 'waiting',
            children = children + json_array_length(listed),
            updated_position = NEW.position
        WHERE id = NEW.job_id;

    -- A child settles an open edge once (a failed one can still be replaced or removed),
    -- with its result or error; a failed edge blocks the parent.
    WHEN 'child' THEN
        outcome := d ->> 'outcome';
        res := (d -> 'result')::text;
        err := (d -> 'error')::text;
        IF nul THEN
            res := evq_nul_back(res);
            err := evq_nul_back(err);
        END IF;
        UPDATE evq_dependencies SET state = outcome, result = res, error = err,
            updated_position = NEW.position
        WHERE parent_id = NEW.job_id AND child_id = d ->> 'child'
          AND (state = 'open'
               OR (state = 'failed' AND (outcome = 'replaced' OR outcome = 'removed')));
        IF NOT FOUND THEN RAISE EXCEPTION 'evq:stale'; END IF;
        UPDATE evq_jobs SET blocked_by = (
                SELECT min(child_id) FROM evq_dependencies
                WHERE parent_id = NEW.job_id AND state = 'failed'),
            updated_position = NEW.position
        WHERE id = NEW.job_id;

    -- A job definition deployed.
    WHEN 'deploy' THEN
        INSERT INTO evq_definitions (name, queue, data, updated_position)
        VALUES (NEW.job, NEW.queue, NEW.data, NEW.position)
        ON CONFLICT (name) DO UPDATE SET queue = EXCLUDED.queue, data = EXCLUDED.data,
            updated_position = EXCLUDED.updated_position;

    -- A queue paused or resumed.
    WHEN 'pause', 'resume' THEN
        INSERT INTO evq_queues (name, paused, updated_position)
        VALUES (NEW.queue, CASE NEW.kind WHEN 'pause' THEN 1 ELSE 0 END, NEW.position)
        ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused,
            updated_position = EXCLUDED.updated_position;

    ELSE
        NULL;
    END CASE;
    RETURN NULL;
END;
$$;

-- Kinds that change nothing and have no rule do not call the function at all.
CREATE TRIGGER evq_fold AFTER INSERT ON evq_events
    FOR EACH ROW
    WHEN (NEW.kind <> 'seal' AND NEW.kind <> 'reject' AND NEW.kind <> 'retry'
          AND NEW.kind <> 'leader' AND NEW.kind <> 'archive')
    EXECUTE FUNCTION evq_fold();


-- === The version this script creates ===================================================
INSERT INTO evq_meta (key, value) VALUES ('schema_version', '2')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
