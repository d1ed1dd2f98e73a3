"""Table tests of the rate-based rules: arrival rate + backlog drain, noise headroom, hysteresis, the seasonal
forecast, and the boot lead learned from the instance history (policies.rate, policies.boot, policies.scaling)."""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from autoscaler.config import Candidate, Forecast, Pool, Scaling, SyntheticSource, Targets
from autoscaler.lifecycle import InstanceState
from autoscaler.model import BootStats, Demand, InstanceRecord, Market, OfferingKey, Recommendation, ScalingState
from autoscaler.store import convert
from policies.boot import BootHistory, lead_seconds
from policies.rate import (
    burst_headroom,
    quantile,
    rate_need,
    season_entries,
    seasonal_forecast,
    with_headroom,
)
from policies.scaling import desired_capacity

NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
MU = 0.01  # requests per second one unit serves


def pool(**scaling: Any) -> Pool:
    return Pool(
        name="chat",
        max_capacity=1000,
        metrics=[
            SyntheticSource(name="q", type="synthetic", kind="queue"),
            SyntheticSource(name="a", type="synthetic", kind="arrivals"),
        ],
        targets=Targets(queue_per_unit=1, latency_slo_seconds=60, requests_per_unit_per_second=MU),
        scaling=Scaling(**scaling),
        candidates=[
            Candidate(cloud="simulated", instance_type="sim.a100x8", market=Market.SPOT, throughput=8),
            Candidate(cloud="simulated", instance_type="sim.a100x8", market=Market.ON_DEMAND, throughput=8),
        ],
    )


def history(rates: list[float], every: float = 30.0) -> tuple[Recommendation, ...]:
    """Rates ending one tick before NOW."""
    n = len(rates)
    return tuple(Recommendation(NOW - timedelta(seconds=every * (n - i)), r) for i, r in enumerate(rates))


@pytest.mark.parametrize(
    ("rate", "backlog", "lead", "expect_units"),
    [
        # no history: the level is this rate; headroom = 1.645 noise sd of the rate over the 60 s window
        pytest.param(0.5, 0.0, 120.0, (0.5 + 1.645 * math.sqrt(0.5 / 60)) / MU, id="rate-plus-noise"),
        # the backlog is drained within max(SLO 60 s, lead)
        pytest.param(0.5, 120.0, 120.0, (0.5 + 1.645 * math.sqrt(0.5 / 60)) / MU + 120 / (MU * 120), id="drain"),
        pytest.param(0.5, 120.0, 30.0, (0.5 + 1.645 * math.sqrt(0.5 / 60)) / MU + 120 / (MU * 60), id="drain-slo"),
        pytest.param(0.0, 30.0, 30.0, 30 / (MU * 60), id="backlog-only"),
    ],
)
def test_rate_need_serves_arrivals_and_drains_backlog(
    rate: float, backlog: float, lead: float, expect_units: float
) -> None:
    need, state = rate_need(pool(), rate, backlog, ScalingState(), NOW, lead)
    assert need.units == pytest.approx(expect_units)
    assert state.rates == (Recommendation(NOW, rate),)


def test_headroom_is_robust_to_a_rare_burst_and_follows_noise() -> None:
    t = [30.0 * i for i in range(200)]
    flat = [1.0] * 200
    assert burst_headroom(t, flat, flat, 60, 0.95, 60) == 0.0  # no noise, no growth: no headroom
    # the same, with one 10x burst of 4 ticks: the robust spread ignores it
    bursty = [10.0 if 100 <= i < 104 else 1.0 for i in range(200)]
    assert burst_headroom(t, bursty, flat, 60, 0.95, 60) == 0.0
    # noise of -2..2 noise sd: median 0, median absolute deviation 1
    sd = math.sqrt(1.0 / 60)
    noisy = [1.0 + sd * (-2, -1, 0, 1, 2)[i % 5] for i in range(200)]
    z = burst_headroom(t, noisy, flat, 30, 0.95, 60)
    assert z == pytest.approx(1.645 * 1.4826 * 1.0, rel=0.02)
    # with_headroom never goes beyond max_headroom x the rate
    assert with_headroom(1.0, 1000.0, 60, 3.0) == 3.0
    assert with_headroom(0.0, 5.0, 60, 3.0) == 0.0


@pytest.mark.parametrize(
    ("live", "rate", "expect"),
    [
        pytest.param(100.0, 0.70, 100.0, id="within-tolerance-kept"),  # need 70 >= 65: the band holds it
        pytest.param(100.0, 0.95, 100.0, id="need-just-below-live-kept"),
        pytest.param(100.0, 0.50, 50.0, id="clear-drop-scales-down"),
        pytest.param(100.0, 1.50, None, id="scales-up-at-once"),
    ],
)
def test_hysteresis_under_steady_load(live: float, rate: float, expect: float | None) -> None:
    p = pool(scale_down_window_seconds=0, scale_down_tolerance=0.35, level_window_seconds=60)
    state = ScalingState(rates=history([rate] * 20))
    result, _ = desired_capacity(p, Demand(0.0, None, arrival_rate=rate), live, live, state, NOW, 60)
    raw = result.raw
    assert result.signal == "rate"
    if expect is None:
        assert result.desired == raw > live
    else:
        assert raw < live
        assert result.desired == expect


