"""Long horizons for the offline optimum: coarsen a problem into blocks of ``factor`` ticks, and map a coarse
schedule back onto the fine ticks.

30 days of 30 s ticks (86,400) is too big for the MILP of :mod:`autoscaler.sim.optimum` in reasonable time.
:func:`aggregate` builds a *restriction* of the fine problem (block-max demand, block-min availability, boot
rounded up to whole blocks), so the coarse optimum mapped back by :func:`disaggregate` is a feasible fine
schedule: an **upper bound** on the fine optimum, reported with the fine fluid lower bound beside it (the argument
is in optimum.py's docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoscaler.sim.optimum import _UNMET_EPS, fluid_lower_bound
from autoscaler.sim.series import (
    FloatArray,
    IntArray,
    OfferingSeries,
    OptimumResult,
    _as_available,
    _as_demand,
    _check_offerings,
    _window_sum,
)


@dataclass(frozen=True)
class AggregatedProblem:
    """A coarsened problem: ``factor`` fine ticks per block (see :func:`aggregate`)."""

    demand_units: FloatArray  # per block: max fine demand
    offerings: tuple[OfferingSeries, ...]  # per block: min fine availability; boot = ceil(b / factor)
    factor: int
    n_fine_ticks: int

    def tick_seconds(self, fine_tick_seconds: float) -> float:
        """The block length in seconds."""
        return fine_tick_seconds * self.factor


def aggregate(
    demand_units: Sequence[float] | FloatArray, offerings: Sequence[OfferingSeries], factor: int
) -> AggregatedProblem:
    """Coarsen to blocks of ``factor`` ticks: max demand, min availability, boot rounded up to whole blocks.

    A *restriction* of the fine problem: the coarse optimum (mapped back by :func:`disaggregate`) is an
    **upper bound** on the fine optimum. Solve it with ``tick_seconds = factor x fine tick_seconds``.
    """
    if factor < 1:
        raise ValueError("factor must be >= 1")
    demand = _as_demand(demand_units)
    _check_offerings(offerings)
    n = demand.size
    n_blocks = -(-n // factor)
    pad = n_blocks * factor - n
    d = np.pad(demand, (0, pad), mode="edge") if n else demand
    coarse_demand = d.reshape(n_blocks, factor).max(axis=1) if n else demand
    coarse: list[OfferingSeries] = []
    for o in offerings:
        a = _as_available(o, n)
        a = np.pad(a, (0, pad), mode="edge") if n else a
        a_min = a.reshape(n_blocks, factor).min(axis=1) if n else a
        avail_list: list[int] = [int(v) for v in np.minimum(a_min, 2**62)]
        coarse.append(
            OfferingSeries(
                name=o.name,
                usd_per_hour=o.usd_per_hour,
                units=o.units,
                available=avail_list,
                boot_ticks=-(-o.boot_ticks // factor),
            )
        )
    return AggregatedProblem(coarse_demand, tuple(coarse), factor, n)


def disaggregate(
    coarse: OptimumResult,
    demand_units: Sequence[float] | FloatArray,
    offerings: Sequence[OfferingSeries],
    tick_seconds: float,
    factor: int,
) -> OptimumResult:
    """Map a coarse schedule (from :func:`aggregate` + :func:`offline_optimum`) onto the fine ticks.

    The ready count is held over each block and each coarse launch at block ``k`` becomes a fine launch at
    ``(k + ceil(b/f)) f - b``, ready exactly when its coarse block is. The result is feasible for the fine
    problem; ``cost_usd`` is its fine cost (an upper bound on the fine optimum when the coarse solve was
    feasible) and ``lower_bound_usd`` the fine :func:`fluid_lower_bound`.
    """
    if coarse.ready is None:
        raise ValueError("coarse result carries no per-offering ready counts")
    demand = _as_demand(demand_units)
    n = demand.size
    hours = tick_seconds / 3600.0
    fine_t = np.arange(n)
    launches: dict[str, IntArray] = {}
    instances: dict[str, IntArray] = {}
    ready: dict[str, IntArray] = {}
    ready_units = np.zeros(n, dtype=np.float64)
    total = 0.0
    for o in offerings:
        b = o.boot_ticks
        big_b = -(-b // factor)
        rc = coarse.ready[o.name]
        lc = coarse.launches[o.name]
        rk = rc[fine_t // factor].astype(np.float64)
        lk = np.zeros(n, dtype=np.float64)
        blocks = np.nonzero(lc)[0]
        at = (blocks + big_b) * factor - b
        if np.any(at >= n) or np.any(at < 0):
            raise ValueError(f"{o.name}: coarse launch cannot be placed on the fine grid")
        np.add.at(lk, at, lc[blocks].astype(np.float64))
        alive = rk + _window_sum(lk, b, n)
        total += o.usd_per_hour * hours * float(np.sum(alive))
        ready_units += o.units * rk
        launches[o.name] = lk.astype(np.int64)
        instances[o.name] = alive.astype(np.int64)
        ready[o.name] = rk.astype(np.int64)
    unmet = float(np.sum(np.maximum(demand - ready_units, 0.0)))
    return OptimumResult(
        cost_usd=total,
        ready_units=ready_units,
        instances=instances,
        launches=launches,
        status=coarse.status,
        lower_bound_usd=fluid_lower_bound(demand, offerings, tick_seconds),
        unmet_unit_ticks=unmet if unmet > _UNMET_EPS else 0.0,
        ready=ready,
        solve_seconds=coarse.solve_seconds,
    )
