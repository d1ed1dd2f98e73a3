"""B3, the offline optimum of a scenario: on the shipped example, through the CLI, and on a hand-made scenario."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoscaler.cli import main
from autoscaler.sim import load_scenario, run_scenario
from autoscaler.sim.b3 import B3, offerings, solve_b3
from autoscaler.sim.runner import demand_arrivals, plan_ticks

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sim" / "scenario.yaml"


@pytest.fixture(scope="module")
def example_b3() -> B3:
    loaded = load_scenario(EXAMPLE)
    tick, ticks = plan_ticks(loaded)
    return solve_b3(loaded, demand_arrivals(loaded, tick, ticks), tick)


def test_example_offerings_follow_the_worlds_capacity() -> None:
    loaded = load_scenario(EXAMPLE)
    tick, ticks = plan_ticks(loaded)
    offers = {o.name: o for o in offerings(loaded, demand_arrivals(loaded, tick, ticks), tick, ticks)}
    assert set(offers) == {f"simulated/sim-east-{z}/sim.a100x8/{m}" for z in "ab" for m in ("spot", "on-demand")}
    assert all(o.units == 8 for o in offers.values())
    assert offers["simulated/sim-east-a/sim.a100x8/spot"].usd_per_hour == 13.11
    assert offers["simulated/sim-east-a/sim.a100x8/on-demand"].boot_ticks == 3  # fixed 90 s
    assert offers["simulated/sim-east-a/sim.a100x8/spot"].boot_ticks == 3  # uniform [60, 120]: mean 90 s
    assert set(offers["simulated/sim-east-b/sim.a100x8/spot"].available) == {2}  # the policy's static rule
    spot_a = offers["simulated/sim-east-a/sim.a100x8/spot"].available
    assert spot_a[24 * 2] == 1  # the trace drops to 1 at minute 24
    od_b = offers["simulated/sim-east-b/sim.a100x8/on-demand"].available
    assert od_b[1320 // 30] == 0 and od_b[1680 // 30 - 1] == 0 and od_b[1680 // 30] > 0  # the stockout


def test_example_fluid_bound_below_b3(example_b3: B3) -> None:
    s = example_b3.summary()
    assert s["status"] == "optimal"
    assert s["aggregated_factor"] == 1
    assert s["unmet_unit_ticks"] == 0
    assert 0 < s["fluid_lower_bound_usd"] <= s["lower_bound_usd"] + 1e-9
    assert s["lower_bound_usd"] <= s["cost_usd"] + 1e-9


def test_example_aggregated_is_an_upper_bound(example_b3: B3) -> None:
    loaded = load_scenario(EXAMPLE)
    tick, ticks = plan_ticks(loaded)
    coarse = solve_b3(loaded, demand_arrivals(loaded, tick, ticks), tick, max_ticks=40)
    s = coarse.summary()
    assert s["aggregated_factor"] == 3
    assert s["cost_is_upper_bound"]
    assert s["lower_bound_usd"] == pytest.approx(example_b3.fluid_lower_bound_usd)
    assert s["cost_usd"] >= example_b3.result.cost_usd - 1e-6


@pytest.mark.xfail(
    strict=True,
    reason="B3 covers every tick's arrivals within the tick; the daemon leaves ~36% of ticks short "
    "(availability 0.642, SLO attainment 0.30) and so spends less than B3 on the example",
)
def test_example_b3_costs_no_more_than_the_daemon(example_b3: B3) -> None:
    (daemon,) = run_scenario(load_scenario(EXAMPLE))
    assert example_b3.result.cost_usd <= daemon.summary["cost_usd"] + 1e-9


def test_cli_writes_the_optimum(tmp_path: Path, example_b3: B3) -> None:
    result = CliRunner().invoke(main, ["simulate", str(EXAMPLE), "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "B3 (offline optimum" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    opt = summary["optimum"]
    for key in ("cost_usd", "lower_bound_usd", "status", "aggregated_factor", "unmet_unit_ticks", "solve_seconds"):
        assert key in opt
    assert opt["cost_usd"] == pytest.approx(example_b3.result.cost_usd)
    daemon = summary["policies"]["daemon"]
    assert daemon["cost_vs_b3"] == pytest.approx(daemon["cost_usd"] / opt["cost_usd"])


POLICY = """\
daemon: {id: hand, tick_seconds: 60}
clouds:
  simulated:
    regions: {r: [r-a]}
    boot_seconds: 0
    instance_types:
      t1: {gpus: 1, on_demand_usd_per_hour: 10}
pools:
  - name: p
    max_capacity: 10
    targets: {latency_slo_seconds: 60}
    candidates:
      - {cloud: simulated, instance_type: t1, market: on-demand, throughput: 1}
"""

SCENARIO = """\
policy: policy.yaml
tick_seconds: 60
duration_seconds: 600
demand: {file: demand.csv, format: minute_counts_csv}
queue: {requests_per_unit_per_second: 0.016666666666666666}
boot:
  - {fixed: 120}
"""


def test_hand_made_scenario(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    counts = [0, 0, 0, 3, 3, 0, 0, 0, 0, 0]
    rows = "".join(f"{m},{c}\n" for m, c in enumerate(counts))
    (tmp_path / "demand.csv").write_text("minute,count\n" + rows)
    loaded = load_scenario(tmp_path / "scenario.yaml")
    tick, ticks = plan_ticks(loaded)
    arrivals = demand_arrivals(loaded, tick, ticks)
    assert arrivals.tolist() == counts  # 1 request/min per unit, 60 s ticks: demand = count units
    b3 = solve_b3(loaded, arrivals, tick)
    # Demand 3 at ticks 3-4, boot 2 ticks: launch 3 at tick 1, pay 2 booting + 2 ready ticks each, at $10/h.
    # (Holding a warm fleet from tick 0 would pay 5 ticks each.) 3 x 4 x 10 / 60 = $2.00.
    assert b3.result.cost_usd == pytest.approx(2.0)
    # Fluid: no boot, 3 units x 2 ticks x 10 / 60 = $1.00.
    assert b3.fluid_lower_bound_usd == pytest.approx(1.0)
    assert b3.result.status == "optimal"
