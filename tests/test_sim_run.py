"""End to end on the shipped example scenario: invariants of the run, and the CLI writing its three files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autoscaler.cli import main
from autoscaler.sim import PolicyRun, load_scenario, run_scenario

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sim" / "scenario.yaml"


@pytest.fixture(scope="module")
def run() -> PolicyRun:
    (only,) = run_scenario(load_scenario(EXAMPLE))
    return only


def test_cost_is_the_integral_of_the_spend_rate(run: PolicyRun) -> None:
    spend = run.columns["spend_usd_per_hour"]
    assert run.summary["cost_usd"] == pytest.approx(float((spend * run.tick_seconds / 3600).sum()))
    assert run.summary["cost_usd"] > 0


def test_no_tick_over_the_budget_cap(run: PolicyRun) -> None:
    cap = run.summary["budget_cap_usd_per_hour"]
    assert cap == 150
    assert run.columns["spend_usd_per_hour"].max() <= cap + 1e-9


def test_every_request_is_served_dropped_or_still_queued(run: PolicyRun) -> None:
    s = run.summary
    assert s["requests"] == 586  # the shipped trace, scale 1
    assert s["requests"] == pytest.approx(s["served"] + s["dropped"] + s["left_in_queue"])
    assert 0 <= s["requests_within_slo"] <= s["served"]
    assert 0 <= s["slo_attainment"] <= 1


def test_the_daemon_scales_up_on_the_burst(run: PolicyRun) -> None:
    c = run.columns
    minutes = np.arange(len(c["arrivals"])) * run.tick_seconds / 60
    before = c["ready_units"][(minutes >= 10) & (minutes < 19)].max()
    during = c["ready_units"][(minutes >= 21) & (minutes < 30)].max()
    # The $150/h cap binds during the burst (7 instances at their worst prices: 6 spot at the $16 max price and
    # one on-demand), so the burst gets what the budget allows, not the ~9 instances it asks for.
    spot = 4 + 2  # sim-east-a's trace before minute 24, sim-east-b's static 2
    on_demand = (150 - spot * 16.0) // 32.77
    assert during >= 2 * before
    assert during == 8 * (spot + on_demand)
    assert c["desired_units"].max() > c["desired_units"][0]
    # and back down after it
    assert c["ready_units"][-10:].max() < during


def test_the_capacity_trace_preempts_and_the_stockout_refuses(run: PolicyRun) -> None:
    s = run.summary
    assert s["preemptions"] > 0
    preempted_at = np.flatnonzero(run.columns["preemptions"]) * run.tick_seconds
    assert set(preempted_at) <= {24 * 60}  # the spot trace drops to 1 at minute 24
    assert s["capacity_errors"] > 0
    assert s["launches"] > 0


def test_cli_writes_summary_timeline_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["simulate", str(EXAMPLE), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "ticks/s" in result.output
    summary = json.loads((out / "summary.json").read_text())
    daemon = summary["policies"]["daemon"]
    for key in (
        "cost_usd",
        "requests",
        "requests_within_slo",
        "slo_attainment",
        "dropped_fraction",
        "unserved_fraction",
        "availability",
        "launches",
        "preemptions",
        "capacity_errors",
        "time_to_recover_p50_s",
        "time_to_recover_p99_s",
    ):
        assert key in daemon
    with (out / "timeline.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120
    assert {"policy", "time", "demand_units", "ready_units", "spend_usd_per_hour", "queue_depth"} <= set(rows[0])
    assert "instances_simulated_spot" in rows[0] and "latency_estimate_s" in rows[0]
    integral = sum(float(r["spend_usd_per_hour"]) * 30 / 3600 for r in rows)
    assert daemon["cost_usd"] == pytest.approx(integral, rel=1e-5)
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_a_bad_scenario_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        EXAMPLE.read_text()
        .replace("policy: policy.yaml", f"policy: {EXAMPLE.parent / 'policy.yaml'}")
        .replace("tick_seconds: 30", "tick_seconds: -1")
        .replace("seed: 1", "seed: 1\nsurprise: true")
    )
    result = CliRunner().invoke(main, ["simulate", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert any(f"{bad}:" in line and "tick_seconds" in line for line in lines)
    assert any("unknown key 'surprise'" in line for line in lines)


def test_cli_reports_a_missing_trace_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = EXAMPLE.read_text().replace("policy: policy.yaml", f"policy: {EXAMPLE.parent / 'policy.yaml'}")
    bad.write_text(text.replace("file: demand.csv", "file: nowhere.csv"))
    result = CliRunner().invoke(main, ["simulate", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "demand.file: no such file" in result.output
