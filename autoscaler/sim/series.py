"""The offline optimum's data: an offering's series over the horizon, the optimum's result, and the checks and
array helpers both the solver (optimum.py) and the aggregation (aggregate.py) use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class OfferingSeries:
    """One offering's price, size, boot delay and per-tick availability."""

    name: str  # e.g. "aws/us-east-1a/p4d.24xlarge/spot"
    usd_per_hour: float
    units: float  # capacity units one ready instance supplies
    available: Sequence[int]  # per tick: how many instances of it can exist (large = unlimited)
    boot_ticks: int  # ticks from launch to ready (paid while booting)


@dataclass(frozen=True)
class OptimumResult:
    """An optimal (or best-found) schedule and its cost."""

    cost_usd: float  # instance cost only (booting + ready ticks), never the unmet penalty
    ready_units: FloatArray  # per tick: sum over offerings of units x ready instances
    instances: dict[str, IntArray]  # per offering: instances alive (booting or ready) per tick
    launches: dict[str, IntArray]  # per offering: launches per tick
    status: str  # "optimal", "time_limit" (cost is the best found; see lower_bound_usd), ...
    lower_bound_usd: float  # the solver's dual bound on cost_usd (see module docstring for the caveats)
    unmet_unit_ticks: float = 0.0  # sum over ticks of demand not covered by ready units
    ready: dict[str, IntArray] | None = None  # per offering: ready instances per tick
    solve_seconds: float = 0.0  # wall time spent in HiGHS (informational only)


# --------------------------------------------------------------------------------------------------- inputs


def _as_demand(demand_units: Sequence[float] | FloatArray) -> FloatArray:
    demand = np.asarray(demand_units, dtype=np.float64)
    if demand.ndim != 1:
        raise ValueError("demand_units must be one-dimensional")
    if not np.all(np.isfinite(demand)) or np.any(demand < 0):
        raise ValueError("demand_units must be finite and non-negative")
    return demand


def _as_available(offering: OfferingSeries, n_ticks: int) -> FloatArray:
    avail = np.asarray(offering.available, dtype=np.float64)
    if avail.shape != (n_ticks,):
        raise ValueError(f"{offering.name}: available has {avail.size} ticks, demand has {n_ticks}")
    if np.any(avail < 0) or np.any(np.isnan(avail)):
        raise ValueError(f"{offering.name}: available must be non-negative")
    return np.floor(avail)


def _check_offerings(offerings: Sequence[OfferingSeries]) -> None:
    names = [o.name for o in offerings]
    if len(set(names)) != len(names):
        raise ValueError("offering names must be unique")
    for o in offerings:
        if not (o.units > 0 and math.isfinite(o.units)):
            raise ValueError(f"{o.name}: units must be positive")
        if not (o.usd_per_hour >= 0 and math.isfinite(o.usd_per_hour)):
            raise ValueError(f"{o.name}: usd_per_hour must be non-negative")
        if o.boot_ticks < 0:
            raise ValueError(f"{o.name}: boot_ticks must be non-negative")


def _window_sum(x: FloatArray, b: int, n_ticks: int) -> FloatArray:
    """out[t] = sum_{s=t-b+1..t} x[s] (x indexed from 0, zero outside), for t = 0..n_ticks-1."""
    padded = np.zeros(n_ticks, dtype=np.float64)
    padded[: min(x.size, n_ticks)] = x[:n_ticks]
    if b == 0:
        return np.zeros(n_ticks, dtype=np.float64)
    c = np.concatenate(([0.0], np.cumsum(padded)))
    t = np.arange(n_ticks)
    return c[t + 1] - c[np.maximum(t + 1 - b, 0)]


def _as_wait(max_wait_ticks: int) -> int:
    if max_wait_ticks < 0:
        raise ValueError("max_wait_ticks must be non-negative")
    return int(max_wait_ticks)


def late_work(
    demand_units: Sequence[float] | FloatArray, capacity_units: FloatArray, max_wait_ticks: int
) -> float:
    """Unit-ticks of work a FIFO queue served by ``capacity_units`` per tick fails to serve within
    ``max_wait_ticks`` ticks of its arrival (the work of tick ``a`` must be served at a tick ``s <= a + W``).

    Greedy FIFO service (serve the oldest work first, as much as the tick's capacity allows) maximises the
    cumulative work served by every tick, so it misses the fewest deadlines of any service order: this is the
    unmet demand of a capacity schedule under the queue model. Work whose deadline lies beyond the horizon and
    that is still waiting at its end is not late (the horizon cuts it off). With ``max_wait_ticks = 0`` this is
    ``sum_t max(demand_t - capacity_t, 0)``.
    """
    demand = _as_demand(demand_units)
    wait = _as_wait(max_wait_ticks)
    cap = np.asarray(capacity_units, dtype=np.float64)
    if wait == 0:
        return float(np.sum(np.maximum(demand - cap, 0.0)))
    late = 0.0
    cohorts: list[list[float]] = []  # [arrival tick, work left], oldest first
    head = 0
    for t in range(demand.size):
        if demand[t] > 0:
            cohorts.append([float(t), float(demand[t])])
        c = float(cap[t])
        while c > 1e-12 and head < len(cohorts):
            cohort = cohorts[head]
            n = min(cohort[1], c)
            cohort[1] -= n
            c -= n
            if cohort[1] <= 1e-12:
                head += 1
        while head < len(cohorts) and cohorts[head][0] + wait <= t:  # its last chance was this tick
            late += cohorts[head][1]
            head += 1
    return late
