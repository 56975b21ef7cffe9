"""Every statement evq runs against the ledger, named. No SQL text lives elsewhere
(the schema and its triggers are in schema.sql and migrations/)."""

from __future__ import annotations

from ...jobs import JobState

# --- pragmas -------------------------------------------------------------------------
# No connection checkpoints on its own (SQLite 3.40's WAL-reset bug); writers run
# TRUNCATE checkpoints deliberately (wal.py). trusted_schema stays at its
# default: SQLite 3.40 does not mark its JSON functions innocuous, so OFF would refuse the
# projection triggers; evq registers no SQL functions of its own, so a hostile schema
# gains nothing from it.
CONNECTION_PRAGMAS = (
    # Takes effect only on a file that has no pages yet (a new ledger), before WAL mode
    # fixes it. A commit writes whole pages to the WAL, and a typical one touches three
    # (the events, the job, the due index), each changing a row of a few hundred bytes:
    # 1 KiB pages write a quarter of the bytes of SQLite's default 4 KiB.
    "PRAGMA page_size = 1024",
    "PRAGMA journal_mode = WAL",
    "PRAGMA wal_autocheckpoint = 0",
    "PRAGMA foreign_keys = ON",
    "PRAGMA journal_size_limit = 67108864",
    # A ledger's hot pages (due index, recent events) outgrow the 2 MB default quickly.
    "PRAGMA cache_size = -65536",
    "PRAGMA mmap_size = 268435456",
    # Savepoint sub-journals in memory, not in a temp file.
    "PRAGMA temp_store = MEMORY",
)
# A short-lived reader's instead of the cache and memory map above (see connection.connect).
READER_PRAGMAS = ("PRAGMA cache_size = -8192", "PRAGMA mmap_size = 0")
# A scratch database that is thrown away (verify's replay): no journal, no syncs.
# (Its comparison's temporary tables go to temporary files too, not to memory.)
SCRATCH_PRAGMAS = ("PRAGMA journal_mode = OFF", "PRAGMA synchronous = OFF",
                   "PRAGMA cache_size = -16384", "PRAGMA temp_store = FILE")
# A new ledger built whole under a temporary name (replay), then made an ordinary one.
BUILD_PRAGMAS = ("PRAGMA journal_mode = OFF", "PRAGMA synchronous = OFF",
                 "PRAGMA cache_size = -32768", "PRAGMA mmap_size = 0")
BUILT_PRAGMAS = ("PRAGMA journal_mode = WAL",)
SET_BUSY_TIMEOUT = "PRAGMA busy_timeout = {ms:d}"
GET_BUSY_TIMEOUT = "PRAGMA busy_timeout"
SET_SYNCHRONOUS = "PRAGMA synchronous = {level}"
DATA_VERSION = "PRAGMA data_version"
DATABASE_LIST = "PRAGMA database_list"
CHECKPOINT_TRUNCATE = "PRAGMA wal_checkpoint(TRUNCATE)"

# --- transactions --------------------------------------------------------------------
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
BEGIN = "BEGIN"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"
SAVEPOINT = "SAVEPOINT evq_op"
RELEASE = "RELEASE evq_op"
ROLLBACK_TO = "ROLLBACK TO evq_op"

# --- schema bookkeeping --------------------------------------------------------------
META_TABLE_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'evq_meta'"
EVQ_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'evq_*'"
GET_META = "SELECT value FROM evq_meta WHERE key = ?"
SET_META = "INSERT OR REPLACE INTO evq_meta (key, value) VALUES (?, ?)"

