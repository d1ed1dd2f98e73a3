"""A circuit breaker per provider: a cloud that keeps failing is left alone for a while, and its offerings count
as unavailable, so that pools fail over to the other clouds instead of waiting on a dark one.

States (`CircuitBreaker`, time read only from the injected Clock):

    closed --(N consecutive failed calls, or a failure ratio over the last W calls)--> open
    open --(cool-down elapsed: the next call is let through as the one probe)--> half-open
    half-open --(the probe answered)--> closed        half-open --(the probe failed)--> open (cool-down again)

A *failed* call is one that says nothing about the cloud's answer: a TransientError (throttling, 5xx, timeouts,
malformed answers) or an exception no provider should raise. A typed refusal (CapacityError, QuotaError,
ConfigError, AuthError, NotFound) is an answer: the cloud is up, so it counts as a success here.

`BreakerProvider` wraps any Provider with one breaker; the daemon applies it where it builds its providers, so
gather and actuate see an ordinary Provider. While the breaker is open (or half-open with its probe in flight)
every call raises `CircuitOpen` at once, without touching the cloud: a listing is then "failed" (gather leaves the
cloud unobserved, nothing is inferred), an offerings refresh keeps the last good list, a termination is retried
next tick, and a launch is refused like a cloud-wide stockout (the record ends LAUNCH_FAILED, and the fallback
round re-places it elsewhere in the same tick; should the cloud have made the instance after all, it carries
our tags and is adopted when the cloud answers again). `breaker_blocks` turns open breakers into capacity-memory
blocks (in memory only, never stored) that the daemon adds to each tick's snapshot, so placement skips the
cloud's offerings and says why in the decision.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from autoscaler.errors import CapacityError, ProviderError, TransientError
from autoscaler.interfaces import Clock, Provider
from autoscaler.model import Block, CloudInstance, FailureKind, LaunchRequest, Offering, Scope

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


# The value of gpu_autoscaler_provider_breaker_state for each state.
STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class CircuitOpen(CapacityError):
    """Raised instead of calling a cloud whose breaker is open. A CapacityError of cloud scope, so that a launch
    refused this way fails over at once, exactly like a stockout of the whole cloud."""

    def __init__(self, message: str) -> None:
        super().__init__(message, scope=Scope.CLOUD, code="CircuitOpen")


@dataclass(frozen=True)
class BreakerSettings:
    failures_to_open: int = 5  # consecutive failed calls
    failure_ratio: float = 0.7  # or this share of failures among the last `window_calls` calls ...
    window_calls: int = 20
    min_calls: int = 20  # ... once at least this many calls are in the window
    cooldown: timedelta = timedelta(seconds=60)  # open -> half-open


@dataclass(frozen=True)
class BreakerStatus:
    """What the API and the metrics show of one breaker."""

    cloud: str
    state: BreakerState
    consecutive_failures: int
    window_failures: int
    window_calls: int
    opened_at: datetime | None
    retry_at: datetime | None  # when an open breaker lets its probe through
    times_opened: int
    last_error: str


class CircuitBreaker:
    """One provider's breaker. Thread-safe: gather and actuate call providers from thread pools."""

    def __init__(self, cloud: str, settings: BreakerSettings, clock: Clock) -> None:
        self.cloud = cloud
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._window: deque[bool] = deque(maxlen=max(settings.window_calls, 1))  # True = failed
        self._opened_at: datetime | None = None
        self._probing = False
        self._times_opened = 0
        self._last_error = ""

    # ---------------------------------------------------------------- the state machine

    def state(self) -> BreakerState:
        with self._lock:
            return self._current(self.clock.now())

    def _current(self, now: datetime) -> BreakerState:
        """Open turns half-open once the cool-down has passed (read lazily: no timer thread)."""
        opened = self._opened_at
        if self._state == BreakerState.OPEN and opened is not None and now - opened >= self.settings.cooldown:
            self._state = BreakerState.HALF_OPEN
            self._probing = False
            log.info("circuit breaker of %s half-open: the next call probes the cloud", self.cloud)
        return self._state

    def acquire(self) -> bool:
        """May a call go to the cloud now? In half-open, exactly one caller (the probe) gets True until it ends."""
        with self._lock:
            state = self._current(self.clock.now())
            if state == BreakerState.CLOSED:
                return True
            if state == BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._consecutive = 0
            self._window.append(False)
            if self._state != BreakerState.CLOSED:
                log.warning("circuit breaker of %s closed: the cloud answers again", self.cloud)
                self._state = BreakerState.CLOSED
                self._probing = False
                self._opened_at = None
                self._window.clear()

    def record_failure(self, error: str) -> None:
        with self._lock:
            now = self.clock.now()
            self._consecutive += 1
            self._window.append(True)
            self._last_error = error
            state = self._current(now)
            if state == BreakerState.HALF_OPEN:
                if self._probing:  # the probe failed: another cool-down
                    self._open(now, "the probe failed")
                return
            if state == BreakerState.OPEN:
                return  # a call let through before it opened, ending late
            s = self.settings
            failures = sum(self._window)
            if self._consecutive >= s.failures_to_open:
                self._open(now, f"{self._consecutive} consecutive failed calls")
            elif len(self._window) >= s.min_calls and failures / len(self._window) >= s.failure_ratio:
                self._open(now, f"{failures} of the last {len(self._window)} calls failed")

    def _open(self, now: datetime, why: str) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._probing = False
        self._times_opened += 1
        log.warning(
            "circuit breaker of %s open (%s; last error: %s): its offerings count as unavailable, no calls "
            "until %s",
            self.cloud,
            why,
            self._last_error,
            (now + self.settings.cooldown).isoformat(),
        )

    def status(self) -> BreakerStatus:
        with self._lock:
            state = self._current(self.clock.now())
            retry_at = self._opened_at + self.settings.cooldown if self._opened_at is not None else None
            return BreakerStatus(
                cloud=self.cloud,
                state=state,
                consecutive_failures=self._consecutive,
                window_failures=sum(self._window),
                window_calls=len(self._window),
                opened_at=self._opened_at,
                retry_at=retry_at if state != BreakerState.CLOSED else None,
                times_opened=self._times_opened,
                last_error=self._last_error,
            )


