"""The queue model as tables: backlog carries over, requests past the timeout are dropped, latency = wait + service."""

from __future__ import annotations

import pytest

from autoscaler.sim.queue import QueueModel


def model(timeout: float = 60.0, slo: float = 20.0) -> QueueModel:
    # one unit serves 0.1 request/s = 3 per 30 s tick
    return QueueModel(
        tick_seconds=30,
        requests_per_unit_per_second=0.1,
        service_seconds=5,
        timeout_seconds=timeout,
        latency_slo_seconds=slo,
    )


@pytest.mark.parametrize(
    ("arrivals", "units", "served", "depth", "dropped"),
    [
        # backlog carries: 10 arrive, 3 served per tick; the last one would wait 90 s > 60 s: dropped
        ([10, 0, 0, 0], [1, 1, 1, 1], [3, 3, 3, 0], [7, 4, 0, 0], [0, 0, 1, 0]),
        # a longer timeout: all 10 served
        ([10, 0, 0, 0, 0], [1, 1, 1, 1, 1], [3, 3, 3, 1, 0], [7, 4, 1, 0, 0], [0, 0, 0, 0, 0]),
        # no capacity: the cohort waits 0, 30, 60 s; it could not be served in time at the next tick: dropped
        ([10, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [10, 10, 0, 0], [0, 0, 10, 0]),
        # oldest first: the first cohort is served before the second
        ([4, 4, 0], [1, 1, 1], [3, 3, 2], [1, 2, 0], [0, 0, 0]),
    ],
)
def test_queue_table(
    arrivals: list[int], units: list[float], served: list[float], depth: list[float], dropped: list[float]
) -> None:
    q = model(timeout=60.0 if len(arrivals) != 5 else 120.0)
    results = [q.step(a, u) for a, u in zip(arrivals, units, strict=True)]
    assert [r.served for r in results] == pytest.approx(served)
    assert [r.queue_depth for r in results] == pytest.approx(depth)
    assert [r.dropped for r in results] == pytest.approx(dropped)
    total_in = sum(arrivals)
    assert total_in == pytest.approx(sum(served) + sum(dropped) + results[-1].queue_depth)


def test_latency_is_wait_plus_service_and_counts_toward_the_slo() -> None:
    q = model(slo=20.0)
    first = q.step(4, 1)  # 3 served at once: latency 5 s, within the SLO
    second = q.step(0, 1)  # the 4th waited one tick: 35 s, over the SLO
    assert first.latency_sum == pytest.approx(3 * 5)
    assert first.served_within_slo == pytest.approx(3)
    assert second.latency_sum == pytest.approx(35)
    assert second.served_within_slo == 0


def test_latency_estimate_reads_the_backlog() -> None:
    q = model(timeout=300)
    assert q.latency_estimate() == 5  # empty: the service time
    q.step(12, 1)  # 9 left, served at 0.1/s
    assert q.queue_depth == pytest.approx(9)
    assert q.latency_estimate() == pytest.approx(9 / 0.1 + 5)
    q.step(0, 0)  # no capacity: capped at timeout + service
    assert q.latency_estimate() == pytest.approx(305)
