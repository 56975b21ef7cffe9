"""How the tests get a PostgreSQL server, and fresh schemas on it.

The server is the one `EVQ_TEST_POSTGRES_URL` names (default
postgresql://postgres@127.0.0.1:5432/test) if it answers; else, when `initdb` and `pg_ctl`
are found (on PATH or under /usr/lib/postgresql/*/bin) and `EVQ_TEST_POSTGRES_START` is
not `0`, a throwaway cluster started in a temporary folder on a free port (trust auth; as
the user `nobody` when running as root, since PostgreSQL refuses to run as root), stopped
and removed at the end of the session. Without either, every PostgreSQL test is skipped
for one reason, or fails when `EVQ_REQUIRE_POSTGRES=1` (as CI sets it).

`postgres_url` is the session fixture; `new_place` hands out a ledger URL on a fresh
schema, and `drop_handed_out` drops every schema handed out so far. `private_postgres`
starts a throwaway cluster for one test that must restart or stop its server."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import psycopg
import pytest
from psycopg import sql

SKIPPED = "PostgreSQL tests skipped"
ENV_URL = "EVQ_TEST_POSTGRES_URL"
ENV_REQUIRE = "EVQ_REQUIRE_POSTGRES"
ENV_START = "EVQ_TEST_POSTGRES_START"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
UNPRIVILEGED = "nobody"  # who runs a throwaway cluster when the tests run as root


@attrs.define
class Cluster:
    """A throwaway cluster this session started: its folder and how to run its tools."""

    base: Path
    pg_ctl: str
    user: pwd.struct_passwd | None  # None: run as ourselves

    @property
    def data(self) -> Path:
        return self.base / "data"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # Output goes to a file, not a pipe: `pg_ctl start` leaves the server running
        # after it returns, and a server holding our pipe would keep us waiting.
        out = self.base / "tool.out"
        with out.open("w") as sink:
            if self.user is not None:
                done = subprocess.run(args, cwd=self.base, stdout=sink, stderr=sink,
                                      timeout=timeout, user=self.user.pw_uid,
                                      group=self.user.pw_gid, extra_groups=[], check=False)
            else:
                done = subprocess.run(args, cwd=self.base, stdout=sink, stderr=sink,
                                      timeout=timeout, check=False)
        return subprocess.CompletedProcess(args, done.returncode, out.read_text(), "")

    def restart(self, mode: str = "fast") -> None:
        """Restart the server (`pg_ctl restart -m MODE`: `fast` ends every session and
        rolls back open transactions), waiting until it accepts connections again."""
        done = self.run(self.pg_ctl, "-D", str(self.data), "-l", str(self.base / "server.log"),
                        "-m", mode, "-w", "-t", "60", "restart", timeout=90)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {_last_line(done.stdout)}")

    def stop(self) -> None:
        """Stop the server (immediately: its data is thrown away) and remove the folder."""
        if not self.base.exists():
            return
        try:
            stopped = self.run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w",
                               "stop", timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            stopped = False
        if not stopped:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGQUIT)
                time.sleep(1)
        shutil.rmtree(self.base, ignore_errors=True)


@attrs.define
class Found:
    """The server the tests use (`url`), or why there is none (`reason`)."""

    url: str | None = None
    reason: str = ""
    cluster: Cluster | None = None


_found: Found | None = None
_handed_out: list[tuple[str, str]] = []  # (server URL, schema) of each new_place
_counter = itertools.count(1)


def shown(url: str) -> str:
    """`url` with any password replaced, for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else netloc
    query = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"),
                       parts.fragment))


def answers(url: str, timeout: int = 3) -> str | None:
    """None if a server answers at `url`; else why not (one line)."""
    try:
        with psycopg.connect(url, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def find_tools() -> tuple[str, str] | None:
    """(initdb, pg_ctl) of one PostgreSQL installation, if there is one."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl

    def version(bindir: Path) -> tuple[int, ...]:
        name = bindir.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version,
                         reverse=True):
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return str(bindir / "initdb"), str(bindir / "pg_ctl")
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _reachable_by_all(path: Path) -> bool:
    """Whether every folder on the way to `path` lets others pass (o+x)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def start_cluster(initdb: str, pg_ctl: str) -> tuple[Cluster, str]:
    """Start a throwaway cluster; it and its URL. RuntimeError saying why not."""
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            raise RuntimeError(f"running as root and there is no user {UNPRIVILEGED!r} "
                               "to run initdb as") from None
    parent = Path(tempfile.gettempdir())
    if user is not None and not _reachable_by_all(parent):
        parent = Path("/tmp")
    base = Path(tempfile.mkdtemp(prefix="evq-pg-", dir=parent))
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    cluster = Cluster(base, pg_ctl, user)
    try:
        made = cluster.run(initdb, "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
                           "-E", "UTF8", "--no-locale", "--no-sync")
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {_last_line(made.stdout)}")
        port = _free_port()
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
                       f"unix_socket_directories = '{base}'\nfsync = off\n"
                       "synchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 200\n")
        started = cluster.run(pg_ctl, "-D", str(cluster.data), "-l", str(base / "server.log"),
                              "-w", "-t", "60", "start")
        if started.returncode != 0:
            log = base / "server.log"
            text = log.read_text() if log.exists() else started.stdout
            raise RuntimeError(f"pg_ctl start failed: {_last_line(text)}")
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        problem = answers(url, timeout=10)
        if problem is not None:
            raise RuntimeError(f"the started server does not answer: {problem}")
    except BaseException:
        cluster.stop()
        raise
    return cluster, url


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def find_server() -> Found:
    """The server the tests use (found, or started, once per session)."""
    global _found
    if _found is not None:
        return _found
    url = os.environ.get(ENV_URL) or DEFAULT_URL
    problem = answers(url)
    if problem is None:
        _found = Found(url)
        return _found
    where = f"no server at {shown(url)} ({problem})"
    tools = find_tools() if os.environ.get(ENV_START, "1") != "0" else None
    if tools is None:
        _found = Found(reason=f"{where} and no initdb/pg_ctl to start one; "
                              f"set {ENV_URL}")
        return _found
    try:
        cluster, started = start_cluster(*tools)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _found = Found(reason=f"{where}, and starting one with {tools[0]} failed: {exc}; "
                              f"set {ENV_URL}")
        return _found
    atexit.register(cluster.stop)  # in case the session ends without its teardown
    _found = Found(started, cluster=cluster)
    return _found