def test_steady_noisy_load_does_not_oscillate() -> None:
    """A steady rate with +-25% tick-to-tick noise for two hours: after the first minutes the pool moves only as
    its learned headroom settles, a few small steps, never back and forth with the noise."""
    p = pool()
    state = ScalingState()
    live = 0.0
    steps: list[float] = []
    for i in range(240):
        now = NOW + timedelta(seconds=30 * i)
        rate = 0.5 * (1.0 + 0.25 * math.sin(i * 2.1))  # +-25% around 0.5 req/s, no trend
        result, state = desired_capacity(p, Demand(0.0, None, arrival_rate=rate), live, live, state, now, 60)
        if i > 20 and result.desired != live:
            steps.append(result.desired - live)
        live = result.desired
    reversals = sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))
    assert len(steps) <= 4 and reversals <= 1, steps
    assert all(abs(s) <= 0.2 * live for s in steps), steps
    assert 0.5 / MU < live < 1.5 * 0.5 / MU


def test_a_surge_is_met_at_once_without_waiting_for_the_level() -> None:
    p = pool()
    state = ScalingState(rates=history([0.1] * 20))
    result, _ = desired_capacity(p, Demand(0.0, None, arrival_rate=1.0), 20, 20, state, NOW, 60)
    assert result.desired >= 0.55 / MU  # sized on the 60 s rate, not on the level (0.19 req/s over 300 s)
    assert any("arrivals 0.55" in r for r in result.reasons)  # the 60 s mean of 0.1 and 1.0


FC = Forecast(period_seconds=3600, bucket_seconds=300, periods=3)


