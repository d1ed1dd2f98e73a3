"""Run a scenario: for each policy under comparison, a fresh world and a tick loop that records a timeline.

Per tick, in this order: the capacity traces move (and preempt), the policy observes and acts, the cloud's
billed instances give the spend rate for the tick, the ready capacity serves the queue, the clock advances.
The spend of tick i is what the cloud holds after the policy acted at its start; cost is its integral.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from autoscaler.sim.baselines import KedaPolicy, StaticPolicy
from autoscaler.sim.daemon_policy import DaemonPolicy
from autoscaler.sim.policy import SimPolicy
from autoscaler.sim.scenario import LoadedScenario
from autoscaler.sim.spothedge import SpotHedgePolicy
from autoscaler.sim.traces import FloatArray, IntArray, arrivals_per_tick
from autoscaler.sim.world import World

# name -> factory; a new name goes in Scenario.policies' Literal too.
POLICIES: dict[str, Callable[[World], SimPolicy]] = {
    "daemon": DaemonPolicy,
    "static": StaticPolicy,
    "keda": KedaPolicy,
    "spothedge": SpotHedgePolicy,
}

COLUMNS = (
    "arrivals",
    "demand_units",
    "desired_units",
    "ready_units",
    "spend_usd_per_hour",
    "queue_depth",
    "latency_estimate_s",
    "served",
    "dropped",
    "preemptions",
)
MARKETS = ("simulated_spot", "simulated_on-demand")


@dataclass
class PolicyRun:
    name: str
    tick_seconds: float
    columns: dict[str, FloatArray]
    instances: dict[str, FloatArray]
    summary: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def ticks_per_second(self) -> float:
        return len(self.columns["arrivals"]) / self.wall_seconds if self.wall_seconds > 0 else math.inf


def plan_ticks(loaded: LoadedScenario) -> tuple[float, int]:
    sc = loaded.scenario
    tick = sc.tick_seconds or loaded.policy.policy.daemon.tick_seconds
    return tick, max(1, math.ceil(sc.duration_seconds / tick - 1e-9))


def demand_arrivals(loaded: LoadedScenario, tick: float, ticks: int) -> IntArray:
    d = loaded.scenario.demand
    return arrivals_per_tick(
        loaded.path(d.file),
        d.format,
        tick_seconds=tick,
        ticks=ticks,
        scale=d.scale,
        offset_seconds=d.offset_seconds,
        loop=d.loop,
    )


def run_scenario(loaded: LoadedScenario, on_progress: Callable[[int], None] | None = None) -> list[PolicyRun]:
    tick, ticks = plan_ticks(loaded)
    arrivals = demand_arrivals(loaded, tick, ticks)
    return [run_policy(loaded, name, arrivals, tick, ticks, on_progress) for name in loaded.scenario.policies]


def run_policy(
    loaded: LoadedScenario,
    name: str,
    arrivals: IntArray,
    tick: float,
    ticks: int,
    on_progress: Callable[[int], None] | None = None,
) -> PolicyRun:
    world = World(loaded, arrivals, tick, ticks)
    policy = POLICIES[name](world)
    # Each tick's values go to plain lists (appends, not numpy item writes) and become float64 arrays at the end:
    # the same values (each converted to float64 once, as an item write would).
    rows: dict[str, list[float]] = {c: [] for c in COLUMNS if c not in ("arrivals", "demand_units")}
    preemptions, desired, ready = rows["preemptions"], rows["desired_units"], rows["ready_units"]
    spend_col, depth, latency = rows["spend_usd_per_hour"], rows["queue_depth"], rows["latency_estimate_s"]
    served_col, dropped = rows["served"], rows["dropped"]
    by_market: dict[str, list[float]] = {m: [] for m in MARKETS}
    market_rows = tuple(by_market.items())
    arrival_list = arrivals[:ticks].tolist()
    rate = loaded.scenario.queue.requests_per_unit_per_second
    served_within = latency_sum = 0.0
    every = loaded.scenario.progress_every
    queue = world.queue
    started = time.perf_counter()
    for i in range(ticks):
        preemptions.append(world.apply_capacity(i))
        outcome = policy.tick(i)
        spend, counts = world.billed()
        result = queue.step(float(arrival_list[i]), outcome.ready_units)
        served_within += result.served_within_slo
        latency_sum += result.latency_sum
        desired.append(outcome.desired)
        ready.append(outcome.ready_units)
        spend_col.append(spend)
        depth.append(result.queue_depth)
        latency.append(queue.latency_estimate())
        served_col.append(result.served)
        dropped.append(result.dropped)
        for market, values in market_rows:
            values.append(counts.get(market, 0))
        world.advance()
        if on_progress is not None and (i + 1) % every == 0:
            on_progress(every)
    if on_progress is not None and ticks % every:
        on_progress(ticks % every)
    wall = time.perf_counter() - started
    cols = {c: np.zeros(ticks) for c in COLUMNS}
    cols["arrivals"][:] = arrivals[:ticks]
    for c, values in rows.items():
        cols[c][:] = values
    inst = {m: np.array(values, dtype=float) for m, values in by_market.items()}
    cols["demand_units"] = cols["arrivals"] / (rate * tick)
    run = PolicyRun(name, tick, cols, inst, wall_seconds=wall)
    run.summary = summarise(run, world, policy, served_within, latency_sum)
    return run


def summarise(
    run: PolicyRun, world: World, policy: SimPolicy, within: float, latency_sum: float
) -> dict[str, Any]:
    c, dt = run.columns, run.tick_seconds
    requests = float(c["arrivals"].sum())
    served = float(c["served"].sum())
    dropped = float(c["dropped"].sum())
    left = world.queue.queue_depth
    short = c["ready_units"] + 1e-9 < c["demand_units"]
    episodes = _runs(short) * dt
    cap = world.policy.daemon.limits.max_usd_per_hour

    def frac(x: float) -> float:
        return x / requests if requests > 0 else 0.0

    return {
        "cost_usd": float((c["spend_usd_per_hour"] * dt / 3600.0).sum()),
        "requests": requests,
        "served": served,
        "requests_within_slo": within,
        "slo_attainment": frac(within) if requests > 0 else 1.0,
        "latency_slo_seconds": world.queue.latency_slo_seconds,
        "mean_latency_s": latency_sum / served if served > 0 else None,
        "dropped": dropped,
        "left_in_queue": left,
        "dropped_fraction": frac(dropped),
        "unserved_fraction": frac(dropped + left),
        "availability": float(1.0 - short.mean()),
        "launches": policy.summary_counts().get("launches", 0),
        "preemptions": int(c["preemptions"].sum()),
        "capacity_errors": policy.summary_counts().get("capacity_errors", 0),
        "recoveries": int(episodes.size),
        "time_to_recover_p50_s": float(np.percentile(episodes, 50)) if episodes.size else None,
        "time_to_recover_p99_s": float(np.percentile(episodes, 99)) if episodes.size else None,
        "max_spend_usd_per_hour": float(c["spend_usd_per_hour"].max()),
        "budget_cap_usd_per_hour": cap,
        "ticks": len(c["arrivals"]),
        "tick_seconds": dt,
        "wall_seconds": run.wall_seconds,
        "ticks_per_second": run.ticks_per_second if run.wall_seconds > 0 else None,
    }


def _runs(mask: npt.NDArray[np.bool_]) -> FloatArray:
    """Lengths (in ticks) of the maximal runs of True in `mask`."""
    if not mask.any():
        return np.zeros(0)
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    out: FloatArray = (edges[1::2] - edges[::2]).astype(np.float64)
    return out
