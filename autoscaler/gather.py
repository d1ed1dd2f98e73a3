"""gather: all the reading of one tick, done in parallel, folded into one Snapshot.

One `list_instances` call per provider (each provider lists its regions itself, filtered by our tag), every
pool's metric sources (each with its own timeout), health checks, and the store's rows. Offerings and prices
change slowly, so they are cached per provider and refreshed on their own schedule; a failed refresh keeps the
last good list. A provider whose listing fails is left out of `Snapshot.cloud_instances`, which tells
reconcile to make no inference from its silence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from autoscaler.config import Policy
from autoscaler.health import HealthChecker
from autoscaler.interfaces import Clock, MetricSource, Provider
from autoscaler.model import (
    BootStats,
    CloudInstance,
    Demand,
    FailureKind,
    InstanceRecord,
    Offering,
    OfferingKey,
    Preemption,
    Sample,
    ScalingState,
    Snapshot,
)
from autoscaler.sources import combine, read_samples
from autoscaler.store import Store
from policies.boot import BootHistory

log = logging.getLogger(__name__)
PREEMPTIONS_READ = 500  # at most this many of the newest preemptions are read per tick


@dataclass
class _CachedOfferings:
    fetched_at: datetime
    offerings: tuple[Offering, ...]


@dataclass
class GatherReport:
    """What went wrong while reading, for the status API and the log; never fatal."""

    list_errors: dict[str, str] = field(default_factory=dict)
    offering_errors: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[Sample]] = field(default_factory=dict)


class Gatherer:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        offering_refresh: timedelta = timedelta(minutes=10),
        max_workers: int = 8,
    ) -> None:
        self.store = store
        self.clock = clock
        self.offering_refresh = offering_refresh
        self.max_workers = max_workers
        self.health = HealthChecker()
        self._offerings: dict[str, _CachedOfferings] = {}
        self._source_errors: dict[tuple[str, str], str] = {}
        self._holding: dict[str, str] = {}
        self.report = GatherReport()
        self.boots = BootHistory()  # boot-to-ready per offering, from the records seen READY (policies.boot)

    def gather(
        self,
        policy: Policy,
        providers: Mapping[str, Provider],
        sources: Mapping[str, Sequence[MetricSource]],
        scaling_state: Mapping[str, ScalingState],
        missing_since: Mapping[str, datetime],
        tick: str,
    ) -> Snapshot:
        now = self.clock.now()
        report = GatherReport()
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="gather") as ex:
            listings = {name: ex.submit(p.list_instances) for name, p in providers.items()}
            stale = [name for name in providers if self._stale(name, now)]
            refreshed = {name: ex.submit(providers[name].offerings) for name in stale}
            samples = read_samples(sources, now, max_workers=self.max_workers)
            cloud_instances = self._collect_listings(listings, report)
            self._collect_offerings(refreshed, now, report)
        records = self.store.instances(live_only=True)
        health = self.health.check(policy, records, cloud_instances)
        demand = {pool.name: combine(pool, samples.get(pool.name, []), now) for pool in policy.pools}
        self._log_changes(demand)
        report.samples = samples
        self.report = report
        offerings = tuple(
            o for name in providers if name in self._offerings for o in self._offerings[name].offerings
        )
        return Snapshot(
            now=now,
            records=tuple(records),
            cloud_instances=cloud_instances,
            offerings=offerings,
            blocks=tuple(self.store.blocks(now=now)),
            demand=demand,
            scaling_state=dict(scaling_state),
            controls=self.store.controls(),
            health=health,
            missing_since=dict(missing_since),
            tick=tick,
            boot_times=self._boot_times(records),
            preemptions=self._preemptions(policy, now),
        )

    def _boot_times(self, records: Sequence[InstanceRecord]) -> dict[OfferingKey, BootStats]:
        self.boots.observe(records)
        self.boots.forget_except(r.token for r in records)
        return self.boots.stats()

    def _preemptions(self, policy: Policy, now: datetime) -> tuple[Preemption, ...]:
        """Spot preemptions capacity memory recorded within the longest `spare_memory_seconds`, oldest first."""
        memory = max((p.scaling.spare_memory_seconds for p in policy.pools), default=0.0)
        since = now - timedelta(seconds=memory)
        events = self.store.capacity_events(limit=PREEMPTIONS_READ, kind=FailureKind.PREEMPTION, since=since)
        return tuple(Preemption(e.offering, e.at) for e in reversed(events))

    def _stale(self, name: str, now: datetime) -> bool:
        cached = self._offerings.get(name)
        return cached is None or now - cached.fetched_at >= self.offering_refresh

    def _collect_listings(
        self, listings: Mapping[str, Future[Sequence[CloudInstance]]], report: GatherReport
    ) -> dict[str, tuple[CloudInstance, ...]]:
        out: dict[str, tuple[CloudInstance, ...]] = {}
        for name, future in listings.items():
            try:
                out[name] = tuple(future.result())
            except Exception as exc:  # any failure: this cloud is unobserved this tick, nothing is inferred
                report.list_errors[name] = f"{type(exc).__name__}: {exc}"
                log.warning("listing %s failed; its instances are left as they are this tick: %s", name, exc)
        return out

    def _collect_offerings(
        self, refreshed: Mapping[str, Future[Sequence[Offering]]], now: datetime, report: GatherReport
    ) -> None:
        for name, future in refreshed.items():
            try:
                offerings = tuple(future.result())
            except Exception as exc:
                report.offering_errors[name] = f"{type(exc).__name__}: {exc}"
                log.warning("refreshing offerings of %s failed; keeping the last good list: %s", name, exc)
                continue
            self._offerings[name] = _CachedOfferings(now, offerings)
            self.store.record_prices(offerings, now)

    def _log_changes(self, demand: Mapping[str, Demand]) -> None:
        """Say when a source goes down or comes back, and when a pool starts or stops holding: once per change,
        not once per tick (a broker down for an hour must not write 240 identical lines)."""
        errors = {(pool, s.source): s.error for pool, d in demand.items() for s in d.samples if s.error}
        for (pool, source), error in errors.items():
            if self._source_errors.get((pool, source)) is None:
                log.warning("metric source %s of pool %s is failing: %s", source, pool, error)
        for pool, source in self._source_errors.keys() - errors.keys():
            log.info("metric source %s of pool %s answers again", source, pool)
        self._source_errors = errors
        holding = {pool: d.hold_reason for pool, d in demand.items() if d.hold}
        for pool, reason in holding.items():
            if pool not in self._holding:
                log.warning("pool %s holds its capacity: %s", pool, reason)
        for pool in self._holding.keys() - holding.keys():
            log.info("pool %s scales on its signals again", pool)
        self._holding = holding

    def forget_offerings(self) -> None:
        """Drop the cache (after a policy reload changed the clouds)."""
        self._offerings.clear()
