"""Prometheus metrics of one daemon, in its own CollectorRegistry.

A registry per daemon (never prometheus_client's global one) lets several daemons, and many tests, live in one
process without "duplicated timeseries" errors. The per-tick gauges are cleared and set again from each tick's
Snapshot and Plan, so a pool, state or offering that disappears also disappears from the exposition instead of
reporting its last value forever. Counters only ever grow, as Prometheus expects.

Metric source health (from each tick's Snapshot.demand): `gpu_autoscaler_metric_source_up{pool,source}` is 1 when
the source's read gave a usable value (it answered, in time, with a finite number >= 0) and 0 when it did not
(unreachable, timed out, garbage, NaN); `gpu_autoscaler_metric_source_age_seconds{pool,source}` is how old the
newest usable reading is, and keeps growing while the source is down (absent until it gave one); and
`gpu_autoscaler_pool_holding{pool}` is 1 while the pool holds its capacity because its data cannot be trusted
(a source down or stale past the pool's max_metric_age_seconds). All three recover by themselves with the data.
"""

from __future__ import annotations

import math
import threading
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from autoscaler.breaker import STATE_VALUE, BreakerStatus
from autoscaler.config import Policy
from autoscaler.model import Block, FailureKind, OfferingKey, Plan, Sample, Snapshot
from autoscaler.sources.combine import problem

OFFERING_LABELS = ("cloud", "region", "zone", "instance_type", "market")

# Ticks normally take well under a second, but a slow cloud API can stretch one to many seconds.
TICK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def read_problem(sample: Sample, now: datetime) -> str:
    """What makes the reading itself unusable (no answer, an error, no value, NaN, infinite, negative, no time),
    or "" when it is a usable reading. Its age is not judged here: that needs the pool's limit."""
    return problem(sample, now, math.inf)


