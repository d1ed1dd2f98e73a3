"""Table-driven tests of policies.scaling.desired_capacity: signals, hold, windows, panic, clamps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from autoscaler.config import Candidate, Pool, Scaling, SyntheticSource, Targets
from autoscaler.model import Demand, Market, Recommendation, ScalingState
from policies.scaling import desired_capacity

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_pool(
    *,
    kinds: tuple[str, ...] = ("queue",),
    queue_per_unit: float | None = 5.0,
    slo: float | None = None,
    min_capacity: float = 0.0,
    max_capacity: float = 1000.0,
    **scaling: Any,
) -> Pool:
    metrics = [SyntheticSource(name=f"m-{kind}", type="synthetic", kind=kind) for kind in kinds]
    return Pool(
        name="llm",
        min_capacity=min_capacity,
        max_capacity=max_capacity,
        metrics=metrics,
        targets=Targets(queue_per_unit=queue_per_unit, latency_slo_seconds=slo),
        scaling=Scaling(**scaling),
        candidates=[Candidate(cloud="simulated", instance_type="sim.h100x8", market=Market.SPOT, throughput=16)],
    )


def recs(*pairs: tuple[float, float]) -> tuple[Recommendation, ...]:
    """(seconds before NOW, capacity) pairs."""
    return tuple(Recommendation(NOW - timedelta(seconds=ago), cap) for ago, cap in pairs)


@dataclass(frozen=True)
class Case:
    pool: Pool
    live: float
    ready: float
    expect_desired: float
    expect_signal: str
    expect_reason: str  # a fragment of one of the reasons
    queue: float | None = None
    latency: float | None = None
    hold_reason: str = ""
    state: ScalingState = field(default_factory=ScalingState)
    expect_panic_in: float | None = None  # seconds from NOW, None: not in panic afterwards
    expect_raw: float | None = None


QUEUE = make_pool()
LATENCY = make_pool(kinds=("latency",), queue_per_unit=None, slo=2.0)
BOTH = make_pool(kinds=("queue", "latency"), slo=2.0)
NO_DOWN_WINDOW = make_pool(scale_down_window_seconds=0)
UP_WINDOW = make_pool(scale_up_window_seconds=60)

CASES = [
    pytest.param(
        Case(
            QUEUE,
            live=80,
            ready=80,
            queue=480,
            expect_desired=96,
            expect_signal="queue",
            expect_reason="queue 480 / 5 per unit -> 96 units",
            expect_raw=96,
        ),
        id="queue-scale-up",
    ),
    pytest.param(
        Case(
            make_pool(queue_per_unit=0.1),
            live=10,
            ready=10,
            queue=1.1,
            expect_desired=11,
            expect_signal="queue",
            expect_reason="-> 11 units",
            expect_raw=11,
        ),
        id="queue-rounding-noise-does-not-add-a-unit",
    ),
    pytest.param(
        Case(
            QUEUE,
            live=96,
            ready=16,
            queue=480,
            expect_desired=96,
            expect_signal="queue",
            expect_reason="desired 96 units (live 96, ready 16)",
        ),
        id="booting-capacity-counts-no-burst-against-live",
    ),
    pytest.param(
        Case(
            LATENCY,
            live=10,
            ready=10,
            latency=3.0,
            expect_desired=15,
            expect_signal="latency",
            expect_reason="latency 3s over SLO 2s with 10 ready units -> 15 units",
        ),
        id="latency-over-slo-scales-up",
    ),
    pytest.param(
        Case(
            make_pool(kinds=("latency",), queue_per_unit=None, slo=2.0, scale_down_window_seconds=0),
            live=10,
            ready=10,
            latency=1.0,
            expect_desired=5,
            expect_signal="latency",
            expect_reason="latency 1s within SLO 2s with 10 ready units -> 5 units",
        ),
        id="latency-only-within-slo-shrinks",
    ),
    pytest.param(
        Case(
            LATENCY,
            live=10,
            ready=10,
            latency=1.0,
            expect_desired=10,
            expect_signal="latency",
            expect_reason="scale-down held by 300s window (max recommendation 10)",
            state=ScalingState(recs((100, 10)), None, 10),
        ),
        id="latency-only-shrink-is-slow",
    ),
    pytest.param(
        Case(
            make_pool(kinds=("queue", "latency"), slo=2.0, scale_down_window_seconds=0),
            live=10,
            ready=10,
            queue=40,
            latency=1.0,
            expect_desired=8,
            expect_signal="queue",
            expect_reason="latency 1s within SLO 2s: the queue decides",
        ),
        id="latency-within-slo-lets-queue-scale-down",
    ),
    pytest.param(
        Case(
            BOTH,
            live=12,
            ready=10,
            queue=40,
            latency=4.0,
            expect_desired=20,
            expect_signal="latency",
            expect_reason="latency 4s over SLO 2s with 10 ready units -> 20 units",
        ),
        id="latency-beats-queue-when-larger",
    ),
    pytest.param(
        Case(
            BOTH,
            live=12,
            ready=10,
            queue=100,
            latency=2.4,
            expect_desired=20,
            expect_signal="queue",
            expect_reason="queue 100 / 5 per unit -> 20 units",
        ),
        id="queue-beats-latency-when-larger",
    ),
    pytest.param(
        Case(
            LATENCY,
            live=8,
            ready=0,
            latency=9.0,
            expect_desired=8,
            expect_signal="hold",
            expect_reason="latency 9s not used: no ready capacity",
            state=ScalingState((), None, 8),
        ),
        id="latency-without-ready-capacity-holds",
    ),
    pytest.param(
        Case(
            QUEUE,
            live=30,
            ready=30,
            queue=0,
            hold_reason="request-queue stale (300s old)",
            expect_desired=40,
            expect_signal="hold",
            expect_reason="holding 40 units (previous desired)",
            state=ScalingState((), None, 40),
            expect_raw=40,
        ),
        id="hold-keeps-previous-desired",
    ),
    pytest.param(
        Case(
            QUEUE,
            live=24,
            ready=16,
            hold_reason="all sources failed",
            expect_desired=24,
            expect_signal="hold",
            expect_reason="holding 24 units (live capacity)",
        ),
        id="hold-without-history-keeps-live",
    ),
    pytest.param(
        Case(
            make_pool(max_capacity=64),
            live=70,
            ready=70,
            hold_reason="stale",
            expect_desired=64,
            expect_signal="hold",
            expect_reason="metrics not trusted (stale)",
            state=ScalingState((), None, 100),
        ),
        id="hold-is-clamped",
    ),
    pytest.param(
        Case(
            QUEUE,
            live=10,
            ready=10,
            queue=math.nan,
            expect_desired=10,
            expect_signal="hold",
            expect_reason="queue depth nan is not a usable number",
            state=ScalingState((), None, 10),
        ),
        id="nan-queue-no-scale-out",
    ),
    pytest.param(
        Case(
            LATENCY,
            live=10,
            ready=10,
            latency=-1.0,
            expect_desired=10,
            expect_signal="hold",
            expect_reason="latency -1.0 is not a usable number",
        ),
        id="negative-latency-no-scale-out",
    ),
    pytest.param(
        Case(
            make_pool(kinds=(), min_capacity=8),
            live=40,
            ready=40,
            queue=500,
            expect_desired=8,
            expect_signal="min",
            expect_reason="no metric sources: holding min_capacity 8",
        ),
        id="no-metrics-min-capacity",
    ),
    pytest.param(
        Case(
            QUEUE,
            live=60,
            ready=60,
            queue=100,
            expect_desired=40,
            expect_signal="queue",
            expect_reason="scale-down held by 300s window (max recommendation 40)",
            state=ScalingState(recs((100, 40), (250, 30)), None, 60),
        ),
        id="scale-down-held-by-window",
    ),
    pytest.param(
        Case(
            QUEUE,
            live=60,
            ready=60,
            queue=100,
            expect_desired=20,
            expect_signal="queue",
            expect_reason="desired 20 units",
            state=ScalingState(recs((301, 40)), None, 60),
        ),
        id="scale-down-after-window",
    ),
    pytest.param(
        Case(
            UP_WINDOW,
            live=20,
            ready=20,
            queue=150,
            expect_desired=25,
            expect_signal="queue",
            expect_reason="scale-up held by 60s window (min recommendation 25)",
            state=ScalingState(recs((30, 25)), None, 20),
        ),
        id="scale-up-held-by-window",
    ),
    pytest.param(
        Case(
            UP_WINDOW,
            live=20,
            ready=20,
            queue=150,
            expect_desired=30,
            expect_signal="queue",
            expect_reason="desired 30 units",
            state=ScalingState(recs((61, 25)), None, 20),
        ),
        id="scale-up-after-window",
    ),
    pytest.param(
        Case(
            UP_WINDOW,
            live=10,
            ready=10,
            queue=150,
            expect_desired=30,
            expect_signal="queue",
            expect_reason="burst: need 30 >= 2x live 10 units",
            state=ScalingState(recs((30, 10)), None, 10),
            expect_panic_in=60,
        ),
        id="burst-ignores-up-window",
    ),
    pytest.param(
        Case(
            UP_WINDOW,
            live=0,
            ready=0,
            queue=40,
            expect_desired=8,
            expect_signal="queue",
            expect_reason="burst: need 8 >= 2x live 0 units",
            expect_panic_in=60,
        ),
        id="burst-from-zero",
    ),
    pytest.param(
        Case(
            QUEUE,
            live=0,
            ready=0,
            queue=0,
            expect_desired=0,
            expect_signal="queue",
            expect_reason="desired 0 units",
        ),
        id="no-burst-from-zero-without-need",
    ),
    pytest.param(
        Case(
            NO_DOWN_WINDOW,
            live=40,
            ready=40,
            queue=50,
            expect_desired=40,
            expect_signal="queue",
            expect_reason="no scale-down (keeping 40)",
            state=ScalingState((), NOW + timedelta(seconds=30), 40),
            expect_panic_in=30,
        ),
        id="panic-blocks-scale-down",
    ),
    pytest.param(
        Case(
            NO_DOWN_WINDOW,
            live=40,
            ready=40,
            queue=50,
            expect_desired=10,
            expect_signal="queue",
            expect_reason="desired 10 units",
            state=ScalingState((), NOW - timedelta(seconds=1), 40),
        ),
        id="panic-over-allows-scale-down",
    ),
    pytest.param(
        Case(
            make_pool(max_capacity=64),
            live=50,
            ready=50,
            queue=480,
            expect_desired=64,
            expect_signal="max",
            expect_reason="clamped to max_capacity 64 (wanted 96)",
            expect_raw=96,
        ),
        id="clamped-to-max",
    ),
    pytest.param(
        Case(
            make_pool(min_capacity=8, scale_down_window_seconds=0),
            live=8,
            ready=8,
            queue=10,
            expect_desired=8,
            expect_signal="min",
            expect_reason="clamped to min_capacity 8 (wanted 2)",
        ),
        id="clamped-to-min",
    ),
    pytest.param(
        Case(
            QUEUE,
            live=20,
            ready=20,
            queue=50,
            expect_desired=10,
            expect_signal="queue",
            expect_reason="desired 10 units",
            state=ScalingState((Recommendation(NOW + timedelta(hours=1), 90),), None, 20),
        ),
        id="future-recommendation-ignored",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_desired_capacity(case: Case) -> None:
    demand = Demand(queue_depth=case.queue, latency_seconds=case.latency, hold_reason=case.hold_reason)
    result, state = desired_capacity(case.pool, demand, case.live, case.ready, case.state, NOW)
    assert result.desired == case.expect_desired, result.reasons
    assert result.signal == case.expect_signal, result.reasons
    assert any(case.expect_reason in r for r in result.reasons), result.reasons
    if case.expect_raw is not None:
        assert result.raw == case.expect_raw
    assert state.last_desired == result.desired
    expect_panic = None if case.expect_panic_in is None else NOW + timedelta(seconds=case.expect_panic_in)
    assert state.panic_until == expect_panic
    assert case.pool.min_capacity <= result.desired <= case.pool.max_capacity


@pytest.mark.parametrize(
    ("hold_reason", "queue", "expect_recorded"),
    [
        pytest.param("", 100.0, True, id="trusted-reading-recorded"),
        pytest.param("stale", 100.0, False, id="held-reading-not-recorded"),
    ],
)
def test_recommendations_pruned_and_recorded(hold_reason: str, queue: float, expect_recorded: bool) -> None:
    pool = make_pool(scale_up_window_seconds=60, scale_down_window_seconds=300)
    old = ScalingState(recs((400, 50), (299, 40), (10, 30)), None, 30)
    _, state = desired_capacity(pool, Demand(queue, None, hold_reason=hold_reason), 30, 30, old, NOW)
    kept = [(NOW - r.at).total_seconds() for r in state.recommendations]
    assert kept == ([299, 10, 0] if expect_recorded else [299, 10])


# One pool over successive ticks: a burst, the panic window, then a slow scale-down under the 120 s window.
SCENARIO = [
    # (seconds, queue, live units, expected desired) per tick
    pytest.param([(0, 40, 8, 8), (15, 200, 8, 40), (30, 200, 40, 40)], id="burst-scales-at-once"),
    pytest.param(
        [
            (0, 200, 0, 40),
            (30, 50, 40, 40),
            (59, 50, 40, 40),
            (61, 50, 40, 40),
            (120, 50, 40, 40),
            (121, 50, 40, 10),
        ],
        id="panic-then-down-window-then-scale-down",
    ),
    pytest.param([(0, 40, 8, 8), (15, 60, 8, 12), (30, 40, 12, 12), (136, 40, 12, 8)], id="small-rise-no-panic"),
]


@pytest.mark.parametrize("ticks", SCENARIO)
def test_scenario(ticks: list[tuple[float, float, float, float]]) -> None:
    pool = make_pool(min_capacity=8, max_capacity=64, scale_down_window_seconds=120)
    state = ScalingState()
    for seconds, queue, live, expect in ticks:
        now = NOW + timedelta(seconds=seconds)
        result, state = desired_capacity(pool, Demand(queue, None), live, live, state, now)
        assert result.desired == expect, (seconds, result.reasons)
