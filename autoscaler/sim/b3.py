"""B3, the offline optimum of a scenario: the cheapest fleet schedule with perfect foresight (see optimum.py).

The scenario is turned into the optimum's inputs here; the solving is :mod:`autoscaler.sim.optimum`'s.

* **Demand** in capacity units per tick: the tick's arrivals / (``queue.requests_per_unit_per_second`` x
  ``tick_seconds``) (the capacity that would serve them within the tick). The optimum has perfect foresight
  of it (and of the capacity below); it does not honour the pool's ``min_capacity`` or the budget cap.
* **Waiting within the SLO**: requests queue FIFO and may wait up to ``W`` ticks (:func:`max_wait_ticks`: the
  longest wait the queue model still counts within the latency SLO, and never past the timeout), so the
  backlog is carried between ticks and the cumulative work served by tick ``t`` must reach the cumulative
  arrivals up to ``t - W``; nothing is dropped (work the capacity available cannot serve in time is reported
  as ``unmet_unit_ticks``). A schedule B3 finds serves every request within the SLO in the queue model.
* **Offerings**: the pool's candidates on the simulated cloud, in every zone, at the world's prices (the
  scenario's ``prices`` over the policy's), units = the candidate's ``throughput``; boot ticks = the
  scenario's boot delay for the offering (``fixed``, else the distribution's mean; the policy's
  ``boot_seconds`` when no rule matches), rounded up to whole ticks.
* **Availability** per tick: what the world's cloud would allow at that tick (its capacity rules, set by a
  fresh world's :meth:`World.apply_capacity`: a capacity trace's count, a stockout window's 0, the policy's
  static ``clouds.simulated.capacity``), unlimited where no rule applies.

Runs longer than :data:`MAX_TICKS` ticks are solved on blocks of ``factor`` ticks (:func:`aggregate.aggregate`)
and mapped back (:func:`aggregate.disaggregate`): ``cost_usd`` is then an **upper bound** on the optimum and
``lower_bound_usd`` the fluid lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoscaler.model import OfferingKey
from autoscaler.observe import candidate_for
from autoscaler.sim.aggregate import aggregate, disaggregate
from autoscaler.sim.optimum import (
    OfferingSeries,
    OptimumResult,
    fluid_lower_bound,
    offline_optimum,
)
from autoscaler.sim.runner import PolicyRun, demand_arrivals, plan_ticks
from autoscaler.sim.scenario import LoadedScenario
from autoscaler.sim.traces import FloatArray, IntArray
from autoscaler.sim.world import World

MAX_TICKS = 2000  # longer runs are aggregated to at most this many blocks
TIME_LIMIT_SECONDS = 60.0
# HiGHS stops once its best schedule is within this of its dual bound (reported as lower_bound_usd). With a
# backlog the last 0.1% of the gap costs HiGHS ~4x the time of the first 99.5% (the one-hour example: ~2 s to
# 0.5%, ~4-12 s to 0.1% on a loaded 2-core machine).
MIP_REL_GAP = 5e-3
# Aggregated runs up to this many ticks also solve the fine problem's LP relaxation (boot delays and the
# backlog kept, instances fractional): a lower bound far tighter than the fluid one (no boot delay) on bursty
# demand; ~3 s for 2,880 ticks and 4 offerings.
LP_BOUND_MAX_TICKS = 6000
# Aggregated runs with a backlog and at most this many ticks per block solve the carry model (the backlog crosses
# block boundaries: aggregate.py); coarser blocks take the flush model (no backlog crosses a block boundary),
# whose rows do not grow with the block.
CARRY_MAX_FACTOR = 12
UNLIMITED = 10**9  # availability where no capacity rule applies


@dataclass(frozen=True)
class B3:
    result: OptimumResult
    fluid_lower_bound_usd: float
    aggregated_factor: int  # 1: solved on the scenario's own ticks
    max_wait_ticks: int = 0  # how many ticks a request may wait within the SLO
    lp_lower_bound_usd: float | None = None  # aggregated runs: the fine problem's LP relaxation (if solved)

    def summary(self) -> dict[str, Any]:
        r = self.result
        lower = self.fluid_lower_bound_usd if self.aggregated_factor > 1 else r.lower_bound_usd
        if self.aggregated_factor > 1 and self.lp_lower_bound_usd is not None:
            lower = max(lower, self.lp_lower_bound_usd)
        return {
            "cost_usd": r.cost_usd,
            "lower_bound_usd": lower,
            "fluid_lower_bound_usd": self.fluid_lower_bound_usd,
            "lp_lower_bound_usd": self.lp_lower_bound_usd,
            "status": r.status,
            "aggregated_factor": self.aggregated_factor,
            "cost_is_upper_bound": self.aggregated_factor > 1 or r.status != "optimal",
            "unmet_unit_ticks": r.unmet_unit_ticks,
            "max_wait_ticks": self.max_wait_ticks,
            "solve_seconds": r.solve_seconds,
        }


def demand_units(loaded: LoadedScenario, arrivals: IntArray, tick_seconds: float) -> FloatArray:
    """Capacity units that serve each tick's arrivals within the tick (no backlog)."""
    rate = loaded.scenario.queue.requests_per_unit_per_second
    out: FloatArray = np.asarray(arrivals, dtype=np.float64) / (rate * tick_seconds)
    return out