def server_url() -> str:
    """The server's URL; skips the calling test (fails it if EVQ_REQUIRE_POSTGRES=1) when
    there is none."""
    found = find_server()
    if found.url is not None:
        return found.url
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"PostgreSQL required ({ENV_REQUIRE}=1) but unavailable: "
                    f"{found.reason}", pytrace=False)
    pytest.skip(f"{SKIPPED}: {found.reason}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of the PostgreSQL server the tests use (a database, no schema)."""
    yield server_url()
    found = find_server()
    if found.cluster is not None:
        found.cluster.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Report every skip for want of a server at one place (here), so that the summary
    folds them into one line, not one per test."""
    report: pytest.TestReport = yield
    longrepr = report.longrepr
    if (report.skipped and isinstance(longrepr, tuple)
            and str(longrepr[2]).startswith(f"Skipped: {SKIPPED}")):
        report.longrepr = (__file__, server_url.__code__.co_firstlineno, longrepr[2])
    return report


@attrs.frozen
class Private:
    """A throwaway cluster of one test's own, which it may restart (never the shared
    server: other tests, and other people's, use that one)."""

    cluster: Cluster
    url: str  # its database `postgres`, no schema

    def restart(self, mode: str = "fast") -> None:
        self.cluster.restart(mode)


@pytest.fixture
def private_postgres() -> Iterator[Private]:
    """A PostgreSQL server started for this test alone (initdb + pg_ctl, as in
    `start_cluster`), stopped and removed after it. Skipped, like every PostgreSQL test,
    where initdb/pg_ctl are missing (failed when EVQ_REQUIRE_POSTGRES=1)."""
    tools = find_tools()
    if tools is None:
        _unavailable("no initdb/pg_ctl to start a private server")
    try:
        cluster, url = start_cluster(*tools)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"starting a private server with {tools[0]} failed: {exc}")
    atexit.register(cluster.stop)  # in case the session dies before the teardown
    try:
        yield Private(cluster, url)
    finally:
        cluster.stop()


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"PostgreSQL required ({ENV_REQUIRE}=1) but unavailable: {reason}",
                    pytrace=False)
    pytest.skip(f"{SKIPPED}: {reason}")


def with_schema(url: str, schema: str) -> str:
    """`url` with `?schema=` set to `schema` (other parameters kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    query.append(("schema", schema))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query),
                       parts.fragment))


def split_place(place: str) -> tuple[str, str]:
    """(URL to connect with, schema) of a ledger URL with `?schema=`."""
    parts = urlsplit(place)
    query = parse_qsl(parts.query)
    schemas = [v for k, v in query if k == "schema"]
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return (urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)),
            schemas[-1] if schemas else "evq")


def fresh_schema(prefix: str = "evq_test") -> str:
    """A schema name no other test (in this or another process) uses."""
    return f"{prefix}_{os.getpid()}_{next(_counter)}_{secrets.token_hex(3)}"


def new_place() -> str:
    """A ledger URL on a fresh schema of the server (which must have been found: request
    `postgres_url` first); remembered for `drop_handed_out`."""
    found = find_server()
    if found.url is None:
        raise RuntimeError(f"no PostgreSQL server: {found.reason}")
    schema = fresh_schema()
    _handed_out.append((found.url, schema))
    return with_schema(found.url, schema)


def drop_handed_out() -> None:
    """Drop every schema `new_place` handed out (and forget them)."""
    while _handed_out:
        url, schema = _handed_out.pop()
        drop_schema(url, schema)


def drop_schema(url: str, schema: str, tries: int = 3) -> None:
    """DROP SCHEMA ... CASCADE. A backend still holding a lock on one of its tables (a
    connection someone left in a transaction) is terminated, so this never hangs."""
    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '3s'")
        for attempt in range(tries):
            try:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)))
                return
            except psycopg.errors.LockNotAvailable:
                if attempt == tries - 1:
                    raise
                _terminate_holders(conn, schema)


def _terminate_holders(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM (SELECT DISTINCT l.pid FROM pg_locks l "
        "JOIN pg_class c ON c.oid = l.relation "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND l.pid <> pg_backend_pid()) AS holders", (schema,))
    time.sleep(0.2)
