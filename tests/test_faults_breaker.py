"""The circuit breaker's state machine (autoscaler.breaker) on a fake clock, and the Provider wrapper's rules: which
outcomes count as failures, what an open breaker does to each call, and the blocks it puts in front of placement."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

import pytest

from autoscaler.breaker import (
    BreakerProvider,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    breaker_blocks,
)
from autoscaler.capacity import blocking
from autoscaler.clock import FakeClock
from autoscaler.errors import CapacityError, ConfigError, NotFound, ProviderError, TransientError
from autoscaler.model import CloudInstance, FailureKind, LaunchRequest, Market, Offering, OfferingKey, Scope

SETTINGS = BreakerSettings(
    failures_to_open=3, failure_ratio=0.5, window_calls=10, min_calls=6, cooldown=timedelta(seconds=60)
)


def breaker(clock: FakeClock, settings: BreakerSettings = SETTINGS) -> CircuitBreaker:
    return CircuitBreaker("aws", settings, clock)


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(2):
        b.record_failure("503")
    b.record_success()
    for _ in range(2):
        b.record_failure("503")
    assert b.state() == BreakerState.CLOSED
    b.record_failure("503")
    assert b.state() == BreakerState.OPEN
    assert not b.acquire()
    st = b.status()
    assert st.times_opened == 1 and st.retry_at == clock.now() + timedelta(seconds=60)


def test_a_failure_ratio_opens_it_without_consecutive_failures() -> None:
    clock = FakeClock()
    b = breaker(clock)
    # fail, ok, fail, ok, fail: 3 of 5 but the window needs 6 calls
    for i in range(5):
        b.record_failure("429") if i % 2 == 0 else b.record_success()
    assert b.state() == BreakerState.CLOSED
    b.record_success()  # 3 of 6 = 0.5
    assert b.state() == BreakerState.CLOSED  # the ratio is checked when a failure is recorded
    b.record_failure("429")  # 4 of 7
    assert b.state() == BreakerState.OPEN


def test_a_low_failure_rate_never_opens_it() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for i in range(300):
        b.record_failure("timeout") if i % 4 == 0 else b.record_success()  # 25%, never twice in a row
    assert b.state() == BreakerState.CLOSED and b.status().times_opened == 0


def test_cooldown_half_open_one_probe_then_closed_on_success() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure("503")
    clock.advance(59)
    assert b.state() == BreakerState.OPEN and not b.acquire()
    clock.advance(1)
    assert b.state() == BreakerState.HALF_OPEN
    assert b.acquire()  # the probe
    assert not b.acquire()  # only one at a time
    b.record_success()
    assert b.state() == BreakerState.CLOSED
    assert b.acquire() and b.acquire()
    st = b.status()
    assert st.consecutive_failures == 0 and st.retry_at is None


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure("503")
    clock.advance(60)
    assert b.acquire()
    b.record_failure("still 503")
    assert b.state() == BreakerState.OPEN
    assert b.status().times_opened == 2
    assert b.status().retry_at == clock.now() + timedelta(seconds=60)
    clock.advance(30)
    assert not b.acquire()
    clock.advance(30)
    assert b.acquire()


def test_only_one_of_many_threads_gets_the_probe() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure("503")
    clock.advance(61)
    granted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def race() -> None:
        start.wait()
        ok = b.acquire()
        with lock:
            granted.append(ok)

    threads = [threading.Thread(target=race) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 1


# ---------------------------------------------------------------- the Provider wrapper

KEY = OfferingKey("aws", "us-east-1", "us-east-1a", "p4d.24xlarge", Market.SPOT)


class Scripted:
    """A provider whose every call raises the next scripted error (None: answers)."""

    name = "aws"

    def __init__(self, script: list[Exception | None]) -> None:
        self.script = script
        self.calls = 0

    def _next(self) -> None:
        self.calls += 1
        error = self.script.pop(0) if self.script else None
        if error is not None:
            raise error

    def offerings(self) -> Sequence[Offering]:
        self._next()
        return [Offering(KEY, 9.0, 8)]

    def list_instances(self) -> Sequence[CloudInstance]:
        self._next()
        return []

    def launch(self, req: LaunchRequest) -> CloudInstance:
        self._next()
        raise AssertionError("not reached in these tests")

    def terminate(self, cloud_ids: Sequence[str]) -> None:
        self._next()


@pytest.mark.parametrize(
    ("error", "counts_as_failure"),
    [
        (TransientError("throttled", code="RequestLimitExceeded"), True),
        (RuntimeError("an SDK error nobody translated"), True),
        (CapacityError("stockout"), False),
        (ConfigError("bad image"), False),
        (NotFound("gone"), False),
    ],
)
def test_what_counts_as_a_failure(error: Exception, counts_as_failure: bool) -> None:
    clock = FakeClock()
    inner = Scripted([error] * 3)
    p = BreakerProvider(inner, breaker(clock))
    for _ in range(3):
        with pytest.raises(type(error)):
            p.terminate(["i-1"])
    assert (p.breaker.state() == BreakerState.OPEN) is counts_as_failure


def test_an_open_breaker_calls_nothing_and_refuses_like_a_cloud_wide_stockout() -> None:
    clock = FakeClock()
    inner = Scripted([TransientError("503")] * 3)
    p = BreakerProvider(inner, breaker(clock))
    for _ in range(3):
        with pytest.raises(TransientError):
            p.list_instances()
    assert inner.calls == 3
    for call in (p.list_instances, p.offerings, lambda: p.terminate(["i-1"])):
        with pytest.raises(CircuitOpen) as info:
            call()
        assert isinstance(info.value, CapacityError) and isinstance(info.value, ProviderError)
        assert info.value.scope == Scope.CLOUD and "503" in str(info.value)
    assert inner.calls == 3  # nothing reached the cloud
    clock.advance(60)
    assert p.offerings() == [Offering(KEY, 9.0, 8)]  # the probe answers: closed again
    assert p.breaker.state() == BreakerState.CLOSED and inner.calls == 4


def test_open_breakers_become_blocks_that_placement_respects() -> None:
    clock = FakeClock()
    p = BreakerProvider(Scripted([TransientError("503")] * 3), breaker(clock))
    other = OfferingKey("gcp", "us-central1", "us-central1-a", "g2-standard-8", Market.SPOT)
    on_demand = OfferingKey("aws", "us-west-2", "us-west-2b", "p4d.24xlarge", Market.ON_DEMAND)
    offerings = [Offering(KEY, 9.0, 8), Offering(on_demand, 21.0, 8), Offering(other, 0.3, 1)]
    assert breaker_blocks({"aws": p}, offerings, clock.now()) == ()
    for _ in range(3):
        with pytest.raises(TransientError):
            p.list_instances()
    blocks = breaker_blocks({"aws": p}, offerings, clock.now())
    assert {(b.instance_type, b.market, b.scope, b.kind) for b in blocks} == {
        ("p4d.24xlarge", Market.SPOT, Scope.CLOUD, FailureKind.UNRESPONSIVE),
        ("p4d.24xlarge", Market.ON_DEMAND, Scope.CLOUD, FailureKind.UNRESPONSIVE),
    }
    now = clock.now()
    assert blocking(blocks, KEY, now) is not None and blocking(blocks, on_demand, now) is not None
    assert blocking(blocks, other, now) is None
    assert all("circuit breaker open" in b.reason for b in blocks)
    clock.advance(60)  # half-open: still blocked until the probe has answered
    assert breaker_blocks({"aws": p}, offerings, clock.now())
    p.list_instances()
    assert breaker_blocks({"aws": p}, offerings, clock.now()) == ()
