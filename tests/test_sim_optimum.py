"""Offline optimum baseline (B3) and fluid lower bound: autoscaler/sim/optimum.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscaler.sim.aggregate import aggregate, block_rates, disaggregate
from autoscaler.sim.optimum import (
    OfferingSeries,
    OptimumResult,
    fluid_lower_bound,
    offline_optimum,
)
from autoscaler.sim.series import late_work

UNLIMITED = 10**9
HOUR = 3600.0


def od(name: str, price: float, units: float, n: int, boot: int) -> OfferingSeries:
    return OfferingSeries(name, price, units, [UNLIMITED] * n, boot)


def check_schedule(
    res: OptimumResult,
    demand: np.ndarray | list[float],
    offerings: list[OfferingSeries],
    tick_seconds: float,
    *,
    warm_start: bool = True,
) -> float:
    """Assert the schedule obeys the model's rules; return its recomputed cost."""
    d = np.asarray(demand, dtype=float)
    n = d.size
    assert res.ready is not None
    cost = 0.0
    supplied = np.zeros(n)
    for o in offerings:
        ready, launches, alive = res.ready[o.name], res.launches[o.name], res.instances[o.name]
        assert ready.shape == launches.shape == alive.shape == (n,)
        assert np.all(ready >= 0) and np.all(launches >= 0)
        b = o.boot_ticks
        for t in range(n):
            arrived = launches[t - b] if t - b >= 0 else 0
            prev = ready[t - 1] if t >= 1 else (math.inf if warm_start else 0)
            assert ready[t] <= prev + arrived, (o.name, t)
            booting = sum(launches[s] for s in range(max(0, t - b + 1), t + 1))
            assert alive[t] == ready[t] + booting, (o.name, t)
            assert alive[t] <= o.available[t], (o.name, t)
        assert np.all(launches[max(n - b, 0) :] == 0), "launch that is never ready inside the horizon"
        cost += o.usd_per_hour * tick_seconds / 3600.0 * float(alive.sum())
        supplied += o.units * ready
    np.testing.assert_allclose(res.ready_units, supplied)
    unmet = float(np.maximum(d - supplied, 0.0).sum())
    assert res.unmet_unit_ticks == pytest.approx(unmet, abs=1e-6)
    assert res.cost_usd == pytest.approx(cost, rel=1e-9, abs=1e-9)
    return cost


# --------------------------------------------------------------------------------- one on-demand offering


@pytest.mark.parametrize(
    ("demand", "units", "price", "boot", "ticks", "tick_seconds"),
    [
        (3.5, 1.0, 4.0, 0, 10, HOUR),  # 4 instances
        (4.0, 2.0, 4.0, 2, 10, HOUR),  # exactly 2
        (5.0, 2.0, 1.5, 3, 24, 1800.0),  # 3 instances, half-hour ticks
        (0.1, 8.0, 32.77, 10, 50, 30.0),  # 1 big instance, 30 s ticks
        (0.0, 1.0, 4.0, 2, 10, HOUR),  # nothing to do
    ],
)
def test_constant_demand_one_on_demand_offering_warm_start(
    demand: float, units: float, price: float, boot: int, ticks: int, tick_seconds: float
) -> None:
    offs = [od("od", price, units, ticks, boot)]
    res = offline_optimum([demand] * ticks, offs, tick_seconds)
    n = math.ceil(demand / units)
    assert res.status == "optimal"
    assert res.cost_usd == pytest.approx(n * price * ticks * tick_seconds / 3600.0)
    assert res.unmet_unit_ticks == 0.0
    assert np.all(res.instances["od"] == n)
    assert np.all(res.launches["od"] == 0)  # warm start: the fleet is ready at t=0, nothing is relaunched
    assert res.lower_bound_usd <= res.cost_usd + 1e-9
    check_schedule(res, [demand] * ticks, offs, tick_seconds)