def max_wait_ticks(loaded: LoadedScenario, tick_seconds: float) -> int:
    """Ticks a request may wait and still count within the SLO in the queue model (autoscaler.sim.queue).

    A request arriving in tick ``a`` and served in tick ``s`` has latency ``(s - a) x tick + service_seconds``;
    it is within the SLO when that is at most the SLO, and is dropped when ``(s - a) x tick`` would exceed the
    timeout. 0 when the SLO is shorter than the service time (no request can meet it; B3 then serves every
    tick's arrivals within the tick).
    """
    q = loaded.scenario.queue
    slo = q.latency_slo_seconds
    if slo is None:
        pool = loaded.scenario.pool or loaded.policy.policy.pools[0].name
        found = loaded.policy.policy.pool(pool)
        slo = found.targets.latency_slo_seconds if found is not None else None
    if slo is None:
        return 0
    wait = min(slo - q.service_seconds, q.timeout_seconds)
    return max(0, math.floor(wait / tick_seconds + 1e-9))


def boot_seconds(world: World, key: OfferingKey) -> float:
    """The mean boot delay of the offering: the first matching scenario rule's, else the policy's."""
    for rule in world.scenario.boot:
        if rule.matches(key.instance_type, key.market, key.zone):
            if rule.fixed is not None:
                return rule.fixed
            if rule.uniform is not None:
                return (rule.uniform[0] + rule.uniform[1]) / 2.0
            assert rule.lognormal_median is not None
            return rule.lognormal_median * math.exp(rule.lognormal_sigma**2 / 2.0)
    return world.default_boot


def offerings(loaded: LoadedScenario, arrivals: IntArray, tick_seconds: float, ticks: int) -> list[OfferingSeries]:
    """The pool's offerings on the simulated cloud with their per-tick availability (see the module doc)."""
    world = World(loaded, arrivals, tick_seconds, ticks)
    keys: list[tuple[OfferingKey, float]] = []
    for key in sorted(world.prices, key=str):
        cand = candidate_for(world.pool, key)
        if cand is not None:
            keys.append((key, cand[1]))
    avail = np.full((len(keys), ticks), UNLIMITED, dtype=np.int64)
    for i in range(ticks):
        world.apply_capacity(i)  # a fresh world holds no instance: this only sets the cloud's rules
        for k, (key, _) in enumerate(keys):
            n = world.provider._available(key)
            if n is not None:
                avail[k, i] = min(n, UNLIMITED)
    return [
        OfferingSeries(
            name=str(key),
            usd_per_hour=world.prices[key],
            units=units,
            available=avail[k].tolist(),
            boot_ticks=max(0, math.ceil(boot_seconds(world, key) / tick_seconds - 1e-9)),
        )
        for k, (key, units) in enumerate(keys)
    ]


