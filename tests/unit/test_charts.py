"""The overview's chart: bars stacked by final state on one scale, and the failure share
drawn only across minutes in which something finished."""

from __future__ import annotations

from evq.web.charts import HEIGHT, finished_chart


def test_bars_stack_by_state_on_the_tallest_bars_scale() -> None:
    chart = finished_chart([(0, "succeeded", 6), (0, "failed", 2), (2, "succeeded", 4)],
                           0.0, 60.0, 3)
    first, empty, third = chart.bars
    assert [state for state, _, _ in third.parts] == ["succeeded"]
    heights = {state: height for state, _, height in first.parts}
    assert heights["succeeded"] == 3 * heights["failed"]
    assert sum(heights.values()) == HEIGHT - 2  # the tallest bar fills the chart
    assert empty.parts == [] and "nothing finished" in empty.title
    assert (chart.total, chart.failed, chart.most) == (12, 2, 8)
    assert "6 succeeded, 2 failed" in first.title


def test_the_failure_line_breaks_where_nothing_finished() -> None:
    rows = [(0, "failed", 5), (1, "succeeded", 5), (58, "succeeded", 5), (59, "failed", 1),
            (59, "succeeded", 3)]
    chart = finished_chart(rows, 0.0, 60.0, 60)
    assert len(chart.failure_lines) == 2  # minutes 0-1, then 58-59: not joined across
    first, last = ([point.split(",") for point in line.split()]
                   for line in chart.failure_lines)
    assert [float(y) for _, y in first] == [2.0, float(HEIGHT)]  # 100% failed, then none
    assert float(last[1][1]) == HEIGHT - 0.25 * (HEIGHT - 2)  # 1 of 4 failed