@dataclass(frozen=True)
class SourceReading:
    """The newest usable reading of one source that the metrics have seen."""

    observed_at: datetime
    value: float


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # A scrape must never see a half-rebuilt set of gauges (cleared, not yet re-set).
        self._lock = threading.Lock()
        self.pool_desired = Gauge(
            "gpu_autoscaler_pool_desired_capacity", "Capacity units the pool should have", ["pool"], registry=r
        )
        self.pool_ready = Gauge(
            "gpu_autoscaler_pool_ready_capacity", "Capacity units of the pool that are ready", ["pool"], registry=r
        )
        self.instances = Gauge(
            "gpu_autoscaler_instances",
            "Live instance records by pool, cloud, market and lifecycle state",
            ["pool", "cloud", "market", "state"],
            registry=r,
        )
        self.spend = Gauge(
            "gpu_autoscaler_spend_usd_per_hour",
            "Sum of the hourly prices of the pool's live instances",
            ["pool"],
            registry=r,
        )
        self.blocked = Gauge(
            "gpu_autoscaler_blocked_offerings",
            "Active capacity-memory blocks by offering",
            list(OFFERING_LABELS),
            registry=r,
        )
        self.capacity_errors = Counter(
            "gpu_autoscaler_capacity_errors_total",
            "Capacity, quota and preemption failures by offering",
            [*OFFERING_LABELS, "kind"],
            registry=r,
        )
        self.launches = Counter(
            "gpu_autoscaler_launches_total",
            "Launches the daemon asked a cloud for",
            ["pool", "cloud", "instance_type", "market"],
            registry=r,
        )
        self.tick_duration = Histogram(
            "gpu_autoscaler_tick_duration_seconds",
            "Wall time of one gather-reconcile-actuate tick",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.tick_failures = Counter(
            "gpu_autoscaler_tick_failures_total", "Ticks that ended with an unexpected error", registry=r
        )
        self.last_tick = Gauge(
            "gpu_autoscaler_last_tick_timestamp_seconds",
            "Unix time of the last completed tick (by the daemon's clock)",
            registry=r,
        )
        self.source_up = Gauge(
            "gpu_autoscaler_metric_source_up",
            "1 when the metric source's last read gave a usable value (it answered in time with a finite "
            "number >= 0), 0 when it did not",
            ["pool", "source"],
            registry=r,
        )
        self.source_age = Gauge(
            "gpu_autoscaler_metric_source_age_seconds",
            "Age of the source's newest usable reading at the last tick (by the daemon's clock); it keeps "
            "growing while the source is down, and is absent until the source gave one",
            ["pool", "source"],
            registry=r,
        )
        self.pool_holding = Gauge(
            "gpu_autoscaler_pool_holding",
            "1 when the pool holds its capacity because its metric data cannot be trusted (a source down, "
            "answering garbage or stale past max_metric_age_seconds), else 0",
            ["pool"],
            registry=r,
        )
        # ---- circuit breakers per provider (autoscaler.breaker)
        self.breaker_state = Gauge(
            "gpu_autoscaler_provider_breaker_state",
            "Circuit breaker of each cloud's provider: 0 closed, 1 half-open (probing), 2 open (its offerings "
            "count as unavailable, no calls are made)",
            ["cloud"],
            registry=r,
        )
        self.breaker_opened = Counter(
            "gpu_autoscaler_provider_breaker_opened",
            "Times a cloud's circuit breaker opened",
            ["cloud"],
            registry=r,
        )
        self._breaker_opened_seen: dict[str, int] = {}
        # ---- end of the circuit breaker block
        # ---- spend limits from the policy (dashboards draw spend against them; set by set_budgets each tick)
        self.budget = Gauge(
            "gpu_autoscaler_budget_usd_per_hour",
            "Hard spend limits of the policy in force: daemon.limits.max_usd_per_hour (with an empty pool label) "
            "and each pool's limits.max_usd_per_hour (only pools that set one)",
            ["pool"],
            registry=r,
        )
        # ---- end of the spend limits block
        # ---- high availability (autoscaler.leader)
        self.leader = Gauge(
            "gpu_autoscaler_leader",
            "1 while this daemon acts (the lease holder on PostgreSQL, or single-node on SQLite), 0 as a follower",
            registry=r,
        )
        self.leader.set(1)  # single node until an elector says otherwise
        self._is_leader: bool | None = None  # as set_leadership last heard
        self.leader_token = Gauge(
            "gpu_autoscaler_leader_fencing_token",
            "The fencing token of the leader's lease as this daemon last saw it (absent before it saw one)",
            registry=r,
        )
        self.leadership_changes = Counter(
            "gpu_autoscaler_leadership_changes", "Times this daemon became or stopped being the leader", registry=r
        )
        self.stale_leader = Counter(
            "gpu_autoscaler_stale_leader_rejections",
            "Ticks cut short because the store refused this daemon's fenced write: another daemon leads",
            registry=r,
        )
        # ---- end of the high availability block
        # (pool, source) -> its newest usable reading, so that the age of a source that went down keeps growing.
        self._last_good: dict[tuple[str, str], SourceReading] = {}

    def observe_tick(self, snapshot: Snapshot, plan: Plan, duration_seconds: float) -> None:
        counts: Tally[tuple[str, str, str, str]] = Tally()
        spend: dict[str, float] = {pool: 0.0 for pool in plan.decisions}
        for rec in snapshot.records:
            if not rec.live:
                continue
            counts[(rec.pool, rec.offering.cloud, str(rec.offering.market), str(rec.state))] += 1
            spend[rec.pool] = spend.get(rec.pool, 0.0) + rec.price_usd_per_hour
        with self._lock:
            for gauge in (self.pool_desired, self.pool_ready, self.instances, self.spend):
                gauge.clear()
            for pool, decision in plan.decisions.items():
                self.pool_desired.labels(pool=pool).set(decision.desired)
                self.pool_ready.labels(pool=pool).set(decision.ready)
            for (pool, cloud, market, state), n in counts.items():
                self.instances.labels(pool=pool, cloud=cloud, market=market, state=state).set(n)
            for pool, usd in spend.items():
                self.spend.labels(pool=pool).set(usd)
            self.tick_duration.observe(max(duration_seconds, 0.0))
            self.last_tick.set(plan.now.timestamp())
            self._observe_sources(snapshot)

    def _observe_sources(self, snapshot: Snapshot) -> None:
        """Source and hold gauges from the tick's demand (the caller holds the lock)."""
        now = snapshot.now
        for gauge in (self.source_up, self.source_age, self.pool_holding):
            gauge.clear()
        seen: set[tuple[str, str]] = set()
        for pool, demand in snapshot.demand.items():
            self.pool_holding.labels(pool=pool).set(1 if demand.hold else 0)
            for sample in demand.samples:
                key = (pool, sample.source)
                seen.add(key)
                up = not read_problem(sample, now)
                if up and sample.observed_at is not None and sample.value is not None:
                    self._last_good[key] = SourceReading(sample.observed_at, sample.value)
                self.source_up.labels(pool=pool, source=sample.source).set(1 if up else 0)
                if (good := self._last_good.get(key)) is not None:
                    age = max((now - good.observed_at).total_seconds(), 0.0)
                    self.source_age.labels(pool=pool, source=sample.source).set(age)
        # A source or pool that left the policy leaves no memory behind.
        for key in self._last_good.keys() - seen:
            del self._last_good[key]

    def last_good_reading(self, pool: str, source: str) -> SourceReading | None:
        """The newest usable reading of the source seen by a tick so far (None when it never gave one)."""
        with self._lock:
            return self._last_good.get((pool, source))

    def set_leadership(self, is_leader: bool, token: int | None) -> None:
        if self._is_leader is not None and self._is_leader != is_leader:
            self.leadership_changes.inc()
        self._is_leader = is_leader
        self.leader.set(1 if is_leader else 0)
        if token is not None:
            self.leader_token.set(token)

    def count_stale_leader(self) -> None:
        self.stale_leader.inc()

    def count_tick_failure(self) -> None:
        self.tick_failures.inc()

    def count_launch(self, pool: str, key: OfferingKey) -> None:
        self.launches.labels(
            pool=pool, cloud=key.cloud, instance_type=key.instance_type, market=str(key.market)
        ).inc()

    def count_capacity_error(self, key: OfferingKey, kind: FailureKind) -> None:
        self.capacity_errors.labels(**key.as_labels(), kind=str(kind)).inc()

    def set_blocks(self, blocks: Sequence[Block], now: datetime) -> None:
        counts: Tally[tuple[str, str, str, str, str]] = Tally(
            (b.cloud, b.region, b.zone, b.instance_type, str(b.market)) for b in blocks if b.until > now
        )
        with self._lock:
            self.blocked.clear()
            for labels, n in counts.items():
                self.blocked.labels(*labels).set(n)

    def set_breakers(self, statuses: Sequence[BreakerStatus]) -> None:
        with self._lock:
            self.breaker_state.clear()
            for st in statuses:
                self.breaker_state.labels(cloud=st.cloud).set(STATE_VALUE[st.state])
                seen = self._breaker_opened_seen.get(st.cloud, 0)
                if st.times_opened > seen:
                    self.breaker_opened.labels(cloud=st.cloud).inc(st.times_opened - seen)
                self._breaker_opened_seen[st.cloud] = st.times_opened  # a rebuilt provider starts again at 0

    def set_budgets(self, policy: Policy) -> None:
        """The policy's $/hour limits: the whole daemon's as pool="", and each pool's that has one."""
        with self._lock:
            self.budget.clear()
            self.budget.labels(pool="").set(policy.daemon.limits.max_usd_per_hour)
            for pool in policy.pools:
                if pool.limits.max_usd_per_hour is not None:
                    self.budget.labels(pool=pool.name).set(pool.limits.max_usd_per_hour)

    def render(self) -> tuple[bytes, str]:
        with self._lock:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
