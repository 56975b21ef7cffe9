"""The PostgreSQL text of every statement the SQLite engine names in
`evq.ledger.sqlite.sql`, under the same names.

Each statement here means what its SQLite namesake means and takes exactly the same
parameter tuple (count, order, Python values), so that code written as
`conn.execute(sql.NAME, params)` runs on either engine. Parameters are psycopg's `%s`; a
value SQLite reuses by number (`?1` twice) is bound once in a CTE or derived table and
read from there. Tables are unqualified: the connection's search_path names the ledger's
schema. The few exceptions are marked where they are:

- statements that insert events without a position in SQLite take the position(s) first
  here (PostgreSQL has no rowid to number them: the engine hands positions out);
- statements that read an attached ledger (`source.` in SQLite) name it `{source}`, a
  schema the engine formats in (quoted) before running them;
- SQLite facts with no PostgreSQL counterpart (file pragmas, checkpoints, ATTACH) are
  None: the engine does not run them.
"""

from __future__ import annotations

from ..sqlite import sql as _sqlite

# Column lists and lookups are the SQLite module's own (the tables have the same columns).
CHILD_COLUMNS = _sqlite.CHILD_COLUMNS
JOB_COLUMNS = _sqlite.JOB_COLUMNS
JOB_FIELD = _sqlite.JOB_FIELD
EVENT_COLUMNS = _sqlite.EVENT_COLUMNS
PROJECTIONS = _sqlite.PROJECTIONS

# A JSON array parameter (text, as SQLite's json_each(?) takes it) as an array of its
# elements' text, evaluated once per statement.
_LIST = "ARRAY(SELECT json_array_elements_text(%s::json))"
# The same for an array of integers (event positions).
_INT_LIST = "ARRAY(SELECT json_array_elements_text(%s::json)::bigint)"

# A limit parameter: negative is no limit in SQLite and an error in PostgreSQL, so it
# becomes NULL (no limit).
_LIMIT = "LIMIT nullif(greatest(%s::bigint, -1), -1)"

# The advisory lock that orders a ledger's appends, keyed as url.Target.lock_key keys it
# (the first 8 bytes of sha256('evq:append:<schema>'), signed big-endian), computed from
# the schema the connection is on.
_APPEND_LOCK = (
    "pg_advisory_xact_lock(('x' || left(encode(sha256(convert_to("
    "'evq:append:' || current_schema(), 'UTF8')), 'hex'), 16))::bit(64)::bigint)"
)

# --- pragmas -------------------------------------------------------------------------
# Page size, journal and WAL settings, the page cache, mmap and temp storage are SQLite
# file and process settings; PostgreSQL's server owns all of these, and always enforces
# foreign keys. Nothing to run per connection.
CONNECTION_PRAGMAS = None
# SQLite's busy timeout is how long a statement waits for a lock: PostgreSQL's
# lock_timeout (a LockNotAvailable when it runs out). 0 means "do not wait" in SQLite but
# "wait forever" in PostgreSQL, hence at least 1 ms. A session setting; like any SET it
# is undone if the transaction it was made in rolls back.
SET_BUSY_TIMEOUT = "SELECT set_config('lock_timeout', greatest({ms:d}, 1)::text, false)"
GET_BUSY_TIMEOUT = "SELECT setting::bigint FROM pg_settings WHERE name = 'lock_timeout'"
# Both durabilities need 'on' (the server's default) on PostgreSQL: 'off' loses the
# last commits if the server process crashes, which PROCESS promises to survive, and
# there is no level that writes without flushing. So this template has lost SQLite's
# {level} placeholder; `.format(level=...)` still works (it ignores the unused level).
SET_SYNCHRONOUS = "SET synchronous_commit = on"
# A number that changes when another connection commits to the ledger (SQLite's
# data_version): the newest position, which every commit that changes the log moves (it
# ends with a seal). Unlike data_version it also moves with this connection's own
# commits, and not with commits that touch only cursors, leaders or workers.
DATA_VERSION = "SELECT coalesce(max(position), 0) FROM evq_events"
# The ledger is not a file (the engine names it by its URL).
DATABASE_LIST = None
# The server checkpoints on its own (and CHECKPOINT needs a privileged role).
CHECKPOINT_TRUNCATE = None

# --- transactions --------------------------------------------------------------------
# A write transaction holding the ledger's append lock from its start (as BEGIN
# IMMEDIATE takes SQLite's write lock). Two statements: psycopg sends a text without
# parameters as one simple query. If the lock times out, the transaction is open and
# aborted: the caller must roll back.
BEGIN_IMMEDIATE = f"BEGIN; SELECT {_APPEND_LOCK}"
# A read transaction: one snapshot for all its statements, as every SQLite transaction
# reads.
BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"
SAVEPOINT = "SAVEPOINT evq_op"
RELEASE = "RELEASE evq_op"
ROLLBACK_TO = "ROLLBACK TO evq_op"