@pytest.mark.parametrize(
    ("first_demand_tick", "expected_unmet_ticks"),
    [(0, 2), (1, 1), (2, 0), (5, 0)],
)
def test_cold_start_pays_the_boot_and_leaves_early_demand_unmet(
    first_demand_tick: int, expected_unmet_ticks: int
) -> None:
    ticks, boot = 10, 2
    demand = [0.0] * first_demand_tick + [3.0] * (ticks - first_demand_tick)
    offs = [od("od", 1.0, 1.0, ticks, boot)]
    res = offline_optimum(demand, offs, HOUR, warm_start=False)
    assert res.status == "optimal"
    assert res.unmet_unit_ticks == pytest.approx(3.0 * expected_unmet_ticks)
    # 3 instances, launched as late as possible, paid from launch (boot ticks) to the end
    launch_at = max(first_demand_tick - boot, 0)
    assert res.launches["od"][launch_at] == 3
    assert res.cost_usd == pytest.approx(3 * (ticks - launch_at))
    check_schedule(res, demand, offs, HOUR, warm_start=False)


def test_demand_step_up_launches_boot_ticks_ahead() -> None:
    ticks, boot = 12, 3
    demand = [1.0] * 6 + [3.0] * 6
    offs = [od("od", 2.0, 1.0, ticks, boot)]
    res = offline_optimum(demand, offs, HOUR)
    assert res.launches["od"][6 - boot] == 2  # ready exactly when the step arrives
    assert res.cost_usd == pytest.approx(2.0 * (12 + 2 * (6 + boot)))
    check_schedule(res, demand, offs, HOUR)


def test_step_down_stops_instances() -> None:
    demand = [4.0] * 5 + [1.0] * 5
    offs = [od("od", 1.0, 1.0, 10, 2)]
    res = offline_optimum(demand, offs, HOUR)
    assert list(res.instances["od"]) == [4] * 5 + [1] * 5
    check_schedule(res, demand, offs, HOUR)


# -------------------------------------------------------------------------------------- spot vs on-demand


def test_cheaper_spot_is_chosen_when_available() -> None:
    ticks = 20
    offs = [od("od", 3.0, 1.0, ticks, 2), OfferingSeries("spot", 1.0, 1.0, [5] * ticks, 2)]
    res = offline_optimum([2.0] * ticks, offs, HOUR)
    assert np.all(res.instances["spot"] == 2)
    assert np.all(res.instances["od"] == 0)
    assert res.cost_usd == pytest.approx(2 * 1.0 * ticks)


def test_spot_outage_is_bridged_by_on_demand_launched_early() -> None:
    """Spot availability drops to 0 on ticks 10..19: the on-demand bridge is launched at tick 7 (boot 3)
    so it is ready at 10; spot is relaunched when it is back (20) and is ready at 23."""
    ticks, boot = 30, 3
    avail = [5] * 10 + [0] * 10 + [5] * 10
    offs = [od("od", 3.0, 1.0, ticks, boot), OfferingSeries("spot", 1.0, 1.0, avail, boot)]
    demand = [2.0] * ticks
    res = offline_optimum(demand, offs, HOUR)
    assert res.status == "optimal"
    assert res.unmet_unit_ticks == 0.0
    assert res.launches["od"][10 - boot] == 2
    assert res.launches["od"].sum() == 2
    assert res.launches["spot"][20] == 2
    assert list(res.instances["od"]) == [0] * 7 + [2] * 16 + [0] * 7
    # spot: ready 0..9, preempted 10..19, booting 20..22, ready 23..29; on-demand alive 7..22
    assert res.cost_usd == pytest.approx(2 * 1.0 * 10 + 2 * 3.0 * 16 + 2 * 1.0 * 10)
    check_schedule(res, demand, offs, HOUR)


def test_spot_capacity_is_topped_up_with_on_demand() -> None:
    ticks = 8
    offs = [od("od", 3.0, 1.0, ticks, 1), OfferingSeries("spot", 1.0, 1.0, [3] * ticks, 1)]
    res = offline_optimum([5.0] * ticks, offs, HOUR)
    assert np.all(res.instances["spot"] == 3)
    assert np.all(res.instances["od"] == 2)


def test_bigger_instance_wins_when_cheaper_per_unit() -> None:
    ticks = 6
    offs = [od("small", 1.0, 1.0, ticks, 0), od("big", 3.0, 4.0, ticks, 0)]
    # demand 4: one big ($3) beats four small ($4); demand 1: one small ($1) beats one big ($3)
    res = offline_optimum([4.0] * 3 + [1.0] * 3, offs, HOUR)
    assert list(res.instances["big"]) == [1, 1, 1, 0, 0, 0]
    assert list(res.instances["small"]) == [0, 0, 0, 1, 1, 1]
    assert res.cost_usd == pytest.approx(3 * 3.0 + 3 * 1.0)


