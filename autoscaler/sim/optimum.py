"""Offline optimum baseline ("B3"): perfect foresight of demand and spot availability.

Everything here is pure (no I/O, no clock): arrays in, a frozen dataclass out. Two numbers are offered:

* :func:`offline_optimum` -- the cheapest fleet schedule that covers the demand, with the same boot delays as
  the live system, solved as a MILP by HiGHS (``integral=False`` solves its LP relaxation instead);
* :func:`fluid_lower_bound` -- a much cheaper bound: no boot delay, fractional instances (an LP that splits
  into one fractional knapsack per tick, solved exactly in closed form).

For every problem with no unmet demand: ``fluid_lower_bound <= offline_optimum(integral=False).cost_usd
<= offline_optimum(integral=True).cost_usd``.

Time model
----------
Ticks ``t = 0..T-1``, each ``tick_seconds`` long, ``h = tick_seconds / 3600`` hours. An instance of offering
``o`` (boot delay ``b = boot_ticks``) launched at tick ``s`` is *booting* (alive, paid, useless) at ticks
``s .. s+b-1`` and *ready* (alive, paid, supplying ``units``) from tick ``s+b`` until it is stopped; a stop at
tick ``t`` means it is not alive at ``t``. ``b = 0`` means ready at the launch tick. Spot availability
``available[o][t]`` caps how many instances of ``o`` may be alive at ``t``; when it drops below the fleet the
excess is stopped (this is how preemption is modelled: with perfect foresight it is just a forced stop, and
the optimum can launch the replacement ``b`` ticks early elsewhere).

**Warm start (default).** The instances ready at ``t = 0`` are free to choose (only bounded by availability)
and are paid from ``t = 0``: the fleet was booted before the horizon and its pre-horizon boot is not counted.
Otherwise any demand within the first ``b`` ticks would be unsatisfiable. With ``warm_start=False`` the fleet
starts empty and early demand is reported as unmet.

Formulation
-----------
Integer variables, for each offering ``o`` (boot ``b``, price ``p`` USD/h, ``u`` units):

* ``L[o,s]`` launches at tick ``s``, for ``s = 0 .. T-1-b`` only (a later launch is never ready inside the
  horizon, so it is useless and omitted);
* ``R[o,t]`` instances ready at tick ``t``;

and a continuous ``U[t] >= 0``, the demand left unmet at ``t``. Constraints::

    R[o,t] <= R[o,t-1] + L[o,t-b]                          t >= 1 (t = 0: warm: free; cold: R[o,-1] = 0)
    R[o,t] + sum_{s=t-b+1..t} L[o,s] <= available[o][t]    (alive = ready + booting)
    sum_o u_o R[o,t] + U[t] >= demand[t]

and the objective is ``sum_o p_o h (sum_t R[o,t] + b_o sum_s L[o,s])  +  P sum_t U[t]``.

Waiting within the SLO (``max_wait_ticks = W > 0``). Requests queue FIFO and the work arriving at tick ``a``
may be served at any tick ``a .. a + W``: the cumulative work served by ``t`` must reach the cumulative arrivals
up to ``t - W``, and nothing is dropped (``U`` gives work up, penalised as above). A continuous backlog
``0 <= Q[t] <= sum_{s=t-W+1..t} demand[s]`` (the backlog after ``t`` can only be work of the last ``W`` ticks)
enters the coverage row::

    sum_o u_o R[o,t] + U[t] + Q[t] - Q[t-1] >= demand[t]

(the work served at ``t`` is ``demand[t] + Q[t-1] - Q[t] - U[t]``; an optimum never makes it negative, since
lowering such a ``Q[t]`` keeps every row). The bounds ``R, L <= ceil(max_t sum_{s=t-W..t} demand[s] / u)`` stay
valid (no tick can serve more than its arrivals and the backlog). Work still waiting at the end of the horizon
within its deadline is not unmet (the horizon cuts it off, as in the queue model). With equal units ``u`` for
every offering, :func:`_interval_cuts` adds mixed-integer-rounding cuts over short arrival intervals; without
them HiGHS closes the last 0.5% of the gap on the one-hour example in minutes instead of seconds.

Why this is exact. *Ready can only grow by the batch that finishes booting*; a decrease is a stop of ready
instances (free). Booting instances are never stopped in this model, and that loses nothing: in any schedule
of the general model (where booting instances may be stopped or preempted), deleting the launch of every
instance that never becomes ready keeps every ready count, lowers every alive count (so availability still
holds) and does not raise the cost. Hence the booting instances at ``t`` are exactly the launches of the last
``b`` ticks, the alive count is ``R + sum of the window``, and each launch costs exactly ``b`` boot ticks
(launches are only made where they become ready within the horizon) plus its ready ticks, which is the
objective above. Conversely every (R, L) satisfying the constraints is a realisable schedule (stop
``R[o,t-1] + L[o,t-b] - R[o,t]`` ready instances at ``t``). The bounds ``R, L <= ceil(max demand / u)`` are
valid (capping a schedule at that count keeps it feasible and no dearer) and tighten the MILP.

Unmet demand. If availability cannot cover the demand (even with on-demand), the hard coverage constraint
is softened by ``U`` with penalty ``P`` per unit-tick (default: ``1000 x max_o p_o h (b_o + 1) /
min(1, min_o u_o)``, i.e. far above the cost of covering any shortfall of at least ``0.001 x min(1, u_min)``
units at one tick with one more instance). If the solution leaves demand unmet, a second solve minimises the
instance cost alone subject to ``sum U <= `` the unmet total just found, so the reported ``cost_usd`` (which
never includes the penalty) is not polluted by the penalty's share of the MIP gap. The result reports
``unmet_unit_ticks = sum_t U[t]``. With ``U > 0`` the dual bound is a bound for that unmet budget only.

Scaling and aggregation
-----------------------
A 2,000-tick x 6-offering instance has ~24k integer columns. Measured (HiGHS 1.16, 2 cores, default
``mip_rel_gap=1e-3``): ~3.5 s to optimality when all offerings supply the same units; with mixed unit sizes
(2/3/4) and noisy demand the per-tick coverage becomes a knapsack and it takes ~25-60 s (the LP relaxation
alone: ~0.2 s). Phase 2 (below) runs only when phase 1 was solved to optimality. 30 days of 30 s ticks (86,400) is too big for CI: :func:`autoscaler.sim.aggregate.aggregate` coarsens by ``factor``
ticks per block taking the **max** demand and the **min** availability in each block, with the boot delay
rounded **up** to whole blocks (``ceil(b / factor)``). Direction: this is a *restriction*, so the
aggregated optimum is an **upper bound** on the fine optimum, never a lower bound. Proof: :func:`autoscaler.sim.aggregate.disaggregate`
maps any coarse schedule to a fine one (ready count held constant over each block, each coarse launch of
block ``k`` placed at fine tick ``(k+B) f - b`` so it becomes ready exactly at its coarse ready block); that fine
schedule covers every fine tick (coverage >= block max), respects every fine availability (alive <= block
min) and costs at most the coarse cost (fine boot ``b <= B f`` ticks, partial last block is charged in full
on the coarse grid). The coarse solver's dual bound is *not* a bound on the fine problem; :func:`autoscaler.sim.aggregate.disaggregate`
therefore reports the fine :func:`fluid_lower_bound` as ``lower_bound_usd``, giving the honest bracket
``[fluid bound, disaggregated cost]`` around the true fine optimum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import highspy
import numpy as np

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

__all__ = ["BlockQueue", "OfferingSeries", "OptimumResult", "fluid_lower_bound", "offline_optimum"]

_INF = math.inf
_UNMET_EPS = 1e-7  # unit-ticks below this are solver noise, not unmet demand
FLUID_CHUNK_TICKS = 4000  # the queueing fluid bound is solved on chunks this long (see fluid_lower_bound)


# --------------------------------------------------------------------------------------------- fluid bound


def fluid_lower_bound(
    demand_units: Sequence[float] | FloatArray,
    offerings: Sequence[OfferingSeries],
    tick_seconds: float,
    *,
    max_wait_ticks: int = 0,
) -> float:
    """Cost of the fluid relaxation: no boot delay, fractional instances, availability still binding.

    ``max_wait_ticks = 0``, per tick: ``min sum_o p_o n_o  s.t.  sum_o u_o n_o >= d_t, 0 <= n_o <=
    available[o][t]`` -- a fractional knapsack, solved exactly by filling the cheapest USD-per-unit offerings
    first. Any schedule that covers the demand pays at least this (its ready instances alone are feasible for
    every tick's LP). Where even the fluid fleet cannot cover a tick, that tick is charged for the full
    available capacity (a bound for schedules that cover as much as possible at every tick).

    ``max_wait_ticks = W > 0``: the same relaxation of the queueing problem (work of tick ``a`` served by
    ``a + W``, FIFO backlog): an LP over the units bought per offering and tick and the backlog, solved by
    HiGHS (:func:`_fluid_queue`). Any schedule that meets every deadline pays at least this.
    """
    demand = _as_demand(demand_units)
    _check_offerings(offerings)
    wait = _as_wait(max_wait_ticks)
    if wait > 0:
        # Long horizons: the sum over chunks of FLUID_CHUNK_TICKS ticks, each solved alone with an empty
        # backlog at its start and the work of its last W ticks free to stay unserved. That relaxes the
        # coupling between chunks (the full problem's capacity inside a chunk serves at least the chunk's own
        # work whose deadline falls inside it), so the sum is still a lower bound, and the LP stays small.
        total = 0.0
        for c0 in range(0, demand.size, FLUID_CHUNK_TICKS):
            c1 = min(c0 + FLUID_CHUNK_TICKS, demand.size)
            part = [replace(o, available=o.available[c0:c1]) for o in offerings]
            total += _fluid_queue(demand[c0:c1], part, tick_seconds, wait)
        return total
    n_ticks = demand.size
    hours = tick_seconds / 3600.0
    remaining = demand.copy()
    total = 0.0
    for o in sorted(offerings, key=lambda o: o.usd_per_hour / o.units):
        avail = _as_available(o, n_ticks)
        n = np.minimum(remaining / o.units, avail)
        total += float(np.sum(n)) * o.usd_per_hour * hours
        remaining = np.maximum(remaining - n * o.units, 0.0)
    return total


def _fluid_queue(demand: FloatArray, offerings: Sequence[OfferingSeries], tick_seconds: float, wait: int) -> float:
    """The fluid bound with a backlog: an LP with one row per tick.

    Columns: ``x[o,t]`` units of offering ``o`` bought at tick ``t`` (``0 <= x <= u_o available[o][t]``, at
    ``p_o / u_o`` USD per unit-hour), ``U[t] >= 0`` work given up (penalised, as in the MILP) and the backlog
    ``0 <= Q[t] <= sum_{s=t-W+1..t} d_s``; rows ``sum_o x[o,t] + U[t] + Q[t] - Q[t-1] >= d_t``. The work served
    at ``t`` is ``d_t + Q[t-1] - Q[t] - U[t]``; it is never negative in an optimum (lowering such a ``Q[t]``
    keeps every row and the bounds satisfied). The bound returned is the cost of the ``x`` alone.
    """
    n = demand.size
    if n == 0 or not offerings:
        return 0.0
    hours = tick_seconds / 3600.0
    peak = float(_window_sum(demand, wait + 1, n).max(initial=0.0))
    t_all = np.arange(n, dtype=np.int64)
    k = len(offerings)
    cost_parts: list[FloatArray] = []
    hi_parts: list[FloatArray] = []
    for o in offerings:
        cost_parts.append(np.full(n, o.usd_per_hour / o.units * hours))
        hi_parts.append(np.minimum(_as_available(o, n) * o.units, peak))
    x_cols = k * n
    u_start, q_start, n_cols = x_cols, x_cols + n, x_cols + 2 * n
    penalty = _default_penalty(offerings, hours)
    cost = np.concatenate([*cost_parts, np.full(n, penalty), np.zeros(n)])
    col_lo = np.zeros(n_cols)
    col_hi = np.concatenate([*hi_parts, _window_sum(demand, wait + 1, n), _window_sum(demand, wait, n)])
    rows = [np.tile(t_all, k), t_all, t_all, t_all[1:]]
    cols = [np.arange(x_cols, dtype=np.int64), u_start + t_all, q_start + t_all, q_start + t_all[:-1]]
    vals = [np.ones(x_cols), np.ones(n), np.ones(n), -np.ones(n - 1)]
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    order = np.lexsort((c, r))
    start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=start[1:])
    hint = np.zeros(n_cols)
    hint[u_start:q_start] = demand
    x, status, _ = _solve(
        cost, col_lo, col_hi, demand.copy(), np.full(n, _INF), start, c[order].astype(np.int64), v[order],
        False, hint, n_cols, 600.0, 1e-3,
    )  # fmt: skip
    if status != "optimal":
        raise RuntimeError(f"the fluid LP did not solve: {status}")
    return float(cost[:x_cols] @ x[:x_cols])


# ------------------------------------------------------------------------------------------------ the MILP


@dataclass(frozen=True)
class _Layout:
    """Column indices: per offering a block of L (n_launch) then R (n_ticks); U at the end."""

    l_start: tuple[int, ...]
    r_start: tuple[int, ...]
    n_launch: tuple[int, ...]
    u_start: int
    q_start: int  # the backlog columns Q (none when max_wait_ticks = 0)
    x_start: int  # the block carries X (only for a BlockQueue; see aggregate.py)
    n_cols: int


def _layout(offerings: Sequence[OfferingSeries], n_ticks: int, wait: int = 0, carry: bool = False) -> _Layout:
    l_start: list[int] = []
    r_start: list[int] = []
    n_launch: list[int] = []
    col = 0
    for o in offerings:
        nl = max(n_ticks - o.boot_ticks, 0)
        l_start.append(col)
        n_launch.append(nl)
        col += nl
        r_start.append(col)
        col += n_ticks
    q_start = col + n_ticks
    x_start = q_start + (n_ticks if wait > 0 else 0)
    n_cols = x_start + (n_ticks if carry else 0)
    return _Layout(tuple(l_start), tuple(r_start), tuple(n_launch), col, q_start, x_start, n_cols)


def _default_penalty(offerings: Sequence[OfferingSeries], hours: float) -> float:
    worst = max((o.usd_per_hour * hours * (o.boot_ticks + 1) for o in offerings), default=0.0)
    u_min = min((o.units for o in offerings), default=1.0)
    return 1000.0 * max(worst, 1e-6) / min(1.0, u_min)


def _build(
    demand: FloatArray,
    offerings: Sequence[OfferingSeries],
    avails: list[FloatArray],
    hours: float,
    penalty: float,
    warm_start: bool,
    lay: _Layout,
    wait: int = 0,
    blocks: BlockQueue | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, IntArray, IntArray, FloatArray]:
    """Return (cost, col_lo, col_hi, row_lo, row_hi, csr_start, csr_index, csr_value)."""
    n_ticks = demand.size
    cost = np.zeros(lay.n_cols, dtype=np.float64)
    col_lo = np.zeros(lay.n_cols, dtype=np.float64)
    col_hi = np.full(lay.n_cols, _INF, dtype=np.float64)
    rows: list[IntArray] = []
    cols: list[IntArray] = []
    vals: list[FloatArray] = []
    row_lo: list[FloatArray] = []
    row_hi: list[FloatArray] = []
    n_rows = 0
    t_all = np.arange(n_ticks, dtype=np.int64)
    # The most work any tick can serve: its arrivals plus the backlog of the last `wait` ticks. More ready
    # capacity than that is useless, so capping every schedule there keeps it feasible and no dearer.
    reach = demand if wait == 0 else _window_sum(demand, wait + 1, n_ticks)  # exact when W = 0
    d_max = float(reach.max(initial=0.0))
    if blocks is not None:  # a block can serve at most its own work and what the one before carried
        work = blocks.cum[:, -1]
        d_max = max(d_max, float((work + np.concatenate(([0.0], work[:-1]))).max(initial=0.0)))

    for k, o in enumerate(offerings):
        b = o.boot_ticks
        nl = lay.n_launch[k]
        ls, rs = lay.l_start[k], lay.r_start[k]
        avail = avails[k]
        cap = float(math.ceil(d_max / o.units - 1e-9)) if d_max > 0 else 0.0
        cost[ls : ls + nl] = o.usd_per_hour * hours * b
        cost[rs : rs + n_ticks] = o.usd_per_hour * hours
        col_hi[rs : rs + n_ticks] = np.minimum(avail, cap)
        if nl:
            # a launch at s is alive for s..s+b: it can be no larger than the availability over that span
            span = np.lib.stride_tricks.sliding_window_view(avail, b + 1).min(axis=1)[:nl]
            col_hi[ls : ls + nl] = np.minimum(span, cap)

        # dynamics: R[t] - R[t-1] - L[t-b] <= 0
        t_dyn = t_all if not warm_start else t_all[1:]
        base = n_rows
        r_idx = base + np.arange(t_dyn.size, dtype=np.int64)
        rows.append(r_idx)
        cols.append(rs + t_dyn)
        vals.append(np.ones(t_dyn.size))
        has_prev = t_dyn >= 1
        rows.append(r_idx[has_prev])
        cols.append(rs + t_dyn[has_prev] - 1)
        vals.append(-np.ones(int(has_prev.sum())))
        has_launch = (t_dyn - b >= 0) & (t_dyn - b < nl)
        rows.append(r_idx[has_launch])
        cols.append(ls + t_dyn[has_launch] - b)
        vals.append(-np.ones(int(has_launch.sum())))
        row_lo.append(np.full(t_dyn.size, -_INF))
        row_hi.append(np.zeros(t_dyn.size))
        n_rows += t_dyn.size

        # availability: R[t] + sum_{s=t-b+1..t} L[s] <= available[t]
        base = n_rows
        rows.append(base + t_all)
        cols.append(rs + t_all)
        vals.append(np.ones(n_ticks))
        for j in range(b):  # L[t-j] for j = 0..b-1
            ok = (t_all - j >= 0) & (t_all - j < nl)
            rows.append(base + t_all[ok])
            cols.append(ls + t_all[ok] - j)
            vals.append(np.ones(int(ok.sum())))
        row_lo.append(np.full(n_ticks, -_INF))
        # rows that cannot bind (alive <= cap ready + b x cap booting) are left unbounded: presolve drops them
        row_hi.append(np.where(avail >= cap * (b + 1), _INF, avail))
        n_rows += n_ticks

    # coverage: sum_o u_o R[o,t] + U[t] + Q[t] - Q[t-1] >= demand[t]  (Q: backlog carried, only with a wait)
    base = n_rows
    for k, o in enumerate(offerings):
        rows.append(base + t_all)
        cols.append(lay.r_start[k] + t_all)
        vals.append(np.full(n_ticks, float(o.units)))
    rows.append(base + t_all)
    cols.append(lay.u_start + t_all)
    vals.append(np.ones(n_ticks))
    if wait > 0:
        rows.append(base + t_all)
        cols.append(lay.q_start + t_all)
        vals.append(np.ones(n_ticks))
        rows.append(base + t_all[1:])
        cols.append(lay.q_start + t_all[:-1])
        vals.append(-np.ones(max(n_ticks - 1, 0)))
        # the backlog after tick t is work of the last `wait` ticks only (FIFO within the SLO)
        col_hi[lay.q_start :] = _window_sum(demand, wait, n_ticks)
    row_lo.append(demand.copy())
    row_hi.append(np.full(n_ticks, _INF))
    n_rows += n_ticks
    cost[lay.u_start : lay.q_start] = penalty
    col_hi[lay.u_start : lay.q_start] = reach
    if blocks is not None:
        col_hi[lay.u_start : lay.q_start] = _INF  # fake capacity: it may have to cover a carry too
        n_rows += _block_queue_rows(blocks, offerings, lay, n_rows, rows, cols, vals, row_lo, row_hi)

    if wait > 0:
        n_rows += _interval_cuts(demand, offerings, lay, wait, n_rows, rows, cols, vals, row_lo, row_hi)

    r = np.concatenate(rows)
    c = np.concatenate(cols)
    v = np.concatenate(vals)
    order = np.lexsort((c, r))
    start = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_rows), out=start[1:])
    return (
        cost,
        col_lo,
        col_hi,
        np.concatenate(row_lo),
        np.concatenate(row_hi),
        start,
        c[order].astype(np.int64),
        v[order],
    )


@dataclass(frozen=True)
class BlockQueue:
    """The fine arrivals behind a coarse problem's blocks (see :mod:`autoscaler.sim.aggregate`): ``cum[k, s + 1]``
    is the work arriving in block ``k`` up to its fine tick ``s`` (``cum[k, 0] = 0``), ``wait`` the fine wait."""

    cum: FloatArray  # (blocks, factor + 1)
    wait: int

    @property
    def factor(self) -> int:
        return int(self.cum.shape[1]) - 1


def _block_queue_rows(
    blocks: BlockQueue,
    offerings: Sequence[OfferingSeries],
    lay: _Layout,
    base: int,
    rows: list[IntArray],
    cols: list[IntArray],
    vals: list[FloatArray],
    row_lo: list[FloatArray],
    row_hi: list[FloatArray],
) -> int:
    """Rows that let a backlog cross block boundaries in an aggregated problem (see aggregate.py's docstring).

    With ``c_k = sum_o u_o R[o,k] + U[k]`` the constant capacity of block ``k`` (per fine tick), ``X_k >= 0``
    the backlog carried out of it and ``A`` the block's cumulative fine work (``A_{-1} = 0``, ``e = f - 1``)::

        (j + W + 1) c_k - X_{k-1} >= A_j                 j + W <= e  (work due inside the block, never idle)
        X_k + (e - s) c_k >= A_e - A_s                   0 <= s < e  (what is left after the last idle tick)
        X_k - X_{k-1} + f c_k >= A_e                                 (... or if never idle)
        (min(j + W - f, e) + 1) c_{k+1} - X_k >= A_j - A_e   j + W > e  (carried work due in the next block)

    Returns the number of rows added.
    """
    cum, wait, f = blocks.cum, blocks.wait, blocks.factor
    k_all = np.arange(cum.shape[0], dtype=np.int64)
    added = 0

    def row(ks: IntArray, c_coef: float, c_shift: int, x_prev: float, x_this: float, rhs: FloatArray) -> None:
        """One row per block in ``ks``: c_coef * c_{k+c_shift} + x_prev * X_{k-1} + x_this * X_k >= rhs."""
        nonlocal added
        if ks.size == 0:
            return
        r = base + added + np.arange(ks.size, dtype=np.int64)
        kc = ks + c_shift
        for k_off, o in enumerate(offerings):
            rows.append(r)
            cols.append(lay.r_start[k_off] + kc)
            vals.append(np.full(ks.size, c_coef * o.units))
        rows.append(r)
        cols.append(lay.u_start + kc)
        vals.append(np.full(ks.size, c_coef))
        if x_prev:
            has = ks >= 1
            rows.append(r[has])
            cols.append(lay.x_start + ks[has] - 1)
            vals.append(np.full(int(has.sum()), x_prev))
        if x_this:
            rows.append(r)
            cols.append(lay.x_start + ks)
            vals.append(np.full(ks.size, x_this))
        row_lo.append(rhs)
        row_hi.append(np.full(ks.size, _INF))
        added += ks.size

    e = f - 1
    a_end = cum[:, f]
    for j in range(f):
        if j + wait <= e:
            row(k_all, float(j + wait + 1), 0, -1.0, 0.0, cum[:, j + 1].copy())
        else:
            tau = min(j + wait - f, e)
            row(k_all[:-1], float(tau + 1), 1, 0.0, -1.0, (cum[:, j + 1] - a_end)[:-1].copy())
    for s0 in range(e):
        row(k_all, float(e - s0), 0, 0.0, 1.0, a_end - cum[:, s0 + 1])
    row(k_all, float(f), 0, -1.0, 1.0, a_end.copy())
    return added


CUT_INTERVAL_TICKS = 12  # interval cuts are added for arrival intervals up to this many ticks long


def _interval_cuts(
    demand: FloatArray,
    offerings: Sequence[OfferingSeries],
    lay: _Layout,
    wait: int,
    base: int,
    rows: list[IntArray],
    cols: list[IntArray],
    vals: list[FloatArray],
    row_lo: list[FloatArray],
    row_hi: list[FloatArray],
) -> int:
    """Valid inequalities that make the queueing MILP solvable fast (when every offering has the same units).

    The work arriving in ticks ``a..b`` is served in ticks ``a..b+W`` or given up there, so with ``N`` the
    ready instances summed over those ticks and offerings, ``u N + sum U >= D`` (``D`` the work of ``a..b``).
    ``N`` is an integer: the mixed-integer rounding of that row, ``N + sum U / (u f) >= ceil(D / u)`` with
    ``f = D / u - floor(D / u) > 0``, is valid and cuts off the LP's fractional fleets (without it HiGHS
    spends minutes closing the last 0.5% of the gap on the one-hour example). Intervals up to
    :data:`CUT_INTERVAL_TICKS` ticks whose deadline ``b + W`` is inside the horizon. Returns the rows added.
    """
    n = demand.size
    units = {float(o.units) for o in offerings}
    if len(units) != 1 or n == 0:
        return 0
    u = units.pop()
    cum = np.concatenate(([0.0], np.cumsum(demand)))
    added = 0
    k_off = len(offerings)
    for length in range(1, min(CUT_INTERVAL_TICKS, n) + 1):
        a = np.arange(0, n - length - wait + 1, dtype=np.int64)  # b + W <= n - 1
        if a.size == 0:
            break
        beta = (cum[a + length] - cum[a]) / u
        frac = beta - np.floor(beta)
        keep = frac > 1e-6
        a, beta, frac = a[keep], beta[keep], frac[keep]
        m = a.size
        if m == 0:
            continue
        span = length + wait  # ticks a .. b + W
        row_ids = base + added + np.arange(m, dtype=np.int64)
        offs = np.arange(span, dtype=np.int64)
        ticks = (a[:, None] + offs[None, :]).ravel()
        rep_rows = np.repeat(row_ids, span)
        for k in range(k_off):
            rows.append(rep_rows)
            cols.append(lay.r_start[k] + ticks)
            vals.append(np.ones(ticks.size))
        rows.append(rep_rows)
        cols.append(lay.u_start + ticks)
        vals.append(np.repeat(1.0 / (u * frac), span))
        row_lo.append(np.ceil(beta - 1e-9))
        row_hi.append(np.full(m, _INF))
        added += m
    return added


def _new_highs() -> Any:
    """A HiGHS instance that prints nothing.

    ``highspy.Highs`` (the Python subclass that adds callbacks and Ctrl-C handling) prints a copyright banner
    on first use; the bare C++ binding ``highspy._core._Highs`` does not. Use it when this highspy has it.
    """
    core: Any = getattr(highspy, "_core", None)
    cls: Any = getattr(core, "_Highs", None) or highspy.Highs
    h: Any = cls()
    h.setOptionValue("output_flag", False)
    return h


def _status(h: Any) -> str:
    ms = h.getModelStatus()
    if ms == highspy.HighsModelStatus.kOptimal:
        return "optimal"
    if ms == highspy.HighsModelStatus.kTimeLimit:
        return "time_limit"
    return str(h.modelStatusToString(ms)).lower().replace(" ", "_")


def _solve(
    cost: FloatArray,
    col_lo: FloatArray,
    col_hi: FloatArray,
    row_lo: FloatArray,
    row_hi: FloatArray,
    start: IntArray,
    index: IntArray,
    value: FloatArray,
    integral: bool,
    hint: FloatArray,
    n_int: int,
    time_limit: float,
    mip_rel_gap: float,
) -> tuple[FloatArray, str, float]:
    """Run HiGHS; return (column values, status, dual bound on the objective)."""
    h: Any = _new_highs()
    h.setOptionValue("time_limit", max(time_limit, 0.01))
    h.setOptionValue("mip_rel_gap", mip_rel_gap)
    n_cols, n_rows = cost.size, row_lo.size
    integrality = np.full(n_cols, 1 if integral else 0, dtype=np.int32)
    integrality[n_int:] = 0  # the unmet-demand columns are continuous
    h.passModel(
        n_cols,
        n_rows,
        int(index.size),
        int(highspy.MatrixFormat.kRowwise),
        int(highspy.ObjSense.kMinimize),
        0.0,
        cost,
        col_lo,
        col_hi,
        row_lo,
        row_hi,
        start[:-1].astype(np.int32),
        index.astype(np.int32),
        value,
        integrality,
    )
    # No MIP start is passed: HiGHS 1.16 mis-maps a user solution into the presolved space on some models
    # (it reported an objective the returned columns do not have). ``hint`` is only the no-incumbent fallback.
    h.run()
    status = _status(h)
    info: Any = h.getInfo()
    x = np.asarray(h.getSolution().col_value, dtype=np.float64)
    if x.size != n_cols or int(info.primal_solution_status) != 2:  # 2 = kSolutionStatusFeasible
        # No incumbent (e.g. a tiny time limit): the hint is feasible by construction, report it.
        return hint.copy(), status if status != "optimal" else "no_solution", -_INF
    objective = float(cost @ x)
    if not math.isclose(objective, float(info.objective_function_value), rel_tol=1e-6, abs_tol=1e-6):
        raise RuntimeError(
            f"HiGHS returned columns worth {objective}, not its objective {info.objective_function_value}"
        )
    if integral:
        bound = float(info.mip_dual_bound)
    else:
        bound = float(info.objective_function_value) if status == "optimal" else -_INF
    return x, status, bound


def offline_optimum(
    demand_units: Sequence[float] | FloatArray,
    offerings: Sequence[OfferingSeries],
    tick_seconds: float,
    *,
    time_limit_seconds: float = 60.0,
    integral: bool = True,
    warm_start: bool = True,
    mip_rel_gap: float = 1e-3,
    unmet_penalty_usd_per_unit_tick: float | None = None,
    max_wait_ticks: int = 0,
    blocks: BlockQueue | None = None,
) -> OptimumResult:
    """The cheapest schedule covering ``demand_units`` with perfect foresight (see the module docstring).

    ``max_wait_ticks`` (W) lets work wait in a FIFO backlog: the work arriving at tick ``a`` may be served at
    any tick ``a .. a + W`` (``W = 0``: every tick's demand is covered at that tick).

    ``integral=False`` solves the LP relaxation (fractional instances, boot delays kept; with a backlog, plus
    the interval cuts that are valid for integer fleets, see :func:`_interval_cuts`): a lower bound on the
    integral optimum. ``status`` is ``"optimal"`` (within ``mip_rel_gap``) or ``"time_limit"`` (then
    ``cost_usd`` is the best schedule found and ``lower_bound_usd`` the solver's dual bound).
    """
    demand = _as_demand(demand_units)
    _check_offerings(offerings)
    wait = _as_wait(max_wait_ticks)
    if tick_seconds <= 0:
        raise ValueError("tick_seconds must be positive")
    n_ticks = demand.size
    hours = tick_seconds / 3600.0
    avails = [_as_available(o, n_ticks) for o in offerings]
    penalty = (
        unmet_penalty_usd_per_unit_tick
        if unmet_penalty_usd_per_unit_tick is not None
        else _default_penalty(offerings, hours)
    )
    if blocks is not None and (wait > 0 or blocks.cum.shape[0] != n_ticks):
        raise ValueError("blocks need max_wait_ticks = 0 and one row per tick")
    lay = _layout(offerings, n_ticks, wait, carry=blocks is not None)
    cost, col_lo, col_hi, row_lo, row_hi, start, index, value = _build(
        demand, offerings, avails, hours, penalty, warm_start, lay, wait, blocks
    )
    hint = np.zeros(lay.n_cols, dtype=np.float64)
    hint[lay.u_start : lay.q_start] = demand  # all demand unmet, no instances, no backlog: always feasible
    if blocks is not None:  # fake capacity of all of a block's work at every tick meets every block row
        hint[lay.u_start : lay.q_start] = np.maximum(demand, blocks.cum[:, -1])
    u_cols = slice(lay.u_start, lay.q_start)

    t0 = time.perf_counter()
    x, status, bound = _solve(
        cost, col_lo, col_hi, row_lo, row_hi, start, index, value, integral, hint, lay.u_start,
        time_limit_seconds, mip_rel_gap,
    )  # fmt: skip
    unmet = float(np.sum(x[u_cols])) if np.all(np.isfinite(x)) else math.nan
    if unmet > _UNMET_EPS and status == "optimal":
        # Phase 2: the cheapest schedule with no more unmet demand than phase 1 left (the penalty term no
        # longer distorts the gap or the cost).
        cap_row = (np.arange(lay.u_start, lay.q_start, dtype=np.int64), np.ones(n_ticks))
        cost2 = cost.copy()
        cost2[u_cols] = 0.0
        start2 = np.append(start, start[-1] + n_ticks)
        remaining = time_limit_seconds - (time.perf_counter() - t0)
        x2, status2, bound2 = _solve(
            cost2, col_lo, col_hi,
            np.append(row_lo, -_INF), np.append(row_hi, unmet * (1 + 1e-9) + 1e-9),
            start2, np.concatenate((index, cap_row[0])), np.concatenate((value, cap_row[1])),
            integral, x, lay.u_start, remaining, mip_rel_gap,
        )  # fmt: skip
        if np.all(np.isfinite(x2)):
            x, status, unmet = x2, status2, float(np.sum(x2[u_cols]))
            bound = bound2
        else:
            bound = -_INF
    elif math.isfinite(unmet):
        # No unmet demand: the dual bound of cost + penalty x unmet also bounds the cost of every schedule
        # that covers the demand.
        unmet = 0.0
    solve_seconds = time.perf_counter() - t0

    if integral:
        x = np.rint(x)
    launches: dict[str, IntArray] = {}
    instances: dict[str, IntArray] = {}
    ready: dict[str, IntArray] = {}
    ready_units = np.zeros(n_ticks, dtype=np.float64)
    total = 0.0
    for k, o in enumerate(offerings):
        nl = lay.n_launch[k]
        lk = np.zeros(n_ticks, dtype=np.float64)
        lk[:nl] = x[lay.l_start[k] : lay.l_start[k] + nl]
        rk = x[lay.r_start[k] : lay.r_start[k] + n_ticks]
        if o.boot_ticks == 0:  # launches are free then: report only the ones the ready count needs
            lk = np.maximum(np.diff(rk, prepend=rk[0] if warm_start and rk.size else 0.0), 0.0)
        alive = rk + _window_sum(lk, o.boot_ticks, n_ticks)
        total += o.usd_per_hour * hours * float(np.sum(rk) + o.boot_ticks * np.sum(lk))
        ready_units += o.units * rk
        launches[o.name] = _to_int(lk, integral)
        instances[o.name] = _to_int(alive, integral)
        ready[o.name] = _to_int(rk, integral)
    if not np.all(np.isfinite(x)):
        total = math.nan
    unmet_ticks = late_work(demand, ready_units, wait)
    if integral and math.isfinite(unmet_ticks):
        unmet = unmet_ticks
    return OptimumResult(
        cost_usd=total,
        ready_units=ready_units,
        instances=instances,
        launches=launches,
        status=status,
        lower_bound_usd=min(bound, total) if status == "optimal" and math.isfinite(total) else bound,
        unmet_unit_ticks=unmet if unmet > _UNMET_EPS else 0.0,
        ready=ready,
        solve_seconds=solve_seconds,
    )


def _to_int(x: FloatArray, integral: bool) -> IntArray:
    """Integer view of a column block (the LP relaxation is rounded up: an upper envelope for display)."""
    y = np.nan_to_num(x, nan=0.0)
    return (np.rint(y) if integral else np.ceil(y - 1e-9)).astype(np.int64)


# ------------------------------------------------------------------------------------------- aggregation
