"""B3, the offline optimum of a scenario: on the shipped example, through the CLI, and on a hand-made scenario."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoscaler.cli import main
from autoscaler.sim import load_scenario, run_scenario
from autoscaler.sim.b3 import B3, max_wait_ticks, merge_unlimited, offerings, solve_b3
from autoscaler.sim.optimum import OfferingSeries, offline_optimum
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
    # the lower bound: the fine problem's LP relaxation (with boot delays), tighter than the fluid bound
    assert s["lp_lower_bound_usd"] is not None
    assert s["fluid_lower_bound_usd"] == pytest.approx(example_b3.fluid_lower_bound_usd)
    assert s["fluid_lower_bound_usd"] <= s["lp_lower_bound_usd"] == s["lower_bound_usd"]
    assert s["lower_bound_usd"] <= example_b3.result.cost_usd + 1e-6
    # an upper bound on the fine optimum, which HiGHS's dual bound bounds from below
    assert s["cost_usd"] >= example_b3.result.lower_bound_usd - 1e-6


def test_example_b3_costs_no_more_than_the_daemon(example_b3: B3) -> None:
    (daemon,) = run_scenario(load_scenario(EXAMPLE))
    assert example_b3.result.cost_usd <= daemon.summary["cost_usd"] + 1e-9


BASELINES = ("static", "keda", "spothedge")


@pytest.fixture(scope="module")
def example_all_policies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The example scenario with every policy, run through the CLI once: (output directory, CLI output)."""
    base = tmp_path_factory.mktemp("all")
    text = EXAMPLE.read_text()
    text = text.replace("policy: policy.yaml", f"policy: {EXAMPLE.parent / 'policy.yaml'}")
    text = text.replace("file: demand.csv", f"file: {EXAMPLE.parent / 'demand.csv'}")
    text = text.replace("file: spot_a.json", f"file: {EXAMPLE.parent / 'spot_a.json'}")
    text += "policies: [daemon, static, keda, spothedge]\n"
    (base / "scenario.yaml").write_text(text)
    out = base / "out"
    result = CliRunner().invoke(
        main, ["simulate", str(base / "scenario.yaml"), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_cli_writes_the_optimum(example_all_policies: tuple[Path, str], example_b3: B3) -> None:
    out, output = example_all_policies
    assert "B3 (offline optimum" in output
    summary = json.loads((out / "summary.json").read_text())
    opt = summary["optimum"]
    for key in (
        "cost_usd", "lower_bound_usd", "status", "aggregated_factor", "unmet_unit_ticks", "max_wait_ticks",
        "solve_seconds",
    ):  # fmt: skip
        assert key in opt
    assert opt["cost_usd"] == pytest.approx(example_b3.result.cost_usd)
    assert opt["max_wait_ticks"] == 1  # SLO 60 s, service 5 s, 30 s ticks
    for name, pol in summary["policies"].items():
        assert pol["cost_vs_b3"] == pytest.approx(pol["cost_usd"] / opt["cost_usd"]), name


def _timeline(out: Path) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    with (out / "timeline.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["policy"], []).append(row)
    return rows


def test_every_policys_cost_is_the_integral_of_its_spend_rate(example_all_policies: tuple[Path, str]) -> None:
    out, _ = example_all_policies
    summary = json.loads((out / "summary.json").read_text())
    timeline = _timeline(out)
    assert set(timeline) == {"daemon", *BASELINES}
    for name, rows in timeline.items():
        tick = summary["policies"][name]["tick_seconds"]
        integral = sum(float(r["spend_usd_per_hour"]) * tick / 3600.0 for r in rows)
        assert len(rows) == summary["policies"][name]["ticks"] == 120
        assert integral > 0
        assert summary["policies"][name]["cost_usd"] == pytest.approx(integral, rel=1e-5), name


def test_b3_costs_no_more_than_any_baseline(example_all_policies: tuple[Path, str]) -> None:
    out, _ = example_all_policies
    summary = json.loads((out / "summary.json").read_text())
    b3 = summary["optimum"]
    assert b3["status"] == "optimal" and b3["unmet_unit_ticks"] == 0
    for name in BASELINES:
        assert b3["cost_usd"] <= summary["policies"][name]["cost_usd"] + 1e-9, name
        assert summary["policies"][name]["cost_vs_b3"] >= 1.0, name


def test_no_daemon_tick_over_the_budget_cap(example_all_policies: tuple[Path, str]) -> None:
    """The daemon honours daemon.limits.max_usd_per_hour at every tick (the baselines do not know the cap)."""
    out, _ = example_all_policies
    summary = json.loads((out / "summary.json").read_text())
    cap = summary["policies"]["daemon"]["budget_cap_usd_per_hour"]
    assert cap == 150
    spend = [float(r["spend_usd_per_hour"]) for r in _timeline(out)["daemon"]]
    assert max(spend) <= cap + 1e-9
    assert max(spend) == pytest.approx(summary["policies"]["daemon"]["max_spend_usd_per_hour"], rel=1e-5)


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
    # SLO 60 s, 60 s ticks, no service time: a request may wait one tick (W = 1).
    assert b3.max_wait_ticks == 1
    # Demand 3 at ticks 3-4, boot 2 ticks. Two instances launched at tick 1 (ready at 3) serve 2 of tick 3's
    # 3 requests at tick 3, its third and 1 of tick 4's at tick 4 (one tick late: within the SLO), and tick
    # 4's last 2 at tick 5: 2 x (2 booting + 3 ready) instance-ticks at $10/h = 10 x 10 / 60 = $1.67. Three
    # instances (no waiting) would pay 3 x (2 + 2) = 12 instance-ticks ($2.00); one cannot serve 6 requests
    # in the 3 ticks 3..5.
    assert b3.result.cost_usd == pytest.approx(10 * 10 / 60)
    assert b3.result.unmet_unit_ticks == 0.0
    # Fluid: no boot, fractional: 6 requests served at 1 unit per tick = 6 unit-ticks x 10 / 60 = $1.00.
    assert b3.fluid_lower_bound_usd == pytest.approx(1.0)
    assert b3.result.status == "optimal"


def test_merging_identical_unlimited_offerings_keeps_the_optimum() -> None:
    unlimited = [10**9] * 8
    od_a = OfferingSeries("od-a", 3.0, 1.0, unlimited, 2)
    od_b = OfferingSeries("od-b", 3.0, 1.0, unlimited, 2)
    od_big = OfferingSeries("od-big", 3.0, 2.0, unlimited, 2)  # other units: kept
    spot = OfferingSeries("spot", 1.0, 1.0, [1, 1, 0, 0, 1, 1, 1, 1], 2)  # capacity-bound: kept
    merged = merge_unlimited([od_a, od_b, od_big, spot])
    assert [o.name for o in merged] == ["od-a", "od-big", "spot"]
    demand = [1.0, 2.0, 3.0, 3.0, 1.0, 0.0, 2.0, 2.0]
    full = offline_optimum(demand, [od_a, od_b, od_big, spot], 3600.0, max_wait_ticks=1)
    assert offline_optimum(demand, merged, 3600.0, max_wait_ticks=1).cost_usd == pytest.approx(full.cost_usd)


@pytest.mark.parametrize(
    ("slo", "service", "timeout", "tick", "wait"),
    [
        (60, 5, 180, 30, 1),  # the example: 55 s of slack -> one 30 s tick
        (60, 0, 180, 60, 1),  # exactly one tick
        (300, 0, 120, 30, 4),  # the timeout binds first
        (4, 5, 180, 30, 0),  # an SLO below the service time: no waiting at all
    ],
)
def test_max_wait_ticks_follows_the_queue_models_slo(
    tmp_path: Path, slo: float, service: float, timeout: float, tick: float, wait: int
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "demand.csv").write_text("minute,count\n0,1\n")
    scenario = SCENARIO.replace("tick_seconds: 60", f"tick_seconds: {tick}").replace(
        "queue: {requests_per_unit_per_second: 0.016666666666666666}",
        f"queue: {{requests_per_unit_per_second: 1, service_seconds: {service}, timeout_seconds: {timeout}, "
        f"latency_slo_seconds: {slo}}}",
    )
    (tmp_path / "scenario.yaml").write_text(scenario)
    assert max_wait_ticks(load_scenario(tmp_path / "scenario.yaml"), tick) == wait