# --- the one way in --------------------------------------------------------------------
APPEND_EVENT = (
    "INSERT INTO evq_events (at, kind, job_id, queue, job, attempt, worker, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

# The newest event's time (a lookup at the end of the rowid tree).
NEWEST_AT = "SELECT at FROM evq_events ORDER BY position DESC LIMIT 1"
# A write that changes nothing but takes the write lock now, inside a caller's
# transaction that may have only read so far.
TAKE_WRITE_LOCK = "DELETE FROM evq_meta WHERE 0"

# --- seals (the hash chain lives in the log: a `seal` event ends each commit) -----------
# Scans back from the newest event; the previous seal is just before this commit's events.
LAST_SEAL = (
    "SELECT position, data FROM evq_events WHERE kind = 'seal' ORDER BY position DESC LIMIT 1"
)
# A commit's seal, at the position right after the commit's events (its hash covers it).
APPEND_SEAL = "INSERT INTO evq_events (position, at, kind, data, v) VALUES (?, ?, 'seal', ?, ?)"
# One job's enqueue event and its seal, at given positions, only if the position before
# them is still the newest (see ops.enqueue_alone).
APPEND_ENQUEUE_SEALED_IF_NEWEST = (
    "INSERT INTO evq_events "
    "(position, at, kind, job_id, queue, job, attempt, worker, data, v) "
    "SELECT * FROM (VALUES (?, ?, 'enqueue', ?, ?, ?, NULL, NULL, ?, 1), "
    "(?, ?, 'seal', NULL, NULL, NULL, NULL, NULL, ?, ?)) "
    "WHERE (SELECT max(position) FROM evq_events) = ?"
)
# Whether the file itself is sound: "ok", or what SQLite found damaged.
INTEGRITY_CHECK = "PRAGMA integrity_check(20)"
TABLE_QUICK_CHECK = 'PRAGMA quick_check("{table}")'
TABLE_NAMES = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
GUARD_TRIGGERS = (
    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name IN "
    "('evq_events_no_update', 'evq_events_no_delete', 'evq_archived_no_update', "
    "'evq_archived_no_delete')"
)

# --- claiming ------------------------------------------------------------------------
# Due jobs of one queue whose names this worker can run, in claim order: priority first
# (higher runs first), then run_at, then enqueue order. One queue per statement so the
# due index gives the order without sorting the backlog; the claimer merges queues.
# The payload is read from the enqueue event, so it is stored once.
CLAIM_DUE = """
SELECT j.id, j.queue, j.name, j.attempt, j.errors, j.max_attempts, j.priority,
       j.run_at, j.enqueued_at, e.data, j.enqueue_position, j.job_group, j.children
FROM evq_jobs AS j INDEXED BY evq_jobs_due
JOIN evq_events AS e ON e.position = j.enqueue_position
WHERE j.state = 'pending' AND j.queue = ? AND j.run_at <= ?
  AND j.name IN (SELECT value FROM json_each(?))
  AND (j.job_group IS NULL OR NOT EXISTS (
        SELECT 1 FROM evq_jobs AS r INDEXED BY evq_jobs_running_group
        WHERE r.job_group = j.job_group AND r.state = 'running'))
ORDER BY -j.priority, j.run_at, j.enqueue_position
LIMIT ?
"""
RUNNING_IN_QUEUE = "SELECT count(*) FROM evq_jobs WHERE state = 'running' AND queue = ?"
PAUSED_QUEUES = "SELECT name FROM evq_queues WHERE paused"
LIVE_JOB_WITH_KEY = (
    "SELECT id FROM evq_jobs WHERE idempotency_key = ? "
    "AND (state = 'pending' OR state = 'running' OR state = 'waiting')"
)

NEXT_DUE = """
SELECT min(run_at) FROM evq_jobs
WHERE state = 'pending'
  AND queue IN (SELECT value FROM json_each(?))
  AND name IN (SELECT value FROM json_each(?))
"""

# --- leases --------------------------------------------------------------------------
EXPIRED_LEASES = """
SELECT id, queue, name, attempt, errors, max_attempts, worker, lease_until
FROM evq_jobs WHERE state = 'running' AND lease_until <= ?
ORDER BY lease_until LIMIT ?
"""
# Which attempt of a job runs now, and until when its lease holds (a rescue's fence).
LEASE_OF = "SELECT state, attempt, lease_until FROM evq_jobs WHERE id = ?"
RUNNING_UNDER_WORKER = """
SELECT id, queue, name, attempt, run_at FROM evq_jobs
WHERE state = 'running' AND worker = ? AND queue IN (SELECT value FROM json_each(?))
"""
CANCELLED_AMONG = (
    "SELECT id FROM evq_jobs WHERE state = 'cancelled' "
    "AND id IN (SELECT value FROM json_each(?))"
)
NEXT_LEASE_EXPIRY = "SELECT min(lease_until) FROM evq_jobs WHERE state = 'running'"

# --- flows ---------------------------------------------------------------------------
CHILD_COLUMNS = "child_id, child_name, child_queue, on_failure, state, result, error"
CHILDREN_OF = (f"SELECT {CHILD_COLUMNS} FROM evq_dependencies WHERE parent_id = ? "
               "ORDER BY opened_position, rank")
# The edge a job's end settles: its parent's, while that parent still waits.
OPEN_EDGE_OF_CHILD = """
SELECT d.parent_id, d.on_failure, p.queue, p.name, p.run_at
FROM evq_dependencies AS d JOIN evq_jobs AS p ON p.id = d.parent_id
WHERE d.child_id = ? AND d.state = 'open' AND p.state = 'waiting'
"""
FAILED_EDGE_OF_CHILD = """
SELECT d.parent_id, d.on_failure, p.queue, p.name, p.run_at
FROM evq_dependencies AS d JOIN evq_jobs AS p ON p.id = d.parent_id
WHERE d.child_id = ? AND d.state = 'failed' AND p.state = 'waiting'
"""
UNSETTLED_EDGES = (
    "SELECT count(*) FROM evq_dependencies WHERE parent_id = ? "
    "AND (state = 'open' OR state = 'failed')"
)
LIVE_CHILDREN = """
SELECT j.id, j.queue, j.name, j.state
FROM evq_dependencies AS d JOIN evq_jobs AS j ON j.id = d.child_id
WHERE d.parent_id = ? AND (j.state = 'pending' OR j.state = 'waiting' OR j.state = 'running')
ORDER BY j.enqueue_position
"""
PARENT_OF = "SELECT parent_id FROM evq_jobs WHERE id = ?"
JOB_STATE = "SELECT state, queue, name, attempt FROM evq_jobs WHERE id = ?"

# --- reads ---------------------------------------------------------------------------
JOB_COLUMNS = (
    "id, queue, name, state, priority, run_at, attempt, errors, max_attempts, "
    "lease_until, worker, enqueued_at, started_at, finished_at, result, error, "
    "idempotency_key, job_group, hook_state, orphaned_at, enqueue_position, updated_position, "
    "parent_id, children, blocked_by"
)
JOB_FIELD = {name: index for index, name in enumerate(JOB_COLUMNS.split(", "))}
GET_JOB = f"SELECT {JOB_COLUMNS} FROM evq_jobs WHERE id = ?"
EVENT_DATA = "SELECT data FROM evq_events WHERE position = ?"
# Whether a flow's parent was enqueued with keep_children (its children run on when it
# fails because of a child).
KEEPS_CHILDREN = """
SELECT json_extract(e.data, '$.keep_children') FROM evq_jobs AS j
JOIN evq_events AS e ON e.position = j.enqueue_position WHERE j.id = ?
"""
# Job ids are in three places: the jobs, the deleted jobs, and the events of jobs never
# added (a refused enqueue); evq_events_by_job leaves enqueue events out (schema v3).
# Ids are matched literally (no LIKE: '%' and '_' are characters like any other).
JOB_ID_KNOWN = """
SELECT 1 FROM evq_jobs WHERE id = ?1
UNION ALL SELECT 1 FROM evq_deleted_jobs WHERE id = ?1
UNION ALL SELECT 1 FROM evq_events
    WHERE job_id = ?1 AND job_id IS NOT NULL AND kind <> 'enqueue'
LIMIT 1
"""
# Ids that begin with ?1: the index range [?1, ?2), ?2 the least text after every such
# id. At most ?3 of them.
_ID_IN_RANGE = "{col} >= ?1 AND {col} < ?2 AND substr({col}, 1, length(?1)) = ?1"
_JOB_IDS_WHERE = """
SELECT id FROM evq_jobs WHERE {id_test}
UNION SELECT id FROM evq_deleted_jobs WHERE {id_test}
UNION SELECT job_id FROM evq_events
    WHERE job_id IS NOT NULL AND kind <> 'enqueue' AND {test}
LIMIT ?3
"""
FIND_JOB_IDS_BY_PREFIX = _JOB_IDS_WHERE.format(
    id_test=_ID_IN_RANGE.format(col="id"), test=_ID_IN_RANGE.format(col="job_id"))
# Ids that end with a text: ?1 is '*' and the text with its GLOB characters bracketed
# (GLOB is case-sensitive; no index holds ids backwards, so this one scans).
FIND_JOB_IDS_BY_SUFFIX = _JOB_IDS_WHERE.format(id_test="id GLOB ?1",
                                               test="job_id GLOB ?1").replace("?3", "?2")
# What to call a job id people must choose between: its name and where it is.
JOB_ID_LABEL = """
SELECT name, state FROM evq_jobs WHERE id = ?1
UNION ALL SELECT e.job, 'deleted' FROM evq_deleted_jobs AS d
    JOIN evq_events AS e ON e.position = d.enqueue_position WHERE d.id = ?1
UNION ALL SELECT * FROM (SELECT job, CASE kind WHEN 'reject' THEN 'rejected' ELSE kind END
    FROM evq_events WHERE job_id = ?1 AND job_id IS NOT NULL AND kind <> 'enqueue'
    ORDER BY position DESC LIMIT 1)
LIMIT 1
"""
LIST_JOBS = f"SELECT {JOB_COLUMNS} FROM evq_jobs ORDER BY enqueue_position"
# The newest `limit` jobs (-1: all) of a state and a queue (NULL: any), oldest first.
LIST_JOBS_WHERE = (
    f"SELECT * FROM (SELECT {JOB_COLUMNS} FROM evq_jobs WHERE (?1 IS NULL OR state = ?1) "
    "AND (?2 IS NULL OR queue = ?2) ORDER BY enqueue_position DESC LIMIT ?3) "
    "ORDER BY enqueue_position"
)
# LIST_JOBS_WHERE for a live state (queue, limit), the state written out so that the
# planner reads only that state's partial index: as fast as there are such jobs, however
# many have finished (`+` keeps it off evq_jobs_newest, which would walk them all).
_LIST_JOBS_IN = (
    f"SELECT * FROM (SELECT {JOB_COLUMNS} FROM evq_jobs WHERE state = '{{state}}' "
    "AND (?1 IS NULL OR queue = ?1) ORDER BY +enqueue_position DESC LIMIT ?2) "
    "ORDER BY enqueue_position"
)
LIST_PENDING_JOBS = _LIST_JOBS_IN.format(state="pending")
LIST_RUNNING_JOBS = _LIST_JOBS_IN.format(state="running")
COUNT_JOBS_BY_STATE = "SELECT state, count(*) FROM evq_jobs GROUP BY state ORDER BY state"
# Jobs by queue and state, each from an index that holds the queue: the live states'
# partial indexes, evq_jobs_finished (covering) for finished ones, and the few waiting
# parents through evq_jobs_by_state.
COUNT_JOBS_BY_QUEUE_STATE = """
SELECT queue, 'pending', count(*) FROM evq_jobs WHERE state = 'pending' GROUP BY queue
UNION ALL
SELECT queue, 'running', count(*) FROM evq_jobs WHERE state = 'running' GROUP BY queue
UNION ALL
SELECT queue, 'waiting', count(*) FROM evq_jobs WHERE state = 'waiting' COLLATE NOCASE
GROUP BY queue
UNION ALL
SELECT queue, state, count(*) FROM evq_jobs WHERE finished_at IS NOT NULL
    AND state IN ('succeeded', 'failed', 'expired', 'cancelled') GROUP BY queue, state
ORDER BY 1, 2
"""
# Current jobs finished from ?1 to ?2 by ?3-second slot and state: one range of
# evq_jobs_finished per queue and finished state, the queues found by seeking the index
# from one to the next (a loose index scan), so it reads only the jobs of the window.
FINISHED_OVER_TIME = """
WITH RECURSIVE queues(q) AS (
    SELECT min(queue) FROM evq_jobs WHERE finished_at IS NOT NULL
    UNION ALL
    SELECT (SELECT min(queue) FROM evq_jobs WHERE finished_at IS NOT NULL AND queue > q)
    FROM queues WHERE q IS NOT NULL
), finished(s) AS (VALUES ('succeeded'), ('failed'), ('expired'), ('cancelled'))
SELECT CAST((j.finished_at - ?1) / ?3 AS INTEGER) AS slot, j.state, count(*)
FROM queues CROSS JOIN finished CROSS JOIN evq_jobs AS j
WHERE j.queue = queues.q AND j.state = finished.s AND j.finished_at >= ?1
    AND j.finished_at < ?2
GROUP BY slot, j.state ORDER BY slot, j.state
"""
# The pending jobs due at ?1 per queue, and since when (evq_jobs_due).
BACKLOG = """
SELECT queue, count(*), min(run_at) FROM evq_jobs WHERE state = 'pending' AND run_at <= ?1
GROUP BY queue ORDER BY queue
"""
JOB_STATES = tuple(state.value for state in JobState)
LARGEST_POSITION = 2**63 - 1  # positions are 64-bit


# The dashboard's jobs list. Its candidates: the newest jobs enqueued before position ?1,
# at most ?2 (-1: all), of the given states: one range of evq_jobs_by_state per state,
# merged newest first, so a page reads about as many index entries as it shows.
def _newest(states: tuple[str, ...]) -> str:
    arms = " UNION ALL ".join(
        "SELECT * FROM (SELECT id AS candidate, enqueue_position AS p FROM evq_jobs "
        f"WHERE state = '{state}' COLLATE NOCASE AND enqueue_position < ?1 "
        "ORDER BY enqueue_position DESC LIMIT ?2)" for state in states)
    return f"{arms} ORDER BY p DESC LIMIT ?2"


# The criteria no index serves, checked on each candidate: queue, name, enqueued at or
# after ?5 and at or before ?6, the enqueue event's data holding a text (NULL: any).
_JOB_CHECKS = (
    "(?3 IS NULL OR j.queue = ?3) AND (?4 IS NULL OR j.name = ?4) "
    "AND (?5 IS NULL OR j.enqueued_at >= ?5) AND (?6 IS NULL OR j.enqueued_at <= ?6) "
    "AND (?7 IS NULL OR EXISTS (SELECT 1 FROM evq_events AS e "
    "WHERE e.position = j.enqueue_position AND instr(e.data, ?7) > 0))"
)


def _job_page(states: tuple[str, ...]) -> str:
    return (f"SELECT {JOB_COLUMNS} FROM ({_newest(states)}) AS n "
            f"JOIN evq_jobs AS j ON j.id = n.candidate WHERE {_JOB_CHECKS} "
            "ORDER BY n.p DESC LIMIT ?8")


# By state (None: any state). A page: the candidates that pass the checks, newest
# first, at most ?8. The candidates (?1, ?2 only; ?2 one more than the bound): how many,
# and the second oldest's position (with ?2 candidates, the oldest the bound let in).
JOB_PAGES = {state: _job_page((state,)) for state in JOB_STATES} | {
    None: _job_page(JOB_STATES)}
def _candidates(states: tuple[str, ...]) -> str:
    return (f"SELECT count(*), (SELECT p FROM ({_newest(states)}) ORDER BY p LIMIT 1 "
            f"OFFSET 1) FROM ({_newest(states)})")


JOB_CANDIDATES = {state: _candidates((state,)) for state in JOB_STATES} | {
    None: _candidates(JOB_STATES)}


# Every job checked (no bound; ?2 unused): down the state's index, or (any state) every
# job sorted, at most ?8. What a bulk action over every match reads.
def _job_search(state: str | None) -> str:
    where = "" if state is None else f"j.state = '{state}' COLLATE NOCASE AND "
    return (f"SELECT {JOB_COLUMNS} FROM evq_jobs AS j WHERE {where}"
            f"j.enqueue_position < ?1 AND {_JOB_CHECKS} "
            "ORDER BY j.enqueue_position DESC LIMIT ?8")


JOB_SEARCHES = {state: _job_search(state) for state in (*JOB_STATES, None)}


EVENT_COLUMNS = "position, at, kind, job_id, queue, job, attempt, worker, data, v"
EVENTS_AFTER = (
    f"SELECT {EVENT_COLUMNS} FROM evq_events WHERE position > ? ORDER BY position LIMIT ?"
)
EVENTS_AFTER_UNSEALED = (
    f"SELECT {EVENT_COLUMNS} FROM evq_events WHERE position > ? AND kind != 'seal' "
    "ORDER BY position LIMIT ?"
)
EVENTS_BETWEEN = (
    f"SELECT {EVENT_COLUMNS} FROM evq_events WHERE position > ? AND position < ? "
    "ORDER BY position"
)
# The events of some jobs: all but the enqueue through evq_events_by_job, the enqueue
# through its job, live (enqueue_position) or deleted (evq_deleted_jobs).
_EVENTS_OF = f"""
SELECT {EVENT_COLUMNS} FROM evq_events
WHERE job_id IN ({{ids}}) AND job_id IS NOT NULL AND kind <> 'enqueue'{{also}}
UNION ALL
SELECT {EVENT_COLUMNS} FROM evq_events WHERE position IN (
    SELECT enqueue_position FROM evq_jobs WHERE id IN ({{ids}})
    UNION ALL SELECT enqueue_position FROM evq_deleted_jobs WHERE id IN ({{ids}}))
ORDER BY position
"""
EVENTS_FOR_JOB = _EVENTS_OF.format(ids="?1", also="")
EVENTS_FOR_JOBS = _EVENTS_OF.format(ids="SELECT value FROM json_each(?1)", also="")
EVENTS_BEFORE = (
    f"SELECT {EVENT_COLUMNS} FROM evq_events WHERE position < ? ORDER BY position DESC "
    "LIMIT ?"
)
LAST_EVENTS = (
    f"SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS} FROM evq_events "
    "ORDER BY position DESC LIMIT ?) ORDER BY position"
)
LAST_POSITION = "SELECT max(position) FROM evq_events"
# Many events in one statement, from one JSON array of [kind, job_id, queue, job, attempt,
# worker, data text] rows, in order. One statement runs inside SQLite without coming back
# to Python per row (executemany binds each row, holding the GIL), so the caller's other
# thread can validate the next batch meanwhile. The time is bound, never sent as JSON
# text, so that it is stored bit for bit as the seal hashed it.
APPEND_EVENTS_JSON = """
INSERT INTO evq_events (at, kind, job_id, queue, job, attempt, worker, data)
SELECT ?1, value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
       value ->> 6
FROM json_each(?2)
"""
# Both read through the partial index evq_jobs_hooks (its condition is repeated here).
HOOKS_DUE = f"""
SELECT {JOB_COLUMNS} FROM evq_jobs
WHERE (hook_state = 'due' OR hook_state = 'running') AND state = 'expired'
  AND (hook_state = 'due' OR lease_until <= ?)
  AND name IN (SELECT value FROM json_each(?))
ORDER BY finished_at LIMIT ?
"""
NEXT_HOOK_LEASE_EXPIRY = """
SELECT min(lease_until) FROM evq_jobs
WHERE (hook_state = 'due' OR hook_state = 'running') AND state = 'expired'
  AND hook_state = 'running' AND name IN (SELECT value FROM json_each(?))
"""
HEAD_POSITION = "SELECT coalesce(max(position), 0) FROM evq_events"

# --- replay --------------------------------------------------------------------------
ATTACH_SOURCE = "ATTACH DATABASE ? AS source"
DETACH_SOURCE = "DETACH DATABASE source"
REPLAY_EVENTS = (
    f"INSERT INTO main.evq_events ({EVENT_COLUMNS}) "
    f"SELECT {EVENT_COLUMNS} FROM source.evq_events WHERE position > ? AND position <= ? "
    "ORDER BY position"
)
SOURCE_HEAD = "SELECT coalesce(max(position), 0) FROM source.evq_events WHERE position <= ?"
# The first event of a range of positions stamped after a time (replay --at's cut).
SOURCE_FIRST_AFTER_TIME = (
    "SELECT min(position) FROM source.evq_events WHERE position > ? AND position <= ? "
    "AND at > ?")
# Every table derived from the events, with the columns replay must reproduce.
PROJECTIONS = {
    "evq_jobs": JOB_COLUMNS,
    "evq_queues": "name, paused, updated_position",
    "evq_definitions": "name, queue, data, updated_position",
    "evq_schedules": "name, spec, next_at, updated_position",
    "evq_dependencies": "parent_id, child_id, child_name, child_queue, on_failure, state, "
                        "result, error, opened_position, rank, updated_position",
    "evq_deleted_jobs": "id, enqueue_position, deleted_position",
}
IMPORT_EVENT = f"INSERT INTO evq_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# (`at` never decreases in position order, so these are exactly the events stamped at or
# before that time; in a ledger written before that held, nothing stamped later is
# taken in.)
# The first and last positions held (NULLs when none), and the first event at or after a
# position: what a search by time needs (`at` never decreases in position order).
# Two subqueries: SQLite reads min() or max() from the index's end only when it is the
# statement's one aggregate (both in one SELECT scan the whole table).
POSITION_BOUNDS = (
    "SELECT (SELECT min(position) FROM evq_events), (SELECT max(position) FROM evq_events)")
EVENT_AT_OR_AFTER = (
    "SELECT position, at FROM evq_events WHERE position >= ? ORDER BY position LIMIT 1")
SOURCE_EVENTS_AFTER = (
    f"SELECT {EVENT_COLUMNS} FROM source.evq_events WHERE position > ? AND position <= ? "
    "ORDER BY position LIMIT ?"
)
SOURCE_POSITIONS = "SELECT position FROM source.evq_events WHERE position <= ? ORDER BY position"
REPLAY_ONE_EVENT = (
    f"INSERT INTO main.evq_events ({EVENT_COLUMNS}) "
    f"SELECT {EVENT_COLUMNS} FROM source.evq_events WHERE position = ?"
)
PROJECTION_ONLY_IN_MAIN = (
    "SELECT {columns} FROM main.{table} EXCEPT SELECT {columns} FROM source.{table}")
PROJECTION_ONLY_IN_SOURCE = (
    "SELECT {columns} FROM source.{table} EXCEPT SELECT {columns} FROM main.{table}")

# --- durable handlers ------------------------------------------------------------------
# A take mints a fresh holder token: it succeeds on a free name, a lapsed lease, or a name
# still held under this consumer's previous token. Every later write is fenced by it.
TAKE_CURSOR = """
INSERT INTO evq_cursors (name, position, holder, lease_until, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until,
       updated_at = excluded.updated_at
WHERE evq_cursors.holder IS NULL OR evq_cursors.holder = ?
   OR evq_cursors.lease_until <= excluded.updated_at
"""
GET_CURSOR = "SELECT position, holder FROM evq_cursors WHERE name = ?"
CURSOR_LEASE = "SELECT holder, lease_until FROM evq_cursors WHERE name = ?"
MOVE_CURSOR = """
UPDATE evq_cursors SET position = max(position, ?), lease_until = ?, updated_at = ?
WHERE name = ? AND holder = ?
"""
# Run on the caller's own connection, in its transaction: only the holder moves the
# cursor, and only forward.
MOVE_CURSOR_IN_CALLERS_TX = """
UPDATE evq_cursors SET position = ?, updated_at = ?
WHERE name = ? AND holder = ? AND position < ?
"""
RELEASE_CURSOR = """
UPDATE evq_cursors SET position = max(position, ?), updated_at = ?, holder = NULL,
       lease_until = NULL
WHERE name = ? AND holder = ?
"""
LIST_CURSORS = (
    "SELECT name, position, holder, lease_until, updated_at FROM evq_cursors ORDER BY name"
)

# --- orchestration -------------------------------------------------------------------
CLAIM_LEADERSHIP = """
INSERT INTO evq_leaders (role, holder, lease_until) VALUES (?, ?, ?)
ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until
WHERE evq_leaders.holder = excluded.holder OR evq_leaders.lease_until <= ?
"""
GET_LEADER = "SELECT holder, lease_until FROM evq_leaders WHERE role = ?"
RELEASE_LEADERSHIP = "DELETE FROM evq_leaders WHERE role = ? AND holder = ?"
SEE_WORKER = ("INSERT OR REPLACE INTO evq_workers (name, jobs, last_seen, host, pid) "
              "VALUES (?, ?, ?, ?, ?)")
GET_WORKER = "SELECT host, pid, last_seen FROM evq_workers WHERE name = ?"
FORGET_WORKER = "DELETE FROM evq_workers WHERE name = ? AND host IS ? AND pid IS ?"
LIVE_WORKER_JOBS = "SELECT jobs FROM evq_workers WHERE last_seen > ?"
# Every worker that announced itself, for people (the dashboard).
LIST_WORKERS = "SELECT name, jobs, last_seen, host, pid FROM evq_workers ORDER BY name"
ORPHAN_CANDIDATES = """
SELECT id, queue, name FROM evq_jobs
WHERE state = 'pending' AND run_at <= ? AND orphaned_at IS NULL
  AND name NOT IN (SELECT value FROM json_each(?))
LIMIT ?
"""
GET_DEFINITION = "SELECT data FROM evq_definitions WHERE name = ?"
LIST_DEFINITIONS = "SELECT name, queue, data FROM evq_definitions ORDER BY name"
GET_SCHEDULE = "SELECT spec, next_at FROM evq_schedules WHERE name = ?"
# Each schedule, its next fire, and its last (the time of the event that last set it, if
# that was a fire: not a registration, which a new or changed spec writes).
LIST_SCHEDULES = """
SELECT s.name, s.spec, s.next_at, (SELECT e.at FROM evq_events AS e
    WHERE e.position = s.updated_position AND e.kind = 'schedule'
      AND json_extract(e.data, '$.reason') IS NOT 'registered')
FROM evq_schedules AS s ORDER BY s.name
"""
CLEANUP_CANDIDATES = """
SELECT id, queue, name, state FROM evq_jobs
WHERE queue = ? AND state IN (SELECT value FROM json_each(?)) AND finished_at <= ?
  AND (hook_state IS NULL OR hook_state = 'done' OR hook_state = 'failed')
  -- not a failed child its parent waits on: it is there to be retried
  AND NOT EXISTS (
      SELECT 1 FROM evq_dependencies AS d JOIN evq_jobs AS p ON p.id = d.parent_id
      WHERE d.child_id = evq_jobs.id AND d.state = 'failed' AND p.state = 'waiting')
LIMIT ?
"""

# --- archiving -----------------------------------------------------------------------
ARCHIVABLE_JOBS = """
SELECT d.id FROM evq_deleted_jobs AS d JOIN evq_events AS e ON e.position = d.deleted_position
WHERE e.at <= ? AND NOT EXISTS (SELECT 1 FROM evq_jobs AS j WHERE j.id = d.id)
"""
# (parent, child) of every flow edge whose `wait` event is still in the ledger.
FLOW_EDGES_IN_LEDGER = """
SELECT e.job_id, json_extract(c.value, '$.id') FROM evq_events AS e,
     json_each(e.data, '$.children') AS c
WHERE e.kind = 'wait'
"""
EVENTS_OF_JOBS = _EVENTS_OF.format(
    ids="SELECT value FROM json_each(?1)",
    also=" AND kind NOT IN (SELECT value FROM json_each(?2))")
FORGET_DELETED_JOBS = "DELETE FROM evq_deleted_jobs WHERE id IN (SELECT value FROM json_each(?))"
DROP_EVENTS_NO_DELETE = "DROP TRIGGER evq_events_no_delete"
DELETE_EVENTS_AT = "DELETE FROM evq_events WHERE position IN (SELECT value FROM json_each(?))"
ARCHIVE_EVENTS = "SELECT position, data FROM evq_events WHERE kind = 'archive' ORDER BY position"
SOURCE_ARCHIVE_EVENTS = (
    "SELECT position, data FROM source.evq_events WHERE kind = 'archive' AND position <= ? "
    "ORDER BY position")
# The hash of each event archiving removed (from a JSON array of [position, hash]).
KEEP_HASHES = """
INSERT INTO evq_archived (position, hash, archive_position)
SELECT value ->> 0, value ->> 1, ? FROM json_each(?)
"""
KEEP_HASH = "INSERT INTO evq_archived (position, hash, archive_position) VALUES (?, ?, ?)"
KEEP_HASH_IF_NEW = (
    "INSERT OR IGNORE INTO evq_archived (position, hash, archive_position) VALUES (?, ?, ?)")
KEPT_HASHES_AFTER = (
    "SELECT position, hash, archive_position FROM evq_archived WHERE position > ? "
    "ORDER BY position LIMIT ?")
KEPT_HASHES_OF_ARCHIVE = (
    "SELECT position, hash FROM evq_archived WHERE archive_position = ? ORDER BY position")
COPY_KEPT_HASHES = (
    "INSERT OR IGNORE INTO main.evq_archived (position, hash, archive_position) "
    "SELECT position, hash, archive_position FROM source.evq_archived "
    "WHERE archive_position <= ?")