def seasonal(state_rates: dict[int, list[float]]) -> ScalingState:
    """{period offset (-1 = the last hour): rate per bucket} -> a state with those buckets (one sample each)."""
    period = int(NOW.timestamp() // 3600)
    return ScalingState(
        seasonal=tuple(
            (period + off, b, rate, 1)
            for off, rates in sorted(state_rates.items())
            for b, rate in enumerate(rates)
        )
    )


@pytest.mark.parametrize(
    ("periods", "lead", "expect"),
    [
        # NOW is on the hour (bucket 0); a surge at bucket 1 every hour is anticipated one lead ahead
        pytest.param({-2: [1, 5] + [1] * 10, -1: [1, 6] + [1] * 10}, 400, 5.0, id="recurring-surge-ahead"),
        pytest.param({-2: [1, 5] + [1] * 10, -1: [1, 6] + [1] * 10}, 100, 1.0, id="surge-beyond-the-lead"),
        pytest.param({-2: [1, 1] + [1] * 10, -1: [1, 9] + [1] * 10}, 400, 1.0, id="one-off-burst-ignored"),
        pytest.param({-1: [1, 6] + [1] * 10}, 400, None, id="one-period-is-not-a-season"),
    ],
)
def test_seasonal_forecast(periods: dict[int, list[float]], lead: float, expect: float | None) -> None:
    p = pool(forecast=FC)
    assert seasonal_forecast(p, seasonal(periods), NOW, lead) == expect


def test_forecast_pre_scales_before_a_recurring_surge() -> None:
    p = pool(forecast=FC)
    state = seasonal({-2: [0.1, 1.0] + [0.1] * 10, -1: [0.1, 1.0] + [0.1] * 10})
    state = ScalingState(rates=history([0.1] * 20), seasonal=state.seasonal)
    with_fc, _ = desired_capacity(p, Demand(0.0, None, arrival_rate=0.1), 20, 20, state, NOW, 400)
    off = pool(forecast=Forecast(enabled=False))
    without, _ = desired_capacity(off, Demand(0.0, None, arrival_rate=0.1), 20, 20, state, NOW, 400)
    assert with_fc.desired >= 1.0 / MU > without.desired


def key(zone: str = "sim-east-a", market: Market = Market.SPOT) -> OfferingKey:
    return OfferingKey("simulated", "sim-east", zone, "sim.a100x8", market)


def record(token: str, boot: float, state: InstanceState = InstanceState.READY, **kw: Any) -> InstanceRecord:
    return InstanceRecord(
        token=token,
        pool="chat",
        offering=kw.get("offering", key()),
        state=state,
        capacity_units=8,
        gpus=8,
        price_usd_per_hour=13.11,
        created_at=NOW,
        state_since=NOW + timedelta(seconds=boot),
    )


def test_boot_history_learns_each_record_once() -> None:
    h = BootHistory()
    h.observe([record("a", 100), record("b", 200), record("c", 50, InstanceState.PROVISIONING)])
    h.observe([record("a", 100), record("b", 200)])  # the same records next tick: not counted again
    (stats,) = h.stats().values()
    assert stats.samples == 2
    assert stats.median_seconds == pytest.approx(150)
    assert stats.p90_seconds == pytest.approx(quantile([100, 200], 0.9))


@pytest.mark.parametrize(
    ("boots", "expect_lead", "expect_why"),
    [
        pytest.param({}, 120.0, "scaling.boot_seconds", id="no-history-default"),
        pytest.param({key(): BootStats(1, 300, 300)}, 120.0, "scaling.boot_seconds", id="one-boot-not-enough"),
        pytest.param({key(): BootStats(5, 200, 240)}, 240.0, "learned", id="learned-p90"),
        pytest.param(
            {key(): BootStats(5, 200, 240), key(market=Market.ON_DEMAND): BootStats(4, 500, 600)},
            600.0,
            "learned",
            id="slowest-candidate",
        ),
        pytest.param(
            {OfferingKey("simulated", "sim-east", "sim-east-a", "sim.l4x1", Market.SPOT): BootStats(9, 9, 9)},
            120.0,
            "scaling.boot_seconds",
            id="other-types-ignored",
        ),
    ],
)
def test_lead_from_learned_boots(boots: dict[OfferingKey, BootStats], expect_lead: float, expect_why: str) -> None:
    lead, why = lead_seconds(pool(), boots)
    assert lead == pytest.approx(expect_lead)
    assert expect_why in why


def test_rate_state_survives_the_store_round_trip() -> None:
    p = pool(forecast=FC)
    state = ScalingState()
    for i in range(30):
        _, state = desired_capacity(
            p, Demand(0.0, None, arrival_rate=0.3), 30, 30, state, NOW + timedelta(seconds=30 * i), 60
        )
    stored = convert.scaling_state_json(state)
    assert stored["seasonal"] == [list(e) for e in season_entries(state)]  # the open bucket stored with the rest
    back = convert.scaling_state(json.loads(json.dumps(stored)))
    assert back.rates == state.rates and (back.seasonal, back.season_open) == (state.seasonal, state.season_open)
    assert (back.headroom, back.headroom_at) == (state.headroom, state.headroom_at)
    assert back.season_profile == ()  # derived: recomputed after a restart


def test_season_keeps_each_buckets_mean_over_the_last_periods() -> None:
    """Ticks every 100 s over 4.5 hours of hourly periods (5-minute buckets): the season holds, per (period,
    bucket), the sum and count of the rates seen, for the current period and the 3 before it, oldest first."""
    p = pool(forecast=FC)
    state = ScalingState()
    seen: dict[tuple[int, int], tuple[float, int]] = {}
    start = int(NOW.timestamp() // 3600) * 3600 + 250  # mid-bucket: the first bucket is half full
    for i in range(162):
        at = datetime.fromtimestamp(start + 100 * i, UTC)
        rate = 0.1 + (i % 7) / 10
        _, state = rate_need(p, rate, 0.0, state, at, 60)
        key = (int(at.timestamp() // 3600), int(at.timestamp() % 3600 // 300))
        total, n = seen.get(key, (0.0, 0))
        seen[key] = (total + rate, n + 1)
    period = int(at.timestamp() // 3600)
    expect = [(pp, b, total, n) for (pp, b), (total, n) in sorted(seen.items()) if pp >= period - 3]
    entries = season_entries(state)
    assert [e[:2] for e in entries] == [e[:2] for e in expect] and [e[3] for e in entries] == [
        e[3] for e in expect
    ]
    assert [e[2] for e in entries] == pytest.approx([e[2] for e in expect])
    assert entries[0][0] == period - 3 and state.season_open == entries[-1]


def test_a_season_stored_whole_goes_on_as_one_with_an_open_bucket() -> None:
    """A state whose every entry sits in `seasonal` (as stored before the open bucket was kept apart) decides
    alike and records alike."""
    p = pool(forecast=FC)
    built = seasonal({-2: [1, 5] + [1] * 10, -1: [1, 6] + [1] * 10, 0: [2.0]})
    split = ScalingState(seasonal=built.seasonal[:-1], season_open=built.seasonal[-1])
    at = NOW + timedelta(seconds=30)  # the current bucket (bucket 0 of this hour): its entry takes this rate
    need_a, a = rate_need(p, 3.0, 0.0, built, at, 400)
    need_b, b = rate_need(p, 3.0, 0.0, split, at, 400)
    assert need_a == need_b and need_a.forecast == 5.0
    assert season_entries(a) == season_entries(b) == (*built.seasonal[:-1], (built.seasonal[-1][0], 0, 5.0, 2))


def test_the_open_bucket_counts_in_the_profile() -> None:
    """The previous period's last bucket, still open when the period turns, is part of the profile."""
    p = pool(forecast=FC)
    whole = seasonal({-2: [1] * 11 + [4], -1: [1] * 11 + [6]}).seasonal
    split = ScalingState(seasonal=whole[:-1], season_open=whole[-1])
    assert seasonal_forecast(p, split, NOW + timedelta(seconds=3300), 60) == 4.0  # bucket 11: min(4, 6)