class BreakerProvider:
    """A Provider whose calls go through a CircuitBreaker. `inner` is the provider as built."""

    def __init__(self, inner: Provider, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker
        self.name = inner.name

    def offerings(self) -> Sequence[Offering]:
        return self._call("offerings", self.inner.offerings)

    def list_instances(self) -> Sequence[CloudInstance]:
        return self._call("list_instances", self.inner.list_instances)

    def launch(self, req: LaunchRequest) -> CloudInstance:
        return self._call("launch", lambda: self.inner.launch(req))

    def terminate(self, cloud_ids: Sequence[str]) -> None:
        self._call("terminate", lambda: self.inner.terminate(cloud_ids))

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        if not self.breaker.acquire():
            status = self.breaker.status()
            when = f"until {status.retry_at.isoformat()}" if status.retry_at else "while its probe is in flight"
            raise CircuitOpen(
                f"{self.name}: circuit breaker {status.state}, {what} not sent {when} "
                f"(last error: {status.last_error})"
            )
        try:
            result = fn()
        except TransientError as exc:
            self.breaker.record_failure(f"{what}: {exc}")
            raise
        except ProviderError:
            self.breaker.record_success()  # the cloud answered, with a refusal: it is up
            raise
        except Exception as exc:  # a provider bug or an untranslated SDK error: no answer we can read
            self.breaker.record_failure(f"{what}: {type(exc).__name__}: {exc}")
            raise
        self.breaker.record_success()
        return result


def wrap_providers(
    providers: Mapping[str, Provider], settings: BreakerSettings, clock: Clock
) -> dict[str, Provider]:
    """Each provider behind its own breaker (a provider already wrapped is left as it is)."""
    out: dict[str, Provider] = {}
    for name, provider in providers.items():
        if isinstance(provider, BreakerProvider):
            out[name] = provider
        else:
            out[name] = BreakerProvider(provider, CircuitBreaker(name, settings, clock))
    return out


def breakers(providers: Mapping[str, Provider]) -> dict[str, CircuitBreaker]:
    return {name: p.breaker for name, p in providers.items() if isinstance(p, BreakerProvider)}


def breaker_blocks(
    providers: Mapping[str, Provider], offerings: Iterable[Offering], now: datetime
) -> tuple[Block, ...]:
    """A cloud-scope block for every (type, market) offered by a cloud whose breaker is not closed: placement skips
    them and says why. In memory only: they end with the breaker, and nothing is learnt into capacity memory."""
    out: list[Block] = []
    for cloud, breaker in sorted(breakers(providers).items()):
        status = breaker.status()
        if status.state == BreakerState.CLOSED:
            continue
        until = status.retry_at if status.retry_at is not None and status.retry_at > now else now
        # A half-open breaker blocks until the probe has answered: until = now + a moment, for the explanation.
        until = max(until, now + timedelta(seconds=1))
        kinds = sorted({(o.key.instance_type, o.key.market) for o in offerings if o.key.cloud == cloud})
        for itype, market in kinds:
            out.append(
                Block(
                    cloud=cloud,
                    region="",
                    zone="",
                    instance_type=itype,
                    market=market,
                    scope=Scope.CLOUD,
                    kind=FailureKind.UNRESPONSIVE,
                    failures=status.consecutive_failures,
                    until=until,
                    last_failure_at=status.opened_at or now,
                    reason=f"circuit breaker {status.state} (last error: {status.last_error})",
                )
            )
    return tuple(out)
