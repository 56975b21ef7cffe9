-- evq PostgreSQL schema migration 2: upgrades a version 1 ledger to version 2.
-- Frozen: it has shipped, never edit it.
-- The current schema, readable in one piece, is ../schema.sql.
CREATE INDEX evq_jobs_by_state ON evq_jobs (lower(state), enqueue_position);

-- Run now (an operator makes a delayed job due at once): a `run_now` event.
CREATE OR REPLACE FUNCTION evq_fold() RETURNS trigger
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