# --- schema bookkeeping --------------------------------------------------------------
# Tables of the schema the connection is on (current_schema(): the first schema of the
# search_path that exists; NULL, so no rows, when none does).
_TABLES_HERE = (
    "FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
)
META_TABLE_EXISTS = f"SELECT 1 {_TABLES_HERE} AND c.relname = 'evq_meta'"
EVQ_TABLES = f"SELECT c.relname::text {_TABLES_HERE} AND starts_with(c.relname::text, 'evq_')"
GET_META = "SELECT value FROM evq_meta WHERE key = %s"
SET_META = (
    "INSERT INTO evq_meta (key, value) VALUES (%s, %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

# --- the one way in --------------------------------------------------------------------
# Deviation: the position comes FIRST, then SQLite's parameters (at, kind, job_id, queue,
# job, attempt, worker, data). SQLite numbers the event itself (rowid: max + 1, read back
# as lastrowid); PostgreSQL has no such number, and the engine hands positions out under
# its append lock.
APPEND_EVENT = (
    "INSERT INTO evq_events (position, at, kind, job_id, queue, job, attempt, worker, data) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)

NEWEST_AT = "SELECT at FROM evq_events ORDER BY position DESC LIMIT 1"
# Takes the append lock now, inside a transaction that may have only read so far (held
# to its end).
TAKE_WRITE_LOCK = f"SELECT {_APPEND_LOCK}"

# --- seals ---------------------------------------------------------------------------
LAST_SEAL = (
    "SELECT position, data FROM evq_events WHERE kind = 'seal' ORDER BY position DESC LIMIT 1"
)
APPEND_SEAL = (
    "INSERT INTO evq_events (position, at, kind, data, v) VALUES (%s, %s, 'seal', %s, %s)"
)
# One job's enqueue event and its seal, only if the position before them is still the
# newest. The first row's casts type the VALUES list.
APPEND_ENQUEUE_SEALED_IF_NEWEST = """
INSERT INTO evq_events (position, at, kind, job_id, queue, job, attempt, worker, data, v)
SELECT * FROM (VALUES
    (%s::bigint, %s::double precision, 'enqueue', %s::text, %s::text, %s::text,
     NULL::bigint, NULL::text, %s::text, 1::bigint),
    (%s, %s, 'seal', NULL, NULL, NULL, NULL, NULL, %s, %s)) AS pair
WHERE (SELECT max(position) FROM evq_events) = %s
"""
# SQLite's integrity checks of its file have no PostgreSQL counterpart (the server keeps
# its own storage sound; amcheck is an optional extension).
INTEGRITY_CHECK = None
TABLE_QUICK_CHECK = None
# (Ordered as names, whose collation is "C": by bytes, as SQLite orders them.)
TABLE_NAMES = f"SELECT c.relname::text {_TABLES_HERE} ORDER BY c.relname"
# Disabled triggers do not guard, so they are not counted.
GUARD_TRIGGERS = """
SELECT t.tgname::text FROM pg_catalog.pg_trigger AS t
JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND NOT t.tgisinternal AND t.tgenabled <> 'D'
  AND t.tgname IN ('evq_events_no_update', 'evq_events_no_delete',
                   'evq_archived_no_update', 'evq_archived_no_delete')
"""

# --- claiming ------------------------------------------------------------------------
CLAIM_DUE = f"""
SELECT j.id, j.queue, j.name, j.attempt, j.errors, j.max_attempts, j.priority,
       j.run_at, j.enqueued_at, e.data, j.enqueue_position, j.job_group, j.children
FROM evq_jobs AS j
JOIN evq_events AS e ON e.position = j.enqueue_position
WHERE j.state = 'pending' AND j.queue = %s AND j.run_at <= %s
  AND j.name = ANY ({_LIST})
  AND (j.job_group IS NULL OR NOT EXISTS (
        SELECT 1 FROM evq_jobs AS r
        WHERE r.job_group = j.job_group AND r.state = 'running'))
ORDER BY -j.priority, j.run_at, j.enqueue_position
{_LIMIT}
"""
RUNNING_IN_QUEUE = "SELECT count(*) FROM evq_jobs WHERE state = 'running' AND queue = %s"
PAUSED_QUEUES = "SELECT name FROM evq_queues WHERE paused <> 0"
LIVE_JOB_WITH_KEY = (
    "SELECT id FROM evq_jobs WHERE idempotency_key = %s "
    "AND (state = 'pending' OR state = 'running' OR state = 'waiting')"
)

NEXT_DUE = f"""
SELECT min(run_at) FROM evq_jobs
WHERE state = 'pending'
  AND queue = ANY ({_LIST})
  AND name = ANY ({_LIST})
"""

# --- leases --------------------------------------------------------------------------
EXPIRED_LEASES = f"""
SELECT id, queue, name, attempt, errors, max_attempts, worker, lease_until
FROM evq_jobs WHERE state = 'running' AND lease_until <= %s
ORDER BY lease_until {_LIMIT}
"""
LEASE_OF = "SELECT state, attempt, lease_until FROM evq_jobs WHERE id = %s"
RUNNING_UNDER_WORKER = f"""
SELECT id, queue, name, attempt, run_at FROM evq_jobs
WHERE state = 'running' AND worker = %s AND queue = ANY ({_LIST})
"""
CANCELLED_AMONG = f"SELECT id FROM evq_jobs WHERE state = 'cancelled' AND id = ANY ({_LIST})"
NEXT_LEASE_EXPIRY = "SELECT min(lease_until) FROM evq_jobs WHERE state = 'running'"

# --- flows ---------------------------------------------------------------------------
CHILDREN_OF = (f"SELECT {CHILD_COLUMNS} FROM evq_dependencies WHERE parent_id = %s "
               "ORDER BY opened_position, rank")
OPEN_EDGE_OF_CHILD = """
SELECT d.parent_id, d.on_failure, p.queue, p.name, p.run_at
FROM evq_dependencies AS d JOIN evq_jobs AS p ON p.id = d.parent_id
WHERE d.child_id = %s AND d.state = 'open' AND p.state = 'waiting'
"""
FAILED_EDGE_OF_CHILD = """
SELECT d.parent_id, d.on_failure, p.queue, p.name, p.run_at
FROM evq_dependencies AS d JOIN evq_jobs AS p ON p.id = d.parent_id
WHERE d.child_id = %s AND d.state = 'failed' AND p.state = 'waiting'
"""
UNSETTLED_EDGES = (
    "SELECT count(*) FROM evq_dependencies WHERE parent_id = %s "
    "AND (state = 'open' OR state = 'failed')"
)
LIVE_CHILDREN = """
SELECT j.id, j.queue, j.name, j.state
FROM evq_dependencies AS d JOIN evq_jobs AS j ON j.id = d.child_id
WHERE d.parent_id = %s AND (j.state = 'pending' OR j.state = 'waiting' OR j.state = 'running')
ORDER BY j.enqueue_position
"""
PARENT_OF = "SELECT parent_id FROM evq_jobs WHERE id = %s"
JOB_STATE = "SELECT state, queue, name, attempt FROM evq_jobs WHERE id = %s"

# --- reads ---------------------------------------------------------------------------
GET_JOB = f"SELECT {JOB_COLUMNS} FROM evq_jobs WHERE id = %s"
EVENT_DATA = "SELECT data FROM evq_events WHERE position = %s"
# SQLite's json_extract gives a JSON true or false as 1 or 0 (and NULL when the key is
# missing or null); keep_children is only ever written as a boolean.
KEEPS_CHILDREN = """
SELECT CASE (e.data::json) ->> 'keep_children' WHEN 'true' THEN 1 WHEN 'false' THEN 0 END
FROM evq_jobs AS j JOIN evq_events AS e ON e.position = j.enqueue_position WHERE j.id = %s
"""
# Job ids are in three places: the jobs, the deleted jobs, and the events of jobs never
# added (evq_events_by_job leaves enqueue events out). Ids are matched literally.
JOB_ID_KNOWN = """
WITH p AS (SELECT %s::text AS id)
SELECT 1 FROM evq_jobs WHERE id = (SELECT id FROM p)
UNION ALL SELECT 1 FROM evq_deleted_jobs WHERE id = (SELECT id FROM p)
UNION ALL SELECT 1 FROM evq_events
    WHERE job_id = (SELECT id FROM p) AND job_id IS NOT NULL AND kind <> 'enqueue'
LIMIT 1
"""
# Ids that begin with the first parameter, at most the third of them. The second, SQLite's
# upper bound of the index range (text, or an empty blob when there is none), is bound
# but not needed: starts_with is exact, and on these "C"-collated columns the planner
# turns it into that index range itself when the prefix is known at planning (p is
# pulled up into the query, so the bound value is a constant of a custom plan); `>=` keeps
# the range's lower end in a generic plan.
_JOB_IDS_WHERE = f"""
SELECT ids.id FROM ({{params}}) AS p
CROSS JOIN LATERAL (
    SELECT id FROM evq_jobs WHERE {{id_test}}
    UNION SELECT id FROM evq_deleted_jobs WHERE {{id_test}}
    UNION SELECT job_id FROM evq_events
        WHERE job_id IS NOT NULL AND kind <> 'enqueue' AND {{test}}) AS ids
{_LIMIT}
"""
FIND_JOB_IDS_BY_PREFIX = _JOB_IDS_WHERE.format(
    params="SELECT %s::text AS prefix, %s::text AS upper_bound",
    id_test="id >= p.prefix AND starts_with(id, p.prefix)",
    test="job_id >= p.prefix AND starts_with(job_id, p.prefix)")
# Ids that match SQLite GLOB pattern (the first parameter), at most the second of them.
# The engine's pattern is '*' and a text with each of its GLOB characters bracketed
# ('[*]', '[?]', '[[]'): it is turned into the LIKE pattern that matches the same ids
# (* is %, ? is _, a one-character class [c] is c, and %, _ and \ are escaped), which,
# like GLOB, is case-sensitive. (Other bracket expressions are not read as classes.)
_GLOB_AS_LIKE = """
    SELECT coalesce(string_agg(CASE
        WHEN t.token = '*' THEN '%%'
        WHEN t.token = '?' THEN '_'
        WHEN t.c = '%%' OR t.c = '_' OR t.c = chr(92) THEN chr(92) || t.c
        ELSE t.c END, '' ORDER BY t.n), '') AS pattern
    FROM (SELECT m.n, m.a[1] AS token,
                 CASE WHEN length(m.a[1]) = 3 THEN substr(m.a[1], 2, 1) ELSE m.a[1] END AS c
          FROM regexp_matches(%s::text, '[[][^^][]]|.', 'g') WITH ORDINALITY AS m (a, n)) AS t
"""
FIND_JOB_IDS_BY_SUFFIX = _JOB_IDS_WHERE.format(
    params=_GLOB_AS_LIKE,
    id_test="id LIKE p.pattern ESCAPE chr(92)",
    test="job_id LIKE p.pattern ESCAPE chr(92)")
# What to call a job id people must choose between: its name and where it is (the first
# place that has it, in this order).
JOB_ID_LABEL = """
WITH p AS (SELECT %s::text AS id)
SELECT name, state FROM (
    SELECT 1 AS place, name, state FROM evq_jobs WHERE id = (SELECT id FROM p)
    UNION ALL SELECT 2, e.job, 'deleted' FROM evq_deleted_jobs AS d
        JOIN evq_events AS e ON e.position = d.enqueue_position
        WHERE d.id = (SELECT id FROM p)
    UNION ALL (SELECT 3, job, CASE kind WHEN 'reject' THEN 'rejected' ELSE kind END
        FROM evq_events
        WHERE job_id = (SELECT id FROM p) AND job_id IS NOT NULL AND kind <> 'enqueue'
        ORDER BY position DESC LIMIT 1)) AS found
ORDER BY place
LIMIT 1
"""
LIST_JOBS = f"SELECT {JOB_COLUMNS} FROM evq_jobs ORDER BY enqueue_position"
# The newest `limit` jobs of a state and a queue (NULL: any), oldest first. A negative
# limit is no limit in SQLite, an error in PostgreSQL: it becomes NULL (no limit). The
# state and the queue are never NULL in a row, so `= coalesce(param, column)` is SQLite's
# `(param IS NULL OR column = param)` with each parameter bound once.
LIST_JOBS_WHERE = (
    f"SELECT * FROM (SELECT {JOB_COLUMNS} FROM evq_jobs "
    "WHERE state = coalesce(%s::text, state) AND queue = coalesce(%s::text, queue) "
    f"ORDER BY enqueue_position DESC {_LIMIT}) AS newest "
    "ORDER BY enqueue_position"
)
_LIST_JOBS_IN = (
    f"SELECT * FROM (SELECT {JOB_COLUMNS} FROM evq_jobs WHERE state = '{{state}}' "
    "AND queue = coalesce(%s::text, queue) "
    f"ORDER BY enqueue_position DESC {_LIMIT}) AS newest "
    "ORDER BY enqueue_position"
)
LIST_PENDING_JOBS = _LIST_JOBS_IN.format(state="pending")
LIST_RUNNING_JOBS = _LIST_JOBS_IN.format(state="running")
COUNT_JOBS_BY_STATE = "SELECT state, count(*) FROM evq_jobs GROUP BY state ORDER BY state"
COUNT_JOBS_BY_QUEUE_STATE = (
    "SELECT queue, state, count(*) FROM evq_jobs GROUP BY queue, state ORDER BY queue, state")
FINISHED_OVER_TIME = """
WITH w AS (SELECT %s::float8 AS w_since, %s::float8 AS w_until, %s::float8 AS w_step)
SELECT floor((finished_at - w_since) / w_step)::int AS slot, state, count(*)
FROM evq_jobs CROSS JOIN w WHERE finished_at >= w_since AND finished_at < w_until
    AND state IN ('succeeded', 'failed', 'expired', 'cancelled')
GROUP BY slot, state ORDER BY slot, state
"""
BACKLOG = """
SELECT queue, count(*), min(run_at) FROM evq_jobs WHERE state = 'pending' AND run_at <= %s
GROUP BY queue ORDER BY queue
"""
# The dashboard's jobs list (see the SQLite module): the parameters bound once in `w`.
_CANDIDATE_WINDOW = (
    "WITH w AS (SELECT %s::bigint AS w_before, nullif(greatest(%s::bigint, -1), -1) "
    "AS w_most"
)
_JOB_WINDOW = (
    f"{_CANDIDATE_WINDOW}, %s::text AS w_queue, %s::text AS w_name, %s::float8 AS w_since, "
    "%s::float8 AS w_until, %s::text AS w_text, %s::bigint AS w_limit) "
)


def _newest(states: tuple[str, ...]) -> str:
    arms = " UNION ALL ".join(
        "(SELECT id AS candidate, enqueue_position AS candidate_at FROM evq_jobs, w "
        f"WHERE lower(state) = '{state}' AND enqueue_position < w_before "
        "ORDER BY enqueue_position DESC LIMIT (SELECT w_most FROM w))" for state in states)
    return (f"SELECT * FROM ({arms}) AS arms "
            "ORDER BY candidate_at DESC LIMIT (SELECT w_most FROM w)")


_JOB_CHECKS = (
    "(w_queue IS NULL OR j.queue = w_queue) AND (w_name IS NULL OR j.name = w_name) "
    "AND (w_since IS NULL OR j.enqueued_at >= w_since) "
    "AND (w_until IS NULL OR j.enqueued_at <= w_until) "
    "AND (w_text IS NULL OR EXISTS (SELECT 1 FROM evq_events AS e "
    "WHERE e.position = j.enqueue_position AND strpos(e.data, w_text) > 0))"
)


def _job_page(states: tuple[str, ...]) -> str:
    return (f"{_JOB_WINDOW} SELECT {JOB_COLUMNS} FROM ({_newest(states)}) AS n "
            f"JOIN evq_jobs AS j ON j.id = n.candidate CROSS JOIN w WHERE {_JOB_CHECKS} "
            "ORDER BY n.candidate_at DESC LIMIT (SELECT w_limit FROM w)")


def _job_search(state: str | None) -> str:
    where = "" if state is None else f"lower(j.state) = '{state}' AND "
    return (f"{_JOB_WINDOW} SELECT {JOB_COLUMNS} FROM evq_jobs AS j CROSS JOIN w "
            f"WHERE {where}j.enqueue_position < w_before AND {_JOB_CHECKS} "
            "ORDER BY j.enqueue_position DESC LIMIT (SELECT w_limit FROM w)")


def _candidates(states: tuple[str, ...]) -> str:
    return (f"{_CANDIDATE_WINDOW}), candidates AS ({_newest(states)}) SELECT count(*), "
            "(SELECT candidate_at FROM candidates ORDER BY candidate_at LIMIT 1 OFFSET 1) "
            "FROM candidates")


JOB_PAGES = {state: _job_page((state,)) for state in _sqlite.JOB_STATES} | {
    None: _job_page(_sqlite.JOB_STATES)}
JOB_CANDIDATES = {state: _candidates((state,)) for state in _sqlite.JOB_STATES} | {
    None: _candidates(_sqlite.JOB_STATES)}
JOB_SEARCHES = {state: _job_search(state) for state in (*_sqlite.JOB_STATES, None)}

EVENTS_AFTER = (
    f"SELECT {EVENT_COLUMNS} FROM evq_events WHERE position > %s ORDER BY position {_LIMIT}"
)
EVENTS_AFTER_UNSEALED = (
    f"SELECT {EVENT_COLUMNS} FROM evq_events WHERE position > %s AND kind <> 'seal' "
    f"ORDER BY position {_LIMIT}"
)
EVENTS_BETWEEN = (
    f"SELECT {EVENT_COLUMNS} FROM evq_events WHERE position > %s AND position < %s "
    "ORDER BY position"
)
# The events of some jobs (p.ids): all but the enqueue through evq_events_by_job, the
# enqueue through its job, live (enqueue_position) or deleted (evq_deleted_jobs).
_EVENTS_OF = f"""
WITH p AS ({{params}})
SELECT {EVENT_COLUMNS} FROM evq_events
WHERE job_id = ANY ((SELECT ids FROM p)::text[])
  AND job_id IS NOT NULL AND kind <> 'enqueue'{{also}}
UNION ALL
SELECT {EVENT_COLUMNS} FROM evq_events WHERE position IN (
    SELECT enqueue_position FROM evq_jobs WHERE id = ANY ((SELECT ids FROM p)::text[])
    UNION ALL SELECT enqueue_position FROM evq_deleted_jobs
        WHERE id = ANY ((SELECT ids FROM p)::text[]))
ORDER BY position
"""
EVENTS_FOR_JOB = _EVENTS_OF.format(params="SELECT ARRAY[%s::text] AS ids", also="")
EVENTS_FOR_JOBS = _EVENTS_OF.format(params=f"SELECT {_LIST} AS ids", also="")
EVENTS_BEFORE = (
    f"SELECT {EVENT_COLUMNS} FROM evq_events WHERE position < %s ORDER BY position DESC "
    f"{_LIMIT}"
)
LAST_EVENTS = (
    f"SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS} FROM evq_events "
    f"ORDER BY position DESC {_LIMIT}) AS newest ORDER BY position"
)
LAST_POSITION = "SELECT max(position) FROM evq_events"
# Many events in one statement, from one JSON array of [kind, job_id, queue, job, attempt,
# worker, data text] rows, in order; the time is bound as a number, never sent as JSON
# text, so it is stored bit for bit as the seal hashes it.
# Deviation: a FIRST parameter, the position of the first row, comes before SQLite's
# (at, rows): the rows take it and the positions after it, in their order.
APPEND_EVENTS_JSON = """
INSERT INTO evq_events (position, at, kind, job_id, queue, job, attempt, worker, data)
SELECT p.first + r.n - 1, p.at, r.value ->> 0, r.value ->> 1, r.value ->> 2,
       r.value ->> 3, (r.value ->> 4)::bigint, r.value ->> 5, r.value ->> 6
FROM (SELECT %s::bigint AS first, %s::double precision AS at, %s::json AS rows) AS p
CROSS JOIN LATERAL json_array_elements(p.rows) WITH ORDINALITY AS r (value, n)
ORDER BY r.n
"""
HOOKS_DUE = f"""
SELECT {JOB_COLUMNS} FROM evq_jobs
WHERE (hook_state = 'due' OR hook_state = 'running') AND state = 'expired'
  AND (hook_state = 'due' OR lease_until <= %s)
  AND name = ANY ({_LIST})
ORDER BY finished_at {_LIMIT}
"""
NEXT_HOOK_LEASE_EXPIRY = f"""
SELECT min(lease_until) FROM evq_jobs
WHERE (hook_state = 'due' OR hook_state = 'running') AND state = 'expired'
  AND hook_state = 'running' AND name = ANY ({_LIST})
"""
HEAD_POSITION = "SELECT coalesce(max(position), 0) FROM evq_events"

# --- replay --------------------------------------------------------------------------
# There is no ATTACH: the ledger replayed from is another schema of the same database.
# The statements that read it name it `{source}` (format in a quoted identifier, e.g.
# psycopg.sql.Identifier); the ledger written to is the connection's (SQLite's `main.`).
ATTACH_SOURCE = None
DETACH_SOURCE = None
REPLAY_EVENTS = (
    f"INSERT INTO evq_events ({EVENT_COLUMNS}) "
    f"SELECT {EVENT_COLUMNS} FROM {{source}}.evq_events WHERE position > %s AND position <= %s "
    "ORDER BY position"
)
SOURCE_HEAD = (
    "SELECT coalesce(max(position), 0) FROM {source}.evq_events WHERE position <= %s"
)
SOURCE_FIRST_AFTER_TIME = (
    "SELECT min(position) FROM {source}.evq_events WHERE position > %s AND position <= %s "
    "AND at > %s")
IMPORT_EVENT = (
    f"INSERT INTO evq_events ({EVENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
# The first and last positions held (NULLs when none), and the first event at or after a
# position: what a search by time needs (`at` never decreases in position order).
POSITION_BOUNDS = "SELECT min(position), max(position) FROM evq_events"
EVENT_AT_OR_AFTER = (
    "SELECT position, at FROM evq_events WHERE position >= %s ORDER BY position LIMIT 1")
SOURCE_EVENTS_AFTER = (
    f"SELECT {EVENT_COLUMNS} FROM {{source}}.evq_events WHERE position > %s "
    f"AND position <= %s ORDER BY position {_LIMIT}"
)
SOURCE_POSITIONS = (
    "SELECT position FROM {source}.evq_events WHERE position <= %s ORDER BY position"
)
REPLAY_ONE_EVENT = (
    f"INSERT INTO evq_events ({EVENT_COLUMNS}) "
    f"SELECT {EVENT_COLUMNS} FROM {{source}}.evq_events WHERE position = %s"
)
PROJECTION_ONLY_IN_MAIN = (
    "SELECT {columns} FROM {table} EXCEPT SELECT {columns} FROM {source}.{table}")
PROJECTION_ONLY_IN_SOURCE = (
    "SELECT {columns} FROM {source}.{table} EXCEPT SELECT {columns} FROM {table}")

# --- durable handlers ------------------------------------------------------------------
TAKE_CURSOR = """
INSERT INTO evq_cursors (name, position, holder, lease_until, updated_at)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until,
       updated_at = excluded.updated_at
WHERE evq_cursors.holder IS NULL OR evq_cursors.holder = %s
   OR evq_cursors.lease_until <= excluded.updated_at
"""
GET_CURSOR = "SELECT position, holder FROM evq_cursors WHERE name = %s"
CURSOR_LEASE = "SELECT holder, lease_until FROM evq_cursors WHERE name = %s"
# greatest() is SQLite's two-argument max() (which would give NULL, and so a refused
# write, for a NULL position; greatest keeps the stored one).
MOVE_CURSOR = """
UPDATE evq_cursors SET position = greatest(position, %s), lease_until = %s, updated_at = %s
WHERE name = %s AND holder = %s
"""
MOVE_CURSOR_IN_CALLERS_TX = """
UPDATE evq_cursors SET position = %s, updated_at = %s
WHERE name = %s AND holder = %s AND position < %s
"""
RELEASE_CURSOR = """
UPDATE evq_cursors SET position = greatest(position, %s), updated_at = %s, holder = NULL,
       lease_until = NULL
WHERE name = %s AND holder = %s
"""
LIST_CURSORS = (
    "SELECT name, position, holder, lease_until, updated_at FROM evq_cursors ORDER BY name"
)

# --- orchestration -------------------------------------------------------------------
CLAIM_LEADERSHIP = """
INSERT INTO evq_leaders (role, holder, lease_until) VALUES (%s, %s, %s)
ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until
WHERE evq_leaders.holder = excluded.holder OR evq_leaders.lease_until <= %s
"""
GET_LEADER = "SELECT holder, lease_until FROM evq_leaders WHERE role = %s"
RELEASE_LEADERSHIP = "DELETE FROM evq_leaders WHERE role = %s AND holder = %s"
SEE_WORKER = """
INSERT INTO evq_workers (name, jobs, last_seen, host, pid) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET jobs = excluded.jobs, last_seen = excluded.last_seen,
       host = excluded.host, pid = excluded.pid
"""
GET_WORKER = "SELECT host, pid, last_seen FROM evq_workers WHERE name = %s"
FORGET_WORKER = (
    "DELETE FROM evq_workers WHERE name = %s AND host IS NOT DISTINCT FROM %s::text "
    "AND pid IS NOT DISTINCT FROM %s::bigint"
)
LIVE_WORKER_JOBS = "SELECT jobs FROM evq_workers WHERE last_seen > %s"
LIST_WORKERS = "SELECT name, jobs, last_seen, host, pid FROM evq_workers ORDER BY name"
# The room the ledger's schema takes: its tables with their indexes and TOAST.
SCHEMA_BYTES = (
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class AS c "
    "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relkind = 'r'")
ORPHAN_CANDIDATES = f"""
SELECT id, queue, name FROM evq_jobs
WHERE state = 'pending' AND run_at <= %s AND orphaned_at IS NULL
  AND name <> ALL ({_LIST})
{_LIMIT}
"""
GET_DEFINITION = "SELECT data FROM evq_definitions WHERE name = %s"
LIST_DEFINITIONS = "SELECT name, queue, data FROM evq_definitions ORDER BY name"
GET_SCHEDULE = "SELECT spec, next_at FROM evq_schedules WHERE name = %s"
# Each schedule, its next fire, and its last (the time of the event that last set it, if
# that was a fire: not a registration, which a new or changed spec writes).
LIST_SCHEDULES = """
SELECT s.name, s.spec, s.next_at, (SELECT e.at FROM evq_events AS e
    WHERE e.position = s.updated_position AND e.kind = 'schedule'
      AND (evq_nul_back(e.data)::json ->> 'reason') IS DISTINCT FROM 'registered')
FROM evq_schedules AS s ORDER BY s.name
"""
CLEANUP_CANDIDATES = f"""
SELECT id, queue, name, state FROM evq_jobs
WHERE queue = %s AND state = ANY ({_LIST}) AND finished_at <= %s
  AND (hook_state IS NULL OR hook_state = 'done' OR hook_state = 'failed')
  -- not a failed child its parent waits on: it is there to be retried
  AND NOT EXISTS (
      SELECT 1 FROM evq_dependencies AS d JOIN evq_jobs AS p ON p.id = d.parent_id
      WHERE d.child_id = evq_jobs.id AND d.state = 'failed' AND p.state = 'waiting')
{_LIMIT}
"""

# --- archiving -----------------------------------------------------------------------
ARCHIVABLE_JOBS = """
SELECT d.id FROM evq_deleted_jobs AS d JOIN evq_events AS e ON e.position = d.deleted_position
WHERE e.at <= %s AND NOT EXISTS (SELECT 1 FROM evq_jobs AS j WHERE j.id = d.id)
"""
# (parent, child) of every flow edge whose `wait` event is still in the ledger (the guard
# let in only wait events whose children are a non-empty array).
FLOW_EDGES_IN_LEDGER = """
SELECT e.job_id, c.value ->> 'id' FROM evq_events AS e
CROSS JOIN LATERAL json_array_elements((e.data::json) -> 'children') AS c (value)
WHERE e.kind = 'wait'
"""
EVENTS_OF_JOBS = _EVENTS_OF.format(
    params=f"SELECT {_LIST} AS ids, {_LIST} AS kinds",
    also=" AND kind <> ALL ((SELECT kinds FROM p)::text[])")
FORGET_DELETED_JOBS = f"DELETE FROM evq_deleted_jobs WHERE id = ANY ({_LIST})"
# Archiving lifts the guard inside its own transaction and creates it again with
# schema.EVENTS_NO_DELETE. (DROP TRIGGER locks evq_events against readers too until the
# transaction ends.)
DROP_EVENTS_NO_DELETE = "DROP TRIGGER evq_events_no_delete ON evq_events"
DELETE_EVENTS_AT = f"DELETE FROM evq_events WHERE position = ANY ({_INT_LIST})"
ARCHIVE_EVENTS = "SELECT position, data FROM evq_events WHERE kind = 'archive' ORDER BY position"
SOURCE_ARCHIVE_EVENTS = (
    "SELECT position, data FROM {source}.evq_events WHERE kind = 'archive' "
    "AND position <= %s ORDER BY position")
# The hash of each event archiving removed (from a JSON array of [position, hash]); the
# archive's position, then the array, as in SQLite.
KEEP_HASHES = """
INSERT INTO evq_archived (position, hash, archive_position)
SELECT (k.value ->> 0)::bigint, k.value ->> 1, %s::bigint
FROM json_array_elements(%s::json) AS k (value)
"""
KEEP_HASH = "INSERT INTO evq_archived (position, hash, archive_position) VALUES (%s, %s, %s)"
KEEP_HASH_IF_NEW = (
    "INSERT INTO evq_archived (position, hash, archive_position) VALUES (%s, %s, %s) "
    "ON CONFLICT DO NOTHING")
KEPT_HASHES_AFTER = (
    "SELECT position, hash, archive_position FROM evq_archived WHERE position > %s "
    f"ORDER BY position {_LIMIT}")
KEPT_HASHES_OF_ARCHIVE = (
    "SELECT position, hash FROM evq_archived WHERE archive_position = %s ORDER BY position")
COPY_KEPT_HASHES = (
    "INSERT INTO evq_archived (position, hash, archive_position) "
    "SELECT position, hash, archive_position FROM {source}.evq_archived "
    "WHERE archive_position <= %s ON CONFLICT DO NOTHING")

# --- the PostgreSQL engine's own statements (not named by the SQLite engine) -----------
def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of the ledger in `schema` (a checked schema name)."""
    return f"{schema}_commits"


# A write transaction begins by taking the ledger's append lock (held to its end), in the
# same round trip; `key` is the ledger's (url.Target.lock_key).
BEGIN_LOCKED = "BEGIN; SELECT pg_advisory_xact_lock({key:d})"
# Whether a commit whose answer was lost landed: the event at its seal's position.
EVENT_KIND_DATA_AT = "SELECT kind, data FROM evq_events WHERE position = %s"
# A speculative commit's opening, in one statement after BEGIN: the append lock (the
# subquery runs first), then the check that the newest event is still the one it chains
# to (free positions after it do not prove that: archiving leaves holes) and that the
# lock came quickly (statement_timestamp() is when the text arrived). Otherwise a
# division by zero refuses the whole text, and the commit goes the ordinary way.
BEGIN_LOCKED_IF_NEWEST = (
    "BEGIN; SELECT 1 / (CASE WHEN (SELECT max(position) FROM evq_events) = {position:d} "
    "AND clock_timestamp() - statement_timestamp() < interval '{wait_ms:d} milliseconds' "
    "THEN 1 ELSE 0 END) FROM (SELECT pg_advisory_xact_lock({key:d})) AS locked; ")
# A session whose speculative commit's answer was lost: ended, and waited for (up to
# 5 s), so that it can no longer run what it was sent. Only evq's own sessions of this
# user are ever ended.
END_OLD_SESSION = (
    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = %s "
    "AND application_name = 'evq' AND usename = current_user AND pid <> pg_backend_pid()")
LOCK_APPENDS = "SELECT pg_advisory_xact_lock(%s)"
# Commit, waking every process that listens on the ledger's channel, in one round trip.
NOTIFY_COMMIT = "NOTIFY {channel}; COMMIT"
NOTIFY_ON_COMMIT = "SELECT pg_notify(%s, '')"
# Read once the lock is held: where the next event goes, and the time it may not precede.
NEWEST_EVENT = "SELECT position, at FROM evq_events ORDER BY position DESC LIMIT 1"
# One event at a position, as SQLite's APPEND_EVENT after its position.
APPEND = (
    "INSERT INTO evq_events (position, at, kind, job_id, queue, job, attempt, worker, data) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")
# Many events at consecutive positions from the first, all at one time: a JSON array of
# [kind, job_id, queue, job, attempt, worker, data text]. The fold runs row by row in
# position order at the end of the statement, each row seeing the ones before it.
APPEND_MANY = """
INSERT INTO evq_events (position, at, kind, job_id, queue, job, attempt, worker, data)
SELECT %s + e.n - 1, %s, e.row->>0, e.row->>1, e.row->>2, e.row->>3, (e.row->>4)::bigint,
       e.row->>5, e.row->>6
FROM json_array_elements(%s::json) WITH ORDINALITY AS e(row, n)
ORDER BY e.n
"""
# An exported event as stored (the ten columns).
IMPORT = (
    "INSERT INTO evq_events (position, at, kind, job_id, queue, job, attempt, worker, data, v) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
KEEP_HASH = "INSERT INTO evq_archived (position, hash, archive_position) VALUES (%s, %s, %s)"

# A caller's own transaction (enqueue_in): where its tables are looked up, set for the
# rest of that transaction only, and put back after evq's statements.
SHOW_SEARCH_PATH = "SELECT current_setting('search_path')"
SET_LOCAL_SEARCH_PATH = "SELECT set_config('search_path', %s, true)"
# Whether a schema holds a ledger: to_regclass('schema.evq_meta') is NULL if not.
LEDGER_IN_SCHEMA = "SELECT to_regclass(%s)"
# A durable handler's cursor moved in its own transaction (`cursors` is the schema's
# table, quoted by the caller): only forward, only by the holder.
MOVE_CURSOR_IN_SCHEMA = (
    "UPDATE {cursors} SET position = %s, updated_at = %s "
    "WHERE name = %s AND holder = %s AND position < %s")
GET_CURSOR_IN_SCHEMA = "SELECT position, holder FROM {cursors} WHERE name = %s"

# Archiving lifts the no-delete guard inside its own transaction only.
GUARD_EXISTS = (
    "SELECT 1 FROM pg_trigger WHERE tgname = %s "
    "AND tgrelid = to_regclass('evq_events') AND tgenabled <> 'D'")
DISABLE_NO_DELETE = "ALTER TABLE evq_events DISABLE TRIGGER evq_events_no_delete"
ENABLE_NO_DELETE = "ALTER TABLE evq_events ENABLE TRIGGER evq_events_no_delete"

# Replay: one snapshot of the ledger, into a scratch schema of the same transaction.
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ"
REPLAY_HEAD = "SELECT coalesce(max(position), 0) FROM {source}.evq_events WHERE position <= %s"
# Replays the source schema's events in (after, upto], in position order.
REPLAY_RANGE = (
    "INSERT INTO evq_events SELECT position, at, kind, job_id, queue, job, attempt, worker, "
    "data, v FROM {source}.evq_events WHERE position > %s AND position <= %s "
    "ORDER BY position")
COPY_KEPT_HASHES_FROM = (
    "INSERT INTO evq_archived SELECT * FROM {source}.evq_archived "
    "WHERE archive_position <= %s")
ONLY_IN_FIRST = "SELECT {columns} FROM {first} EXCEPT SELECT {columns} FROM {second}"

# Making the schema: one process at a time (the others then find it made).
LOCK_MIGRATIONS = "SELECT pg_advisory_xact_lock(%s)"
CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {}"
SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
# Read committed: each statement reads what committed before it (after a lock wait too).
BEGIN_WRITE = "BEGIN"
# The scratch ledger replay folds into: its schema version (once its table exists).
SCRATCH_VERSION = (
    "SELECT value FROM evq_scratch_replay.evq_meta WHERE key = 'schema_version'")
# A session's lock_timeout from the context's busy_timeout, unless the URL set one.
LOCK_TIMEOUT_UNLESS_SET = (
    "SELECT set_config('lock_timeout', %s, false) "
    "WHERE current_setting('lock_timeout') IN ('0', '0ms')")
# APPEND_MANY with its three parameters as literals, for a commit's last round trip.
APPEND_MANY_THEN = APPEND_MANY.replace("%s", "{}").strip() + "; "
# A commit's seal event as literals, followed by NOTIFY_COMMIT: sealed, committed and
# announced in one round trip.
SEAL_THEN = ("INSERT INTO evq_events (position, at, kind, data, v) "
             "VALUES ({}, {}, 'seal', {}, {}); ")
# Whether any flow edge is unsettled (open, or failed and blocking its parent).
ANY_UNSETTLED_EDGE = (
    "SELECT EXISTS (SELECT 1 FROM evq_dependencies WHERE state = 'open' OR state = 'failed')")
# One round trip to open a write transaction: BEGIN, the append lock (`key`), and,
# once it is held, the newest event (position, at, kind, data: a commit's last event is
# its seal, whose hash the next commit chains to) and whether any flow edge is unsettled.
BEGIN_LOCKED_NEWEST = (
    "BEGIN; SELECT pg_advisory_xact_lock({key:d}); "
    "SELECT position, at, kind, data FROM evq_events ORDER BY position DESC LIMIT 1; "
    + ANY_UNSETTLED_EDGE)
