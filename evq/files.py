"""Files evq creates: private by default, and written whole or not at all.

Ledgers, exports, archives and replays hold job payloads, so every file evq creates is
made with mode 0600 (`FILE_MODE`; a Context or command may ask for another). SQLite gives
a ledger's -wal and -shm files the mode of the ledger itself, so creating the ledger
file first is enough for all three.

A file that is the result of a whole operation (an import, a replay, an export, an
archive) is written under a temporary name in the target's directory and linked into
place only once complete; the target is never overwritten, and nothing is left behind
when the operation fails. evq never deletes or replaces a file it did not create."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from .errors import InvalidInput, LedgerError, LedgerNotFound

FILE_MODE = 0o600
_SIDE_FILES = ("-wal", "-shm", "-journal")


def check_mode(mode: object) -> int:
    """A file mode such as 0o600 or 0o640 (permission bits only)."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise InvalidInput(f"file_mode must be permission bits such as 0o600, got {mode!r}")
    return mode


def create_private(path: str | Path, mode: int = FILE_MODE) -> bool:
    """Create `path` empty with `mode` (whatever the umask) if it does not exist yet.
    Returns whether this call created it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away
    finally:
        os.close(fd)
    return True


def refuse_existing(target: str | Path, what: str, database: bool = False) -> None:
    """Raise if `target` exists: `what` writes a new file and never replaces one. For a
    new `database`, a -wal or -journal file left beside the target is refused too: SQLite
    would apply it to the new file."""
    if os.path.lexists(target):
        raise LedgerError(f"{target} already exists; {what} writes a new file and never "
                          "replaces one: give another path, or move that file away")
    for suffix in ("-wal", "-journal") if database else ():
        if os.path.lexists(f"{target}{suffix}"):
            raise LedgerError(f"{target}{suffix} exists, left by another database; {what} "
                              "writes a new ledger and SQLite would apply that file to it: "
                              "give another path, or move that file away")


@contextlib.contextmanager
def written_whole(target: str | Path, what: str, mode: int = FILE_MODE,
                  database: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`, created with `mode`. When the block ends
    without error the file is linked into place as `target` (refused if `target` appeared
    meanwhile); if the block raises, the temporary file (and any -wal/-shm of it) is
    removed and `target` is untouched. A `database` must be closed (its WAL checkpointed
    into it) before the block ends."""
    final = Path(target)
    refuse_existing(final, what, database)
    if not final.parent.is_dir():
        raise LedgerNotFound(f"cannot write {final}: the directory {final.parent} does not "
                             "exist: create it first, or give another path")
    temporary = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
    create_private(temporary, mode)
    try:
        yield temporary
        try:
            os.link(temporary, final)  # fails instead of replacing an existing file
        except FileExistsError:
            raise LedgerError(f"{final} appeared while {what} was writing it; nothing was "
                              f"replaced (the result was discarded)") from None
    finally:
        for suffix in ("", *_SIDE_FILES):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{temporary}{suffix}")


def sync(path: str | Path) -> None:
    """Write a file's data to the disk (before it takes the name readers trust)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
