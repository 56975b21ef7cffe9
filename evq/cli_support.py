"""What every `evq` command shares: exit codes, the ledger it works on, argument types,
and the formats of its human output (tables, seconds, rates)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from . import audit
from .errors import EvqError, InvalidInput, LedgerNotFound, UnknownJob
from .ledger import Ledger, open_ledger
from .moments import moment as moment

# Exit codes: stable, scripts rely on them (see evq/cli.py and the README).
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNCHECKED = 4
EXIT_INTERRUPTED = 130


def exit_code(exc: EvqError) -> int:
    """The exit code of a command that failed with `exc`."""
    if isinstance(exc, UnknownJob | LedgerNotFound):
        return EXIT_NOT_FOUND
    return EXIT_USAGE


def out(line: str = "") -> None:
    print(line, flush=True)


def colour() -> bool:
    """Colour on a terminal, plain text when piped or when NO_COLOR is set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def ledger_spec(args: argparse.Namespace) -> str:
    """The ledger a command works on: --db, or EVQ_DB (a file path or sqlite:///path)."""
    value: str | None = args.db or os.environ.get("EVQ_DB")
    if not value:
        raise InvalidInput("no ledger given: pass --db PATH or set EVQ_DB")
    return value


def ledger_of(args: argparse.Namespace, *, busy_timeout: float = 10.0,
              file_mode: int | None = None) -> Ledger:
    """The ledger a command works on (see ledger_spec). Opening it reads nothing: each
    read or write says, with the typed error, if it is missing or not an evq ledger."""
    return open_ledger(ledger_spec(args), busy_timeout=busy_timeout, file_mode=file_mode)


# --- argument types ----------------------------------------------------------------------
def count(text: str) -> int:
    """argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def duration(text: str) -> float:
    """argparse type: seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def choices(text: str, valid: Sequence[str], what: str) -> list[str]:
    """A comma-separated list of names, each one of `valid` (InvalidInput otherwise)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        raise InvalidInput(f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; "
                           f"valid: {', '.join(valid)}")
    return names


# --- human output ------------------------------------------------------------------------
def table(rows: Sequence[Sequence[str]], paint_column: int | None = None,
          colour_on: bool = False) -> list[str]:
    """Rows (the first is the header) as lines of columns aligned on the widest cell, two
    spaces apart, whatever the lengths. `paint_column`: a column of states or kinds to
    colour, in the rows below the header."""
    rows = [[audit.printable(cell) for cell in row] for row in rows]  # as the ledger holds
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if number and paint_column is not None:
            cells[paint_column] = audit.paint(cells[paint_column], row[paint_column],
                                              colour_on)
        lines.append("  ".join(cells).rstrip())
    return lines


def seconds(value: float | None) -> str:
    """A duration people set (a lease, a timeout): as few digits as it has, then "s"
    (1s, 60s, 0.25s); "-" for none."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)  # a ledger edited by hand: shown as it is (escaped by table)
    return f"{value:g}s"


def figure(value: float) -> str:
    """A measured rate or time at a sensible precision: three significant digits, never
    in exponent form (445, 44.5, 4.45, 0.445, 0.0445), whole numbers above 999."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    rounded = float(f"{value:.3g}")
    if abs(rounded) >= 100:
        return f"{value:.0f}"
    decimals = 2 - math.floor(math.log10(abs(rounded)))
    return f"{rounded:.{decimals}f}"