# ---------------------------------------------------------------------------------------------- bounds


def random_problem(
    seed: int, ticks: int, n_offerings: int = 6, *, mixed_units: bool = True
) -> tuple[np.ndarray, list[OfferingSeries]]:
    """Noisy diurnal-ish demand; spot/on-demand pairs, spot with periodic availability drops."""
    rng = np.random.default_rng(seed)
    t = np.arange(ticks)
    demand = np.clip(20 + 10 * np.sin(t / (ticks / 12)) + rng.normal(0, 3, ticks), 0, None)
    offs: list[OfferingSeries] = []
    for i in range(n_offerings // 2):
        period = ticks / (3 + 2 * i)
        avail = np.where(np.sin(t / period + i) > -0.3, 6 + 2 * i, 1).astype(int)
        units = 2.0 + i if mixed_units else 2.0
        offs.append(OfferingSeries(f"spot{i}", 1.0 + 0.3 * i, units, avail.tolist(), 4 + 2 * i))
        offs.append(od(f"od{i}", 3.2 + 0.8 * i, units, ticks, 6 + 2 * i))
    return demand, offs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fluid_bound_le_relaxed_le_integral(seed: int) -> None:
    demand, offs = random_problem(seed, 150)
    integral = offline_optimum(demand, offs, 30.0)
    relaxed = offline_optimum(demand, offs, 30.0, integral=False)
    fluid = fluid_lower_bound(demand, offs, 30.0)
    assert integral.status == relaxed.status == "optimal"
    assert integral.unmet_unit_ticks == relaxed.unmet_unit_ticks == 0.0
    assert fluid <= relaxed.cost_usd + 1e-6
    assert relaxed.cost_usd <= integral.cost_usd + 1e-6
    assert integral.lower_bound_usd <= integral.cost_usd + 1e-9
    assert integral.cost_usd - integral.lower_bound_usd <= 1e-3 * integral.cost_usd + 1e-6  # mip_rel_gap
    assert relaxed.lower_bound_usd == pytest.approx(relaxed.cost_usd, rel=1e-6)
    check_schedule(integral, demand, offs, 30.0)


@pytest.mark.parametrize(
    ("demand", "offerings", "expected"),
    [
        # cheapest per unit first: 2 units of spot ($1/unit/h) then 1.5 units of od ($3/unit/h)
        ([3.5], [OfferingSeries("spot", 1.0, 1.0, [2], 5), od("od", 3.0, 1.0, 1, 5)], 2.0 + 4.5),
        # fractional instances: 3 units from a 4-unit $8 instance -> $6
        ([3.0], [od("big", 8.0, 4.0, 1, 3)], 6.0),
        # not coverable: pay for what is available
        ([10.0], [OfferingSeries("spot", 1.0, 1.0, [3], 0)], 3.0),
        ([0.0, 1.0], [od("od", 2.0, 1.0, 2, 1)], 2.0),
    ],
)
def test_fluid_lower_bound_closed_form(
    demand: list[float], offerings: list[OfferingSeries], expected: float
) -> None:
    assert fluid_lower_bound(demand, offerings, HOUR) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ infeasibility


@pytest.mark.parametrize("integral", [True, False])
def test_uncoverable_demand_is_reported_as_unmet(integral: bool) -> None:
    ticks = 10
    avail = [2] * 5 + [1] * 5
    offs = [OfferingSeries("spot", 1.0, 1.0, avail, 1), OfferingSeries("od", 3.0, 1.0, [1] * ticks, 1)]
    demand = [3.0] * ticks
    res = offline_optimum(demand, offs, HOUR, integral=integral)
    assert res.status == "optimal"
    assert res.unmet_unit_ticks == pytest.approx(5 * 1.0)  # ticks 5..9 are one unit short
    # every available instance is used, and the penalty is not part of the cost
    assert res.cost_usd == pytest.approx(1.0 * (2 * 5 + 1 * 5) + 3.0 * ticks)
    if integral:
        check_schedule(res, demand, offs, HOUR)


def test_no_offerings_everything_unmet() -> None:
    res = offline_optimum([1.0, 2.0], [], HOUR)
    assert res.unmet_unit_ticks == pytest.approx(3.0)
    assert res.cost_usd == 0.0


# -------------------------------------------------------------------------------------------- aggregation


def test_aggregate_takes_block_max_demand_min_availability_and_rounds_boot_up() -> None:
    demand = [1.0, 5.0, 2.0, 0.0, 3.0, 1.0, 7.0]
    offs = [OfferingSeries("spot", 1.0, 1.0, [4, 3, 9, 9, 2, 5, 6], 4)]
    agg = aggregate(demand, offs, 3)
    assert agg.factor == 3 and agg.n_fine_ticks == 7
    assert list(agg.demand_units) == [5.0, 3.0, 7.0]  # last block is partial
    assert list(agg.offerings[0].available) == [3, 2, 6]
    assert agg.offerings[0].boot_ticks == 2  # ceil(4 / 3)
    assert agg.tick_seconds(30.0) == 90.0
    assert aggregate(demand, offs, 1).offerings[0].boot_ticks == 4


@pytest.mark.parametrize(("seed", "factor"), [(0, 2), (1, 5), (2, 7)])
def test_aggregated_optimum_is_a_feasible_upper_bound(seed: int, factor: int) -> None:
    ticks, tick_seconds = 203, 30.0
    demand, offs = random_problem(seed, ticks)
    fine = offline_optimum(demand, offs, tick_seconds)
    agg = aggregate(demand, offs, factor)
    coarse = offline_optimum(agg.demand_units, agg.offerings, agg.tick_seconds(tick_seconds))
    assert coarse.status == "optimal" and coarse.unmet_unit_ticks == 0.0
    back = disaggregate(coarse, demand, offs, tick_seconds, factor)
    cost = check_schedule(back, demand, offs, tick_seconds)  # feasible on the fine grid, nothing unmet
    assert back.unmet_unit_ticks == 0.0
    assert cost <= coarse.cost_usd + 1e-6
    assert fine.cost_usd * (1 - 1e-3) <= cost + 1e-6  # an upper bound (up to the MIP gap)
    assert back.lower_bound_usd == pytest.approx(fluid_lower_bound(demand, offs, tick_seconds))
    assert back.lower_bound_usd <= fine.cost_usd + 1e-6


def test_aggregate_factor_one_is_identity() -> None:
    demand, offs = random_problem(3, 50)
    agg = aggregate(demand, offs, 1)
    a = offline_optimum(agg.demand_units, agg.offerings, 30.0)
    b = offline_optimum(demand, offs, 30.0)
    assert a.cost_usd == pytest.approx(b.cost_usd, rel=2e-3)


# -------------------------------------------------------------------------------------- scale and misuse


def test_two_thousand_ticks_six_offerings_solves_to_optimality() -> None:
    # one unit size: mixed sizes make the per-tick coverage a knapsack and the MILP much harder (see report)
    demand, offs = random_problem(42, 2000, mixed_units=False)
    res = offline_optimum(demand, offs, 30.0, time_limit_seconds=60.0)
    assert res.status == "optimal"
    assert res.unmet_unit_ticks == 0.0
    assert fluid_lower_bound(demand, offs, 30.0) <= res.cost_usd
    print(f"2000x6: cost={res.cost_usd:.2f} bound={res.lower_bound_usd:.2f} solve={res.solve_seconds:.2f}s")


def test_time_limit_still_returns_a_schedule_and_a_bound() -> None:
    demand, offs = random_problem(7, 1500)
    res = offline_optimum(demand, offs, 30.0, time_limit_seconds=0.05)
    assert res.status in {"optimal", "time_limit"}
    assert res.lower_bound_usd <= res.cost_usd + 1e-6
    assert math.isfinite(res.cost_usd)
    check_schedule(res, demand, offs, 30.0)  # whatever was found (at worst: nothing, all unmet) is valid


@pytest.mark.parametrize(
    ("demand", "offerings", "message"),
    [
        ([1.0, 1.0], [OfferingSeries("a", 1.0, 1.0, [1], 0)], "ticks"),
        ([-1.0], [OfferingSeries("a", 1.0, 1.0, [1], 0)], "non-negative"),
        ([1.0], [OfferingSeries("a", 1.0, 0.0, [1], 0)], "units"),
        ([1.0], [OfferingSeries("a", 1.0, 1.0, [1], -1)], "boot_ticks"),
        ([1.0], [OfferingSeries("a", 1.0, 1.0, [1], 0)] * 2, "unique"),
    ],
)
def test_bad_inputs_are_rejected(demand: list[float], offerings: list[OfferingSeries], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        offline_optimum(demand, offerings, HOUR)


# ------------------------------------------------------------------------- queueing: waiting within the SLO


def check_queue_schedule(
    res: OptimumResult,
    demand: list[float] | np.ndarray,
    offerings: list[OfferingSeries],
    tick_seconds: float,
    wait: int,
) -> float:
    """Assert the schedule obeys the fleet rules and that a FIFO queue served by its ready units meets every
    deadline (work of tick a served by a + wait); return its recomputed cost."""
    assert res.ready is not None
    n = len(demand)
    supplied = np.zeros(n)
    cost = 0.0
    for o in offerings:
        ready, launches, alive = res.ready[o.name], res.launches[o.name], res.instances[o.name]
        b = o.boot_ticks
        for t in range(n):
            arrived = launches[t - b] if t - b >= 0 else 0
            assert t == 0 or ready[t] <= ready[t - 1] + arrived, (o.name, t)
            assert alive[t] == ready[t] + sum(launches[max(0, t - b + 1) : t + 1]), (o.name, t)
            assert alive[t] <= o.available[t], (o.name, t)
        cost += o.usd_per_hour * tick_seconds / 3600.0 * float(alive.sum())
        supplied += o.units * ready
    assert late_work(demand, supplied, wait) == pytest.approx(res.unmet_unit_ticks, abs=1e-6)
    assert res.cost_usd == pytest.approx(cost, rel=1e-9, abs=1e-9)
    return cost


@pytest.mark.parametrize(
    ("capacity", "wait", "late"),
    [
        ([1, 1, 1, 1, 1], 0, 3.0),  # 4 arrive at tick 1, 1 served, 3 late
        ([1, 1, 1, 1, 1], 3, 0.0),  # served at ticks 1, 2, 3, 4 (the last one 3 ticks late: just in time)
        ([1, 1, 1, 1, 1], 2, 1.0),  # the one served at tick 4 is late
        ([0, 0, 0, 0, 0], 2, 4.0),  # due by tick 3, nothing served: all 4 late
        ([0, 0, 0, 4, 0], 2, 0.0),  # all 4 served at tick 3, just in time
        ([0, 0, 0, 0, 4], 2, 4.0),  # ... at tick 4: too late
    ],
)
def test_late_work_hand_cases(capacity: list[float], wait: int, late: float) -> None:
    demand = [0.0, 4.0, 0.0, 0.0, 0.0]
    assert late_work(demand, np.asarray(capacity, dtype=float), wait) == pytest.approx(late)


def test_late_work_fifo_serves_the_oldest_first_and_the_horizon_cuts_the_tail() -> None:
    # 2 per tick arrive, capacity 1 per tick, wait 1: tick 0's 2 are served at 0 and 1, tick 1's 2 at 2 and 3
    # (both late: due by 2 -> one late), ... ; the last tick's work is still due after the horizon: not late.
    demand = [2.0, 2.0, 0.0, 0.0]
    assert late_work(demand, np.array([1.0, 1.0, 1.0, 1.0]), 1) == pytest.approx(1.0)
    assert late_work([0.0, 0.0, 5.0], np.zeros(3), 1) == 0.0  # due at tick 3, beyond the horizon


@pytest.mark.parametrize(
    ("wait", "cost", "peak"),
    [
        # A burst of 4 units of work at tick 4, one $1/h 1-unit offering booting in 2 ticks (1 h ticks).
        (0, 4 * (2 + 1), 4),  # no waiting: 4 instances launched at 2, booting 2 ticks, ready 1 tick
        (1, 2 * (2 + 2), 2),  # 2 ticks to serve it: 2 instances, ready at 4 and 5
        (3, 1 * (2 + 4), 1),  # 4 ticks: one instance serves a unit per tick, ready 4..7
        (5, 1 * (2 + 4), 1),  # more slack than work: still one instance for 4 ticks
    ],
)
def test_a_burst_the_slo_wait_absorbs_needs_less_capacity(wait: int, cost: float, peak: int) -> None:
    ticks = 12
    demand = [0.0] * 4 + [4.0] + [0.0] * 7
    offs = [od("od", 1.0, 1.0, ticks, 2)]
    res = offline_optimum(demand, offs, HOUR, max_wait_ticks=wait)
    assert res.status == "optimal" and res.unmet_unit_ticks == 0.0
    assert res.cost_usd == pytest.approx(cost)
    assert int(res.instances["od"].max()) == peak
    assert check_queue_schedule(res, demand, offs, HOUR, wait) == pytest.approx(cost)
    # fluid (no boot, fractional): 4 unit-ticks at $1/h whatever the wait
    assert fluid_lower_bound(demand, offs, HOUR, max_wait_ticks=wait) == pytest.approx(4.0)


def test_a_burst_longer_than_the_wait_needs_more_capacity_than_one_it_absorbs() -> None:
    ticks, wait = 12, 2
    offs = [od("od", 1.0, 1.0, ticks, 2)]
    absorbed = offline_optimum([0.0] * 4 + [3.0] + [0.0] * 7, offs, HOUR, max_wait_ticks=wait)
    exceeds = offline_optimum([0.0] * 4 + [6.0] + [0.0] * 7, offs, HOUR, max_wait_ticks=wait)
    assert int(absorbed.instances["od"].max()) == 1  # 3 units over ticks 4..6
    assert int(exceeds.instances["od"].max()) == 2  # 6 units in 3 ticks need 2 per tick
    assert absorbed.cost_usd == pytest.approx(1 * (2 + 3))
    assert exceeds.cost_usd == pytest.approx(2 * (2 + 3))


def test_waiting_lets_cheap_spot_that_comes_later_serve_the_backlog() -> None:
    # Spot ($1/h) is available only from tick 3 on; on-demand costs $5/h; no boot. Demand 1 at tick 2.
    # W = 0: on-demand at tick 2 ($5). W = 1: spot at tick 3 ($1).
    ticks = 6
    offs = [od("od", 5.0, 1.0, ticks, 0), OfferingSeries("spot", 1.0, 1.0, [0, 0, 0, 5, 5, 5], 0)]
    demand = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert offline_optimum(demand, offs, HOUR).cost_usd == pytest.approx(5.0)
    res = offline_optimum(demand, offs, HOUR, max_wait_ticks=1)
    assert res.cost_usd == pytest.approx(1.0)
    assert list(res.ready["spot"]) == [0, 0, 0, 1, 0, 0]  # type: ignore[index]
    assert fluid_lower_bound(demand, offs, HOUR, max_wait_ticks=1) == pytest.approx(1.0)
    assert fluid_lower_bound(demand, offs, HOUR) == pytest.approx(5.0)


def hand_schedule_cost(demand: np.ndarray, offs: list[OfferingSeries], tick_seconds: float, wait: int) -> float:
    """A feasible schedule made by hand: warm-start with enough of the cheapest-per-unit unlimited offering to
    cover the peak for the whole horizon (no launches); check it meets every deadline and return its cost."""
    cheapest = min((o for o in offs if min(o.available) >= UNLIMITED), key=lambda o: o.usd_per_hour / o.units)
    n = math.ceil(float(demand.max()) / cheapest.units)
    assert late_work(demand, np.full(demand.size, n * cheapest.units), wait) == 0.0
    return n * cheapest.usd_per_hour * tick_seconds / 3600.0 * demand.size


@pytest.mark.parametrize(("seed", "wait", "mixed"), [(0, 1, False), (1, 3, False), (2, 2, True)])
def test_queueing_bounds_are_ordered(seed: int, wait: int, mixed: bool) -> None:
    """fluid(W) <= LP(W) <= B3(W) <= B3(W = 0) and B3(W) <= a feasible hand-made schedule's cost."""
    ticks, tick_seconds = 24, 30.0
    demand, offs = random_problem(seed, ticks, 4, mixed_units=mixed)
    b3 = offline_optimum(demand, offs, tick_seconds, max_wait_ticks=wait)
    relaxed = offline_optimum(demand, offs, tick_seconds, max_wait_ticks=wait, integral=False)
    no_wait = offline_optimum(demand, offs, tick_seconds)
    fluid = fluid_lower_bound(demand, offs, tick_seconds, max_wait_ticks=wait)
    assert b3.status == relaxed.status == "optimal"
    assert b3.unmet_unit_ticks == 0.0
    assert fluid <= relaxed.cost_usd + 1e-6
    assert relaxed.cost_usd <= b3.cost_usd + 1e-6
    assert b3.lower_bound_usd <= b3.cost_usd + 1e-9
    assert b3.cost_usd <= no_wait.cost_usd * (1 + 1e-3) + 1e-6  # waiting never costs more (up to the MIP gap)
    assert fluid <= fluid_lower_bound(demand, offs, tick_seconds) + 1e-6
    assert b3.cost_usd <= hand_schedule_cost(demand, offs, tick_seconds, wait) + 1e-6
    check_queue_schedule(b3, demand, offs, tick_seconds, wait)


def test_queueing_fluid_bound_on_chunks_is_still_a_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    import autoscaler.sim.optimum as om

    demand, offs = random_problem(5, 90, 4, mixed_units=False)
    whole = fluid_lower_bound(demand, offs, 30.0, max_wait_ticks=2)
    monkeypatch.setattr(om, "FLUID_CHUNK_TICKS", 25)
    chunked = fluid_lower_bound(demand, offs, 30.0, max_wait_ticks=2)
    relaxed = offline_optimum(demand, offs, 30.0, max_wait_ticks=2, integral=False)  # boots kept: above fluid
    assert chunked <= whole + 1e-9
    assert whole <= relaxed.cost_usd + 1e-6
    assert chunked >= 0.9 * whole  # only the work due across a chunk boundary is left out


def test_unmet_work_with_a_wait_is_what_even_b3_cannot_serve_in_time() -> None:
    # 1 instance at most ever; 3 units arrive at tick 1; wait 1: 2 served (ticks 1 and 2), 1 late.
    ticks = 5
    offs = [OfferingSeries("spot", 1.0, 1.0, [1] * ticks, 0)]
    demand = [0.0, 3.0, 0.0, 0.0, 0.0]
    res = offline_optimum(demand, offs, HOUR, max_wait_ticks=1)
    assert res.status == "optimal"
    assert res.unmet_unit_ticks == pytest.approx(1.0)
    assert res.cost_usd == pytest.approx(2.0)  # ready at ticks 1 and 2 only: the penalty is not in the cost
    check_queue_schedule(res, demand, offs, HOUR, 1)


@pytest.mark.parametrize(
    ("demand", "wait", "rates"),
    [
        ([6.0, 0.0, 0.0], 0, [6.0]),  # no wait: the block max
        ([6.0, 0.0, 0.0], 1, [3.0]),  # due by tick 1: 2 ticks
        ([6.0, 0.0, 0.0], 5, [2.0]),  # due after the block: it must still be served by the block's end
        ([0.0, 0.0, 6.0], 5, [6.0]),  # the last tick's burst: the block's end is its deadline
        # blocks of 3; the last one is padded with zeros: work due after the horizon may wait past its end
        ([2.0, 2.0, 2.0, 9.0], 1, [2.0, 4.5]),
    ],
)
def test_block_rates_hand_cases(demand: list[float], wait: int, rates: list[float]) -> None:
    assert list(block_rates(demand, 3, wait)) == pytest.approx(rates)


@pytest.mark.parametrize(("seed", "factor", "wait"), [(0, 3, 2), (1, 4, 1)])
def test_aggregated_queueing_optimum_is_a_feasible_upper_bound(seed: int, factor: int, wait: int) -> None:
    ticks, tick_seconds = 31, 30.0
    demand, offs = random_problem(seed, ticks, 4, mixed_units=False)
    fine = offline_optimum(demand, offs, tick_seconds, max_wait_ticks=wait)
    agg = aggregate(demand, offs, factor, wait)
    assert np.all(agg.demand_units <= block_rates(demand, factor, 0) + 1e-9)  # never above the block max
    coarse = offline_optimum(agg.demand_units, agg.offerings, agg.tick_seconds(tick_seconds))
    back = disaggregate(coarse, demand, offs, tick_seconds, factor, wait)
    assert back.unmet_unit_ticks == 0.0
    cost = check_queue_schedule(back, demand, offs, tick_seconds, wait)
    assert fine.lower_bound_usd <= cost + 1e-6
    assert back.lower_bound_usd == pytest.approx(
        fluid_lower_bound(demand, offs, tick_seconds, max_wait_ticks=wait)
    )
    assert back.lower_bound_usd <= fine.cost_usd + 1e-6


@pytest.mark.parametrize(("seed", "factor", "wait"), [(0, 2, 1), (2, 4, 3)])
def test_carry_model_lets_the_backlog_cross_blocks_and_stays_feasible(seed: int, factor: int, wait: int) -> None:
    """The carry model (blocks=...) is a restriction too, and much tighter than flushing every block."""
    ticks, tick_seconds = 41, 30.0
    demand, offs = random_problem(seed, ticks, 4, mixed_units=False)
    fine = offline_optimum(demand, offs, tick_seconds, max_wait_ticks=wait)
    agg = aggregate(demand, offs, factor, wait)
    assert agg.blocks is not None and agg.inner_rates is not None
    assert np.all(agg.inner_rates <= agg.demand_units + 1e-9)
    flush = disaggregate(
        offline_optimum(agg.demand_units, agg.offerings, agg.tick_seconds(tick_seconds)),
        demand, offs, tick_seconds, factor, wait,
    )  # fmt: skip
    carry_coarse = offline_optimum(
        agg.inner_rates, agg.offerings, agg.tick_seconds(tick_seconds), blocks=agg.blocks
    )
    carry = disaggregate(carry_coarse, demand, offs, tick_seconds, factor, wait)
    assert carry.unmet_unit_ticks == 0.0  # every request served within the SLO on the fine ticks
    cost = check_queue_schedule(carry, demand, offs, tick_seconds, wait)
    assert fine.lower_bound_usd <= cost + 1e-6
    assert cost <= flush.cost_usd * (1 + 5e-3)
    assert cost <= 1.05 * fine.cost_usd  # within 5% of the fine optimum on these problems (measured: < 1%)


def test_carry_model_hand_case() -> None:
    """Blocks of 2 ticks, wait 1, no boot: 2 units arrive at tick 1 (the last of block 0), due by tick 2. On-demand
    costs $1/h; spot $0.1/h exists only from tick 2. Flushing every block must serve them in block 0 on
    on-demand (2 instances x 2 ticks = $4); the carry model waits for spot in block 1 (2 x 2 x $0.1 = $0.40)."""
    demand = [0.0, 2.0, 0.0, 0.0]
    offs = [od("od", 1.0, 1.0, 4, 0), OfferingSeries("spot", 0.1, 1.0, [0, 0, 5, 5], 0)]
    agg = aggregate(demand, offs, 2, 1)
    assert list(agg.demand_units) == [2.0, 0.0]  # flush: the burst in the block's last tick is served there
    assert agg.inner_rates is not None and list(agg.inner_rates) == [0.0, 0.0]
    flush = offline_optimum(agg.demand_units, agg.offerings, 2 * HOUR)
    assert flush.cost_usd == pytest.approx(4.0)
    coarse = offline_optimum(agg.inner_rates, agg.offerings, 2 * HOUR, blocks=agg.blocks)
    assert coarse.ready is not None
    assert list(coarse.ready["od"]) == [0, 0] and list(coarse.ready["spot"]) == [0, 2]
    back = disaggregate(coarse, demand, offs, HOUR, 2, 1)
    assert back.unmet_unit_ticks == 0.0
    assert back.cost_usd == pytest.approx(0.4)
    # the fine optimum serves both at tick 2 on spot alone: $0.20
    assert offline_optimum(demand, offs, HOUR, max_wait_ticks=1).cost_usd == pytest.approx(0.2)
