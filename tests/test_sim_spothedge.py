"""B2 "spothedge" (SpotHedge, SkyServe EuroSys'25) on the shipped example scenario, next to the others."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autoscaler.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sim" / "scenario.yaml"
NAMES = ["daemon", "static", "keda", "spothedge"]
DROP_TICK = 24 * 2  # minute 24 at 30 s ticks: sim-east-a's spot capacity falls from 4 to 1 until minute 36


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("spothedge")
    shutil.copytree(EXAMPLE.parent, tmp / "sim")
    scenario = tmp / "sim" / "scenario.yaml"
    scenario.write_text(scenario.read_text() + "policies: [daemon, static, keda, spothedge]\n")
    result = CliRunner().invoke(main, ["simulate", str(scenario), "--out", str(tmp / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    return tmp / "out"


@pytest.fixture(scope="module")
def summary(out: Path) -> dict[str, dict[str, float]]:
    data: dict[str, dict[str, float]] = json.loads((out / "summary.json").read_text())["policies"]
    return data


@pytest.fixture(scope="module")
def timeline(out: Path) -> dict[str, np.ndarray]:
    with (out / "timeline.csv").open() as f:
        header = f.readline().strip().split(",")
        rows = [line.strip().split(",") for line in f if line.startswith("spothedge,")]
    return {
        col: np.array([float(r[i]) for r in rows]) for i, col in enumerate(header) if col not in ("policy", "time")
    }


def test_summary_lists_all_four_with_cost_vs_b3(summary: dict[str, dict[str, float]]) -> None:
    assert list(summary) == NAMES
    for name in NAMES:
        assert summary[name]["cost_vs_b3"] is not None
    assert summary["spothedge"]["cost_vs_b3"] > 0


def test_invariants(summary: dict[str, dict[str, float]], timeline: dict[str, np.ndarray]) -> None:
    s = summary["spothedge"]
    cost = float((timeline["spend_usd_per_hour"] * 30 / 3600).sum())
    assert s["cost_usd"] == pytest.approx(cost)
    assert s["cost_usd"] > 0
    assert s["requests"] == 586
    assert s["requests"] == pytest.approx(s["served"] + s["dropped"] + s["left_in_queue"])
    assert 0 <= s["requests_within_slo"] <= s["served"]
    assert 0 <= s["slo_attainment"] <= 1
    assert s["preemptions"] == 3


def test_keeps_one_spare_spot_replica(timeline: dict[str, np.ndarray]) -> None:
    spot, od = timeline["instances_simulated_spot"], timeline["instances_simulated_on-demand"]
    quiet = (timeline["desired_units"] == 8) & (od == 0) & (np.arange(len(spot)) > 2 * 36)
    assert quiet.sum() > 20  # the tail of the run, spot available again, demand at min_capacity
    # N = 1 instance (8 units at throughput 8) plus the spare, all ready, on spot only
    assert (spot[quiet] == 2).all()
    assert (timeline["ready_units"][quiet] == 16).all()
    assert (timeline["ready_units"][quiet] > timeline["desired_units"][quiet]).all()


def test_falls_back_to_on_demand_on_the_spot_drop_and_returns(timeline: dict[str, np.ndarray]) -> None:
    spot, od = timeline["instances_simulated_spot"], timeline["instances_simulated_on-demand"]
    assert timeline["preemptions"][DROP_TICK] == 3
    assert spot[DROP_TICK] < spot[DROP_TICK - 1]
    assert od[DROP_TICK] > od[DROP_TICK - 1]  # on-demand covers the preempted spot replicas at once
    assert (spot[DROP_TICK : 36 * 2] <= 3).all()  # sim-east-a 1 + sim-east-b 2 while the drop lasts
    # afterwards: back to spot only, the on-demand replicas terminated
    assert od[-1] == 0
    assert spot[-1] >= 2
    assert (od[40 * 2 :] == 0).all()
