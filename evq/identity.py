"""Worker names: stable across restarts, never shared by two live workers.

A worker's default name is its host and the queues it serves (`web1:mail:reports`), so
a plain restart of the same program comes back under the same name and can take back
what its previous run was running (`retry_jobs_running_before_restart`). A second live
worker with the same host and queues gets the next free name (`web1:mail:reports-2`).
A name is free when the registry of live workers does not know it, or when its holder
is gone: a process of this host that no longer exists (or this very process, whose
worker of that name has stopped), or, on another host, one unseen for `STALE_AFTER`.
The choice is made inside the transaction that announces the worker, so two workers
starting at once cannot both take one name.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
from collections.abc import Iterator, Sequence

from .ledger.records import Holder

HOST = socket.gethostname()  # as the registry of live workers records each worker's host

STALE_AFTER = 60.0  # seconds unseen after which a worker of another host counts as gone
MOST_NAMES = 1000  # live workers with one host and one set of queues, at most

_unique = itertools.count(1)
# Names held by workers running in this process (the registry shows their pid as alive).
live_here: set[str] = set()


def unique_name() -> str:
    """A name for this process alone (`host:pid:n`), as orchestrators use."""
    return f"{_host()}:{os.getpid()}:{next(_unique)}"


def default_names(queues: Sequence[str]) -> Iterator[str]:
    """The stable default name of a worker of these queues, then its numbered variants."""
    served = ":".join(queues) or "none"
    if len(served) > 96:  # names are at most 128 characters: a digest stands in
        served = "queues-" + hashlib.sha256(served.encode()).hexdigest()[:16]
    base = f"{_host()}:{served}"
    yield base
    for number in range(2, MOST_NAMES + 1):
        yield f"{base}-{number}"


def holder_gone(name: str, holder: Holder, now: float) -> bool:
    """Whether the worker that last announced `name` has stopped."""
    if holder.host != HOST or holder.pid is None:
        return holder.last_seen < now - STALE_AFTER
    if holder.pid == os.getpid():
        return name not in live_here
    return not _process_exists(holder.pid)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _host() -> str:
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
    return host.lstrip(".-")[:24] or "host"
