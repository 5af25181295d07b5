"""How the report writes numbers: durations rounded once, signed points, intervals, p-values."""

from __future__ import annotations

import pytest

from emogen.experiment.report import write_report
from emogen.experiment.report.numbers import duration, interval, p_text, p_value, signed
from tests.experiment.report_builders import MET, make_results


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(42.25, "42.2 s"), (59.96, "1 min 0 s"), (1619.6, "27 min 0 s"), (1565.0, "26 min 5 s"), (3599.7, "1 h 0 min"), (5430.0, "1 h 30 min")],
)
def test_duration_rounds_once_to_the_shown_unit(seconds, text):
    assert duration(seconds) == text


def test_total_time_never_shows_60_seconds(tmp_path):
    results = make_results(**MET)
    results["seconds"]["total"] = 1619.6
    md = write_report(results, tmp_path)["md"].read_text(encoding="utf-8")
    assert "Total time: 27 min 0 s" in md and "60 s" not in md


def test_signed_points_intervals_and_p_values():
    assert (signed(3.04), signed(-1.0), signed(0.04), signed(-0.04)) == ("+3.0", "\u22121.0", "0.0", "0.0")
    assert interval(-0.03, 0.072) == "\u22123.0 to +7.2" and interval(None, 0.1) == "n/a"
    assert (p_value(0.0004), p_value(0.0123), p_value(None)) == ("< 0.001", "0.012", "n/a")
    assert (p_text(0.0004), p_text(0.0123), p_text(None)) == ("p < 0.001", "p = 0.012", "p n/a")
