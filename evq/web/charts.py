"""The overview's chart: jobs finished per minute over the last hour, stacked by final
state, as bars of an inline SVG drawn on the server (no script, no chart library). Each
bar carries its figures as a tooltip, and the failure rate of each minute is drawn as a
line over them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import attrs

WIDTH, HEIGHT = 720, 140  # the drawing's own units; CSS scales it
STACKED = ("succeeded", "failed", "expired", "cancelled")  # bottom to top


@attrs.frozen
class Bar:
    x: float
    width: float
    parts: list[tuple[str, float, float]]  # (state, y, height)
    title: str


@attrs.frozen
class Chart:
    bars: list[Bar]
    failure_lines: list[str]  # SVG polyline points of the failure rate (0 at the bottom,
    # 100% at the top), one line per run of minutes in which something finished
    most: int  # the tallest bar's jobs, the scale's top
    total: int
    failed: int
    start: str
    end: str
    width: int = WIDTH
    height: int = HEIGHT


def finished_chart(rows: Sequence[tuple[int, str, int]], start: float, step: float,
                   slots: int) -> Chart:
    """The chart of `rows` ((slot, state, n), as Ledger.finished_over_time gives them)
    over `slots` slots of `step` seconds from `start`."""
    counts = [dict.fromkeys(STACKED, 0) for _ in range(slots)]
    for slot, state, n in rows:
        if 0 <= slot < slots and state in counts[slot]:
            counts[slot][state] += n
    most = max((sum(by_state.values()) for by_state in counts), default=0)
    scale = (HEIGHT - 2) / most if most else 0.0
    width = WIDTH / slots
    bars: list[Bar] = []
    lines: list[list[str]] = [[]]
    for slot, by_state in enumerate(counts):
        y = float(HEIGHT)
        parts = []
        for state in STACKED:
            height = by_state[state] * scale
            if height:
                y -= height
                parts.append((state, round(y, 2), round(height, 2)))
        done = sum(by_state.values())
        bad = by_state["failed"] + by_state["expired"]
        at = _clock(start + slot * step)
        figures = ", ".join(f"{by_state[s]} {s}" for s in STACKED if by_state[s])
        bars.append(Bar(round(slot * width, 2), round(width * 0.85, 2), parts,
                        f"{at}: {figures or 'nothing finished'}"))
        if done:
            lines[-1].append(f"{round((slot + 0.42) * width, 2)},"
                             f"{round(HEIGHT - bad / done * (HEIGHT - 2), 2)}")
        elif lines[-1]:  # a minute with nothing finished: the line stops there
            lines.append([])
    total = sum(sum(by_state.values()) for by_state in counts)
    failed = sum(by_state["failed"] + by_state["expired"] for by_state in counts)
    return Chart(bars, [" ".join(line) for line in lines if line], most, total, failed,
                 _clock(start),
                 _clock(start + slots * step))


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M")
