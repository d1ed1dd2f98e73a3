"""The baselines (B0 "static", B1 "keda") on the shipped example scenario, next to the daemon."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autoscaler.cli import main
from autoscaler.sim import PolicyRun, load_scenario, run_scenario

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sim" / "scenario.yaml"
NAMES = ["daemon", "static", "keda"]


@pytest.fixture(scope="module")
def runs() -> dict[str, PolicyRun]:
    loaded = load_scenario(EXAMPLE)
    loaded = replace(loaded, scenario=loaded.scenario.model_copy(update={"policies": NAMES}))
    return {r.name: r for r in run_scenario(loaded)}


def test_each_policy_runs_on_the_same_demand(runs: dict[str, PolicyRun]) -> None:
    assert list(runs) == NAMES
    for run in runs.values():
        np.testing.assert_array_equal(run.columns["arrivals"], runs["daemon"].columns["arrivals"])


@pytest.mark.parametrize("name", NAMES)
def test_invariants_hold(runs: dict[str, PolicyRun], name: str) -> None:
    run = runs[name]
    s, spend = run.summary, run.columns["spend_usd_per_hour"]
    assert s["cost_usd"] == pytest.approx(float((spend * run.tick_seconds / 3600).sum()))
    assert s["cost_usd"] > 0
    assert s["requests"] == 586
    assert s["requests"] == pytest.approx(s["served"] + s["dropped"] + s["left_in_queue"])
    assert 0 <= s["requests_within_slo"] <= s["served"]
    assert 0 <= s["slo_attainment"] <= 1


@pytest.mark.parametrize("name", ["static", "keda"])
def test_baselines_are_on_demand_only(runs: dict[str, PolicyRun], name: str) -> None:
    run = runs[name]
    assert run.instances["simulated_spot"].max() == 0
    assert run.instances["simulated_on-demand"].max() > 0


def test_static_keeps_a_fixed_fleet_that_covers_the_peak(runs: dict[str, PolicyRun]) -> None:
    run = runs["static"]
    c, fleet = run.columns, run.instances["simulated_on-demand"]
    peak_units = c["demand_units"].max()
    throughput = 8  # the example's on-demand candidate
    count = math.ceil(peak_units / throughput)
    assert (fleet == count).all()  # launched at t=0, nothing fails on demand in the example
    assert (c["desired_units"] == count * throughput).all()
    assert c["desired_units"][0] >= peak_units
    booted = c["ready_units"] > 0
    assert (c["ready_units"][booted] >= peak_units).all()
    assert run.summary["launches"] == count
    assert run.summary["dropped"] == 0
    assert np.ptp(c["spend_usd_per_hour"]) == 0


def test_keda_follows_the_queue_with_its_cooldown(runs: dict[str, PolicyRun]) -> None:
    run = runs["keda"]
    c, dt = run.columns, run.tick_seconds
    assert dt == 30  # one poll per tick
    # desired at tick i is the queue depth left at the end of tick i-1 over queue_per_unit (0.5), in [8, 96]
    depth_seen = np.concatenate([[0.0], c["queue_depth"][:-1]])
    expected = np.clip(np.ceil(depth_seen / 0.5 - 1e-9), 8, 96)
    np.testing.assert_array_equal(c["desired_units"], expected)
    # the fleet grows at once, and shrinks only 300 s or more after the last growth
    fleet = run.instances["simulated_on-demand"]
    wanted = np.ceil(expected / 8)
    last_up = -math.inf
    for i in range(1, len(fleet)):
        if wanted[i] > wanted[i - 1]:
            assert fleet[i] == wanted[i]
        if fleet[i] > fleet[i - 1]:
            last_up = i * dt
        elif fleet[i] < fleet[i - 1]:
            assert i * dt - last_up >= 300
    assert fleet.max() == 12  # the burst drives it to max_capacity (96 units)
    assert fleet[-1] < fleet.max()


def test_cli_summary_has_all_three(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE.parent, tmp_path / "sim")
    scenario = tmp_path / "sim" / "scenario.yaml"
    scenario.write_text(scenario.read_text() + "policies: [daemon, static, keda]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["simulate", str(scenario), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(NAMES) <= set(summary["policies"])
    for name in NAMES:
        assert summary["policies"][name]["requests"] == 586