def merge_unlimited(offers: list[OfferingSeries]) -> list[OfferingSeries]:
    """Keep one of each group of offerings that differ only in name and are never capacity-bound (price, units
    and boot delay equal, availability unlimited at every tick): e.g. on-demand in several zones.

    Exact: with no availability bound an instance of one is an instance of another (same cost, same units), so
    the optimum is unchanged, and the MILP loses a symmetry that costs HiGHS most of its time.
    """
    seen: set[tuple[float, float, int]] = set()
    out: list[OfferingSeries] = []
    for o in offers:
        if min(o.available, default=UNLIMITED) >= UNLIMITED:
            key = (o.usd_per_hour, o.units, o.boot_ticks)
            if key in seen:
                continue
            seen.add(key)
        out.append(o)
    return out


def solve_b3(
    loaded: LoadedScenario,
    arrivals: IntArray,
    tick_seconds: float,
    *,
    time_limit_seconds: float = TIME_LIMIT_SECONDS,
    max_ticks: int = MAX_TICKS,
) -> B3:
    """B3 on the scenario's demand and capacity (aggregated when longer than ``max_ticks`` ticks)."""
    ticks = len(arrivals)
    demand = demand_units(loaded, arrivals, tick_seconds)
    offers = merge_unlimited(offerings(loaded, arrivals, tick_seconds, ticks))
    wait = max_wait_ticks(loaded, tick_seconds)
    fluid = fluid_lower_bound(demand, offers, tick_seconds, max_wait_ticks=wait)
    factor = max(1, math.ceil(ticks / max_ticks))
    if factor == 1:
        result = offline_optimum(
            demand,
            offers,
            tick_seconds,
            time_limit_seconds=time_limit_seconds,
            max_wait_ticks=wait,
            mip_rel_gap=MIP_REL_GAP,
        )
    else:
        agg = aggregate(demand, offers, factor, wait)
        carry = agg.blocks is not None and agg.inner_rates is not None and factor <= CARRY_MAX_FACTOR
        coarse = offline_optimum(
            agg.inner_rates if carry and agg.inner_rates is not None else agg.demand_units,
            agg.offerings,
            agg.tick_seconds(tick_seconds),
            time_limit_seconds=time_limit_seconds,
            mip_rel_gap=MIP_REL_GAP,
            blocks=agg.blocks if carry else None,
        )
        result = disaggregate(coarse, demand, offers, tick_seconds, factor, wait)
        if ticks <= LP_BOUND_MAX_TICKS:
            lp = offline_optimum(
                demand,
                offers,
                tick_seconds,
                integral=False,
                max_wait_ticks=wait,
                time_limit_seconds=time_limit_seconds,
            )
            if lp.status == "optimal" and lp.unmet_unit_ticks == 0 and math.isfinite(lp.cost_usd):
                return B3(result, fluid, factor, wait, lp.cost_usd)
    return B3(result, fluid, factor, wait)


def cost_vs_b3(cost_usd: float, b3: B3) -> float | None:
    """A policy's cost over B3's (None when B3 has no finite positive cost)."""
    b = b3.result.cost_usd
    return cost_usd / b if math.isfinite(b) and b > 0 else None


def attach_b3(loaded: LoadedScenario, runs: list[PolicyRun]) -> B3:
    """Solve B3 for the scenario the runs replayed and add ``cost_vs_b3`` to each run's summary."""
    tick, ticks = plan_ticks(loaded)
    b3 = solve_b3(loaded, demand_arrivals(loaded, tick, ticks), tick)
    for run in runs:
        run.summary["cost_vs_b3"] = cost_vs_b3(run.summary["cost_usd"], b3)
    return b3
