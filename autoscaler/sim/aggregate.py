"""Long horizons for the offline optimum: coarsen a problem into blocks of ``factor`` ticks, and map a coarse
schedule back onto the fine ticks.

30 days of 30 s ticks (86,400) is too big for the MILP of :mod:`autoscaler.sim.optimum` in reasonable time.
:func:`aggregate` builds a *restriction* of the fine problem (block-max demand, block-min availability, boot
rounded up to whole blocks), so the coarse optimum mapped back by :func:`disaggregate` is a feasible fine
schedule: an **upper bound** on the fine optimum, reported with the fine fluid lower bound beside it (the argument
is in optimum.py's docstring).

With a backlog (``max_wait_ticks = W > 0``: the work of fine tick ``a`` may be served up to tick ``a + W``) the
block's demand is not its max but :func:`block_rates`: the least constant capacity that, starting the block with
an empty backlog, serves every arrival of the block by its deadline *and* by the block's end (no backlog crosses
a block boundary). It lies between the block's mean and its max (its max when ``W = 0``). Holding at least that
capacity over the block is feasible for the fine queueing problem (greedy FIFO service then empties the backlog
at every block end, so each block starts empty as assumed), so the coarse problem, solved with ``W = 0`` on the
blocks, is still a restriction and its mapped-back cost an upper bound. The restriction is loose when ``W`` is
small against the block (a burst in a block's last tick must be served in that tick).

The **carry model** is tighter: solve the coarse problem with ``demand_units = inner_rates`` and
``blocks = AggregatedProblem.blocks`` (:class:`autoscaler.sim.optimum.BlockQueue`). A continuous carry ``X_k``
per block bounds the backlog greedy FIFO service leaves at the block's end, and linear rows (in the block's
constant capacity, ``X_{k-1}`` and ``X_k``; written out in :func:`autoscaler.sim.optimum._block_queue_rows`) say
that every arrival meets its deadline: within the block (work due inside it, after any idle tick and with the
carried-in backlog ahead of it) or in the next block's first ticks (work carried out). They follow from greedy
service's closed form under a constant rate, with ``X`` an over-estimate of the true backlog (a larger backlog
only delays service), so the fine schedule held constant per block meets every deadline: still a restriction,
still an upper bound, and on small problems within 1% of the fine optimum where flushing is 25-35% above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoscaler.sim.optimum import _UNMET_EPS, BlockQueue, fluid_lower_bound
from autoscaler.sim.series import (
    FloatArray,
    IntArray,
    OfferingSeries,
    OptimumResult,
    _as_available,
    _as_demand,
    _as_wait,
    _check_offerings,
    _window_sum,
    late_work,
)


@dataclass(frozen=True)
class AggregatedProblem:
    """A coarsened problem: ``factor`` fine ticks per block (see :func:`aggregate`)."""

    demand_units: FloatArray  # per block: max fine demand (with a backlog: block_rates)
    offerings: tuple[OfferingSeries, ...]  # per block: min fine availability; boot = ceil(b / factor)
    factor: int
    n_fine_ticks: int
    # With a backlog: the blocks' fine arrivals, for the carry model (solve with demand_units=inner_rates and
    # blocks=...), and per block the least capacity its own work due inside it needs whatever it carries in.
    blocks: BlockQueue | None = None
    inner_rates: FloatArray | None = None

    def tick_seconds(self, fine_tick_seconds: float) -> float:
        """The block length in seconds."""
        return fine_tick_seconds * self.factor


def block_rates(demand_units: Sequence[float] | FloatArray, factor: int, max_wait_ticks: int = 0) -> FloatArray:
    """Per block of ``factor`` ticks: the least constant capacity that serves the block's arrivals by their
    deadlines (``max_wait_ticks`` after arrival) and by the block's last tick, starting with no backlog.

    With ``A`` the block's cumulative arrivals (``A[-1] = 0``), greedy service at rate ``c`` has served
    ``min_s (A[s] + c (t - s))`` by tick ``t`` (Lindley), so the conditions are ``c >= (A[j] - A[s]) / (j + W - s)``
    for every ``s < j`` (the work up to ``j`` is due at ``j + W``) and ``c >= (A[f-1] - A[s]) / (f - 1 - s)``
    (all of it by the block's end). A partial last block is padded with zero demand.
    """
    if factor < 1:
        raise ValueError("factor must be >= 1")
    demand = _as_demand(demand_units)
    wait = _as_wait(max_wait_ticks)
    n = demand.size
    if n == 0:
        return demand
    n_blocks = -(-n // factor)
    d = np.pad(demand, (0, n_blocks * factor - n)).reshape(n_blocks, factor)
    if wait == 0:
        out: FloatArray = d.max(axis=1)
        return out
    cum = np.concatenate([np.zeros((n_blocks, 1)), np.cumsum(d, axis=1)], axis=1)  # cum[:, s + 1] = A[s]
    rate = np.zeros(n_blocks)
    for j in range(factor):  # the work up to tick j is due at j + W; the greedy was last idle at s < j
        s = np.arange(-1, j)
        due = (cum[:, j + 1 : j + 2] - cum[:, s + 1]) / (j + wait - s)[None, :]
        rate = np.maximum(rate, due.max(axis=1))
    end = factor - 1
    s_end = np.arange(-1, end)
    flush = ((cum[:, end + 1 : end + 2] - cum[:, s_end + 1]) / (end - s_end)[None, :]).max(axis=1, initial=0.0)
    out = np.maximum(rate, flush)
    return out


def block_cumulative(demand_units: Sequence[float] | FloatArray, factor: int) -> FloatArray:
    """``out[k, s + 1]``: the work arriving in block ``k`` up to its fine tick ``s`` (zero-padded last block)."""
    demand = _as_demand(demand_units)
    n_blocks = -(-demand.size // factor)
    d = np.pad(demand, (0, n_blocks * factor - demand.size)).reshape(n_blocks, factor)
    out: FloatArray = np.concatenate([np.zeros((n_blocks, 1)), np.cumsum(d, axis=1)], axis=1)
    return out


def inner_rates(cum: FloatArray, wait: int) -> FloatArray:
    """Per block: ``max (A_j - A_s) / (j + W - s)`` over ``0 <= s < j``, ``j + W <= f - 1``: the capacity the work
    of ticks ``s+1..j``, due inside the block, needs after an idle tick ``s`` (0 when no such pair)."""
    n_blocks, f = cum.shape[0], cum.shape[1] - 1
    rate = np.zeros(n_blocks)
    for j in range(1, f - wait):
        s = np.arange(0, j)
        due = (cum[:, j + 1 : j + 2] - cum[:, s + 1]) / (j + wait - s)[None, :]
        rate = np.maximum(rate, due.max(axis=1))
    return rate


def aggregate(
    demand_units: Sequence[float] | FloatArray,
    offerings: Sequence[OfferingSeries],
    factor: int,
    max_wait_ticks: int = 0,
) -> AggregatedProblem:
    """Coarsen to blocks of ``factor`` ticks: max demand (with a backlog: :func:`block_rates`), min
    availability, boot rounded up to whole blocks.

    A *restriction* of the fine problem: the coarse optimum (solved with ``max_wait_ticks = 0`` and mapped back
    by :func:`disaggregate`) is an **upper bound** on the fine optimum. Solve it with ``tick_seconds = factor x
    fine tick_seconds``.
    """
    if factor < 1:
        raise ValueError("factor must be >= 1")
    demand = _as_demand(demand_units)
    _check_offerings(offerings)
    n = demand.size
    n_blocks = -(-n // factor)
    pad = n_blocks * factor - n
    coarse_demand = block_rates(demand, factor, max_wait_ticks)
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
    blocks = inner = None
    if _as_wait(max_wait_ticks) > 0 and n:
        cum = block_cumulative(demand, factor)
        blocks, inner = BlockQueue(cum, int(max_wait_ticks)), inner_rates(cum, int(max_wait_ticks))
    return AggregatedProblem(coarse_demand, tuple(coarse), factor, n, blocks, inner)


def disaggregate(
    coarse: OptimumResult,
    demand_units: Sequence[float] | FloatArray,
    offerings: Sequence[OfferingSeries],
    tick_seconds: float,
    factor: int,
    max_wait_ticks: int = 0,
) -> OptimumResult:
    """Map a coarse schedule (from :func:`aggregate` + :func:`offline_optimum`) onto the fine ticks.

    The ready count is held over each block and each coarse launch at block ``k`` becomes a fine launch at
    ``(k + ceil(b/f)) f - b``, ready exactly when its coarse block is. The result is feasible for the fine
    problem; ``cost_usd`` is its fine cost (an upper bound on the fine optimum when the coarse solve was
    feasible) and ``lower_bound_usd`` the fine :func:`fluid_lower_bound`; both with the backlog of
    ``max_wait_ticks`` (give the value :func:`aggregate` was given).
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
    unmet = late_work(demand, ready_units, max_wait_ticks)
    return OptimumResult(
        cost_usd=total,
        ready_units=ready_units,
        instances=instances,
        launches=launches,
        status=coarse.status,
        lower_bound_usd=fluid_lower_bound(demand, offerings, tick_seconds, max_wait_ticks=max_wait_ticks),
        unmet_unit_ticks=unmet if unmet > _UNMET_EPS else 0.0,
        ready=ready,
        solve_seconds=coarse.solve_seconds,
    )
