"""Offline optimum baseline (B3) and fluid lower bound: autoscaler/sim/optimum.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscaler.sim.aggregate import aggregate, disaggregate
from autoscaler.sim.optimum import (
    OfferingSeries,
    OptimumResult,
    fluid_lower_bound,
    offline_optimum,
)

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
