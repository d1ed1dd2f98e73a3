"""The queue model: arrivals and ready capacity in, queue depth, latency, served and dropped requests out.

A FIFO backlog of cohorts (the requests that arrived in one tick). Each tick, that tick's arrivals join the
backlog, then the ready capacity serves `units * requests_per_unit_per_second * tick_seconds` requests, oldest
first. A request that arrived in tick a and is served in tick s waited (s - a) ticks; its latency is that wait
plus the service time. Backlog carries over between ticks; a request that would wait past `timeout_seconds` is
dropped (and counted) at the end of the last tick it could still have been served in. O(1) amortised per tick:
the backlog never holds more than timeout/tick + 1 cohorts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class TickResult:
    arrived: float
    served: float
    served_within_slo: float
    dropped: float
    queue_depth: float  # waiting after this tick
    latency_sum: float  # sum over the served requests of their latency (for the mean)


class QueueModel:
    def __init__(
        self,
        *,
        tick_seconds: float,
        requests_per_unit_per_second: float,
        service_seconds: float,
        timeout_seconds: float,
        latency_slo_seconds: float,
    ) -> None:
        self.tick_seconds = tick_seconds
        self.rate_per_unit = requests_per_unit_per_second
        self.service_seconds = service_seconds
        self.timeout_seconds = timeout_seconds
        self.latency_slo_seconds = latency_slo_seconds
        self._cohorts: deque[list[float]] = deque()  # [arrival tick, requests still waiting]
        self._tick = 0
        self._depth = 0.0
        self._last_units = 0.0
        self._last_arrivals = 0.0

    @property
    def queue_depth(self) -> float:
        """Requests waiting now (after the last step)."""
        return self._depth

    @property
    def arrival_rate(self) -> float:
        """Requests per second that arrived during the last step (what a request-rate metric reports)."""
        return self._last_arrivals / self.tick_seconds

    def latency_estimate(self) -> float:
        """What a request arriving now should expect: the backlog ahead of it at the last tick's service rate,
        plus the service time; capped at the timeout (it is dropped rather than wait longer)."""
        rate = self._last_units * self.rate_per_unit
        cap = self.timeout_seconds + self.service_seconds
        if self._depth <= 0:
            return self.service_seconds
        if rate <= 0:
            return cap
        return min(self._depth / rate + self.service_seconds, cap)

    def step(self, arrivals: float, ready_units: float) -> TickResult:
        i, dt = self._tick, self.tick_seconds
        if arrivals > 0:
            self._cohorts.append([float(i), float(arrivals)])
        capacity = max(ready_units, 0.0) * self.rate_per_unit * dt
        served = within = latency_sum = 0.0
        cohorts = self._cohorts
        while capacity > 1e-12 and cohorts:
            cohort = cohorts[0]
            n = min(cohort[1], capacity)
            latency = (i - cohort[0]) * dt + self.service_seconds
            served += n
            latency_sum += n * latency
            if latency <= self.latency_slo_seconds + 1e-9:
                within += n
            capacity -= n
            cohort[1] -= n
            if cohort[1] <= 1e-12:
                cohorts.popleft()
        dropped = 0.0
        # Requests from tick a could next be served in tick i + 1 after waiting (i + 1 - a) ticks.
        while cohorts and (i + 1 - cohorts[0][0]) * dt > self.timeout_seconds + 1e-9:
            dropped += cohorts.popleft()[1]
        self._depth = sum(c[1] for c in cohorts)
        self._last_units = max(ready_units, 0.0)
        self._last_arrivals = max(arrivals, 0.0)
        self._tick += 1
        return TickResult(float(arrivals), served, within, dropped, self._depth, latency_sum)
