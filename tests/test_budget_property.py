"""Budget and limits (issue 7): over random demand, prices, stockouts, spot drops and caps, the daemon's fleet on
the simulator never exceeds a global or per-pool cap ($/hour, instances, GPUs) at any tick, counted with booting
capacity (billed from launch) and with each instance at the worst price it can reach (the spot max price when
the launch template sets one, else the on-demand price)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.model import CloudState, Market
from autoscaler.sim import load_scenario
from autoscaler.sim.daemon_policy import DaemonPolicy
from autoscaler.sim.runner import demand_arrivals, plan_ticks
from autoscaler.sim.world import World

TICKS = 30
TYPES = {"sim.a100x8": 8, "sim.l4x1": 1}


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    prices = {}
    for name in TYPES:
        od = draw(st.floats(0.5, 60.0))
        prices[name] = {"on_demand_usd_per_hour": od, "spot_usd_per_hour": od * draw(st.floats(0.1, 0.9))}
    max_price = draw(st.one_of(st.none(), st.floats(0.5, 80.0)))
    pool_limits = {
        k: v
        for k, v in {
            "max_usd_per_hour": draw(st.one_of(st.none(), st.floats(5.0, 300.0))),
            "max_instances": draw(st.one_of(st.none(), st.integers(1, 12))),
            "max_gpus": draw(st.one_of(st.none(), st.integers(1, 64))),
        }.items()
        if v is not None
    }
    return {
        "prices": prices,
        "spot_max_price": max_price,
        "limits": {
            "max_usd_per_hour": draw(st.floats(5.0, 400.0)),
            "max_instances": draw(st.integers(1, 20)),
            "max_gpus": draw(st.integers(1, 128)),
        },
        "pool_limits": pool_limits,
        "minutes": draw(st.lists(st.integers(0, 400), min_size=TICKS // 2, max_size=TICKS // 2)),
        "spot_counts": draw(st.lists(st.integers(0, 6), min_size=4, max_size=4)),
        "stockout": draw(st.tuples(st.integers(0, TICKS * 30), st.integers(30, 600))),
        "candidates": draw(st.permutations([(t, m) for t in TYPES for m in ("spot", "on-demand")])),
        "boot": draw(st.integers(0, 150)),
    }


def write_scenario(d: Path, case: dict[str, Any]) -> Path:
    template: dict[str, Any] = {}
    if case["spot_max_price"] is not None:
        template = {"simulated": {"extra": {"spot_max_price": case["spot_max_price"]}}}
    policy = {
        "daemon": {"id": "budget-prop", "tick_seconds": 30, "limits": case["limits"]},
        "clouds": {
            "simulated": {
                "regions": {"sim-east": ["sim-east-a", "sim-east-b"]},
                "instance_types": {name: {"gpus": gpus, **case["prices"][name]} for name, gpus in TYPES.items()},
            }
        },
        "pools": [
            {
                "name": "chat",
                "min_capacity": 1,
                "max_capacity": 500,
                "metrics": [
                    {"name": "q", "type": "synthetic", "kind": "queue"},
                    {"name": "a", "type": "synthetic", "kind": "arrivals"},
                ],
                "targets": {"queue_per_unit": 1, "latency_slo_seconds": 60, "requests_per_unit_per_second": 0.05},
                "limits": case["pool_limits"],
                "launch_templates": template,
                "candidates": [
                    {"cloud": "simulated", "instance_type": t, "market": m, "throughput": TYPES[t]}
                    for t, m in case["candidates"]
                ],
            }
        ],
    }
    (d / "policy.yaml").write_text(yaml.safe_dump(policy))
    (d / "demand.csv").write_text("minute,count\n" + "".join(f"{i},{n}\n" for i, n in enumerate(case["minutes"])))
    (d / "spot.json").write_text(json.dumps({"metadata": {"gap_seconds": 300}, "data": case["spot_counts"]}))
    start, length = case["stockout"]
    scenario = {
        "policy": "policy.yaml",
        "tick_seconds": 30,
        "duration_seconds": TICKS * 30,
        "demand": {"file": "demand.csv", "format": "minute_counts_csv"},
        "queue": {"requests_per_unit_per_second": 0.05, "timeout_seconds": 120},
        "capacity": [{"file": "spot.json", "instance_type": "sim.a100x8", "market": "spot"}],
        "stockouts": [
            {
                "instance_type": "sim.l4x1",
                "market": "on-demand",
                "start_seconds": start,
                "end_seconds": start + length,
            }
        ],
        "boot": [{"fixed": case["boot"]}],
    }
    path = d / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_no_tick_over_any_cap(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_scenario(write_scenario(Path(tmp), case))
        tick, ticks = plan_ticks(loaded)
        arrivals = demand_arrivals(loaded, tick, ticks)
        world = World(loaded, arrivals, tick, ticks)
        daemon = DaemonPolicy(world)
        on_demand = {name: p["on_demand_usd_per_hour"] for name, p in case["prices"].items()}
        limits, pool_limits = case["limits"], case["pool_limits"]
        for i in range(ticks):
            world.apply_capacity(i)
            outcome = daemon.tick(i)
            billed = [inst for inst in world.listing() if inst.state in (CloudState.PENDING, CloudState.RUNNING)]
            worst = 0.0
            for inst in billed:
                price = world.prices[inst.offering]
                if inst.offering.market == Market.SPOT:
                    ceiling = case["spot_max_price"] or on_demand[inst.offering.instance_type]
                    price = max(price, ceiling)
                worst += price
            gpus = sum(TYPES[inst.offering.instance_type] for inst in billed)
            for caps in (limits, pool_limits):  # one pool: its fleet is the whole fleet
                assert worst <= caps.get("max_usd_per_hour", float("inf")) + 1e-6, (i, worst, caps)
                assert len(billed) <= caps.get("max_instances", 10**9), (i, len(billed), caps)
                assert gpus <= caps.get("max_gpus", 10**9), (i, gpus, caps)
            world.queue.step(float(arrivals[i]), outcome.ready_units)
            world.advance()
