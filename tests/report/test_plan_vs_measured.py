"""The report's planned-vs-measured table: resident peak, step and run wall time, with the error."""

from __future__ import annotations

import pytest

from shoestring.report.render import plan_vs_measured


def test_rows_show_planned_measured_and_the_error() -> None:
    mib = 2**20
    comparison = {"predicted": {"resident_peak_bytes": 2200 * mib, "step_seconds": 3.0, "run_seconds": 100.0,
                                "live_peak_bytes": 900 * mib},
                  "measured": {"resident_peak_bytes": 2000 * mib, "step_seconds": 4.0, "run_seconds": 125.0,
                               "peak_memory_bytes": 1000 * mib}}
    rows = plan_vs_measured(comparison)
    assert list(rows) == ["resident peak (RSS)", "step time (wall)", "training run (wall)", "live tensors above start"]
    assert rows["resident peak (RSS)"] == {"planned (MiB)": 2200.0, "measured (MiB)": 2000.0, "error %": 10.0}
    assert rows["step time (wall)"]["error %"] == pytest.approx(-25.0)
    assert rows["live tensors above start"]["error %"] == pytest.approx(-10.0)
    # An older plan without a resident figure: only what both sides have.
    old = plan_vs_measured({"predicted": {"peak_memory_bytes": 900 * mib, "step_seconds": 2.0},
                            "measured": {"peak_memory_bytes": 1000 * mib, "step_seconds": 2.0}})
    assert list(old) == ["step time (wall)", "live tensors above start"]
    assert plan_vs_measured({}) == {}
