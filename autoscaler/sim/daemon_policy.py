"""The daemon under a policy file, as a simulated policy: the daemon's own decision code on a simulated world.

Each tick builds the Snapshot the daemon's gather would build (the cloud's listing, the pool's demand from its
metric sources, the records, capacity memory, scaling state) and calls `autoscaler.reconcile.reconcile`, the
daemon's own pure decision (observe, scaling, placement, disruption, limits and budget), then applies the Plan
the way `autoscaler.actuate.Actuator` does, with the same fallback rounds as `Daemon.tick`, but in memory: the
records, capacity-memory blocks and scaling state live in dicts instead of the SQL store, and launches and
terminations call the SimulatedProvider directly instead of through a thread pool. Not exercised: the SQL store,
the thread pools, health checks, the admin API and the metric sources' I/O (each of the pool's metric sources is
replaced by a reading of the queue model of the same kind; `autoscaler.sources.combine` still combines them).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from autoscaler import capacity
from autoscaler.actuate import _failure_of
from autoscaler.config import Policy
from autoscaler.errors import AuthError, CapacityError, ConfigError, ProviderError, QuotaError
from autoscaler.lifecycle import InstanceState, can_transition
from autoscaler.model import (
    TAG_DAEMON,
    TAG_INTENT,
    TAG_POOL,
    Adopt,
    Block,
    CapacityEvent,
    CloudState,
    FailureKind,
    InstanceRecord,
    Launch,
    LaunchRequest,
    LaunchTemplate,
    Plan,
    Preemption,
    Sample,
    ScalingState,
    Snapshot,
    Terminate,
    Transition,
)
from autoscaler.reconcile import reconcile
from autoscaler.sim.policy import TickOutcome
from autoscaler.sim.queue import QueueModel
from autoscaler.sim.world import World
from autoscaler.sources import combine
from policies.boot import BootHistory

S = InstanceState
_BlockKey = tuple[str, str, str, str, str, str]


class QueueSource:
    """A MetricSource that reads the queue model (no I/O): queue depth, the latency a new request can expect, or
    the arrival rate of the last tick."""

    def __init__(self, name: str, kind: str, model: QueueModel) -> None:
        self.name = name
        self.kind = kind
        self.timeout_seconds = 1.0
        self.model = model

    def read(self, now: datetime) -> Sample:
        if self.kind == "queue":
            value = self.model.queue_depth
        elif self.kind == "arrivals":
            value = self.model.arrival_rate
        else:
            value = self.model.latency_estimate()
        return Sample(self.name, self.kind, value, now)


@dataclass
class Counters:
    launches: int = 0
    capacity_errors: int = 0


class DaemonPolicy:
    name = "daemon"

    def __init__(self, world: World) -> None:
        self.world = world
        self.policy: Policy = world.policy
        self.pool = world.pool
        self.sources = [QueueSource(m.name, m.kind, world.queue) for m in self.pool.metrics]
        self.offerings = tuple(world.provider.offerings())
        self.records: dict[str, InstanceRecord] = {}
        self.blocks: dict[_BlockKey, Block] = {}
        self.scaling_state: dict[str, ScalingState] = {}
        self.missing_since: dict[str, datetime] = {}
        self.counters = Counters()
        self._failed_scopes: set[_BlockKey] = set()
        # What gather learns from the store: boot-to-ready times per offering, recent spot preemptions.
        self.boots = BootHistory()
        self.preemptions: deque[Preemption] = deque()
        self._preemption_memory = timedelta(seconds=self.pool.scaling.spare_memory_seconds)

    # ------------------------------------------------------------ one tick

    def tick(self, index: int) -> TickOutcome:
        world, policy = self.world, self.policy
        now = world.clock.now()
        demand = combine(self.pool, [s.read(now) for s in self.sources], now)
        self._failed_scopes = set()
        name = f"{policy.daemon.id}/sim/{index}"  # unique per tick, so launch tokens never repeat
        self.boots.observe(self.records.values())
        while self.preemptions and self.preemptions[0].at < now - self._preemption_memory:
            self.preemptions.popleft()
        snapshot = Snapshot(
            now=now,
            records=tuple(self.records.values()),
            cloud_instances={"simulated": world.listing()},
            offerings=self.offerings,
            blocks=self._active_blocks(now),
            demand={self.pool.name: demand},
            scaling_state=self.scaling_state,
            controls={},
            missing_since=self.missing_since,
            tick=f"{name}/r0",
            boot_times=self.boots.stats(),
            preemptions=tuple(self.preemptions),
        )
        plan = reconcile(snapshot, policy)
        refused = self._apply(plan, now)
        # Daemon.tick's fallback rounds: re-place refused launches at once with the new blocks in view.
        for round_no in range(1, policy.daemon.fallback_rounds + 1):
            if not refused:
                break
            again = replace(
                snapshot,
                records=tuple(r for r in self.records.values() if r.live),
                blocks=self._active_blocks(now),
                scaling_state=self.scaling_state,
                tick=f"{name}/r{round_no}",
            )
            launches = tuple(i for i in reconcile(again, policy).of_type(Launch) if not i.retry)
            if not launches:
                break
            refused = self._launch(list(launches), now)
        self.scaling_state = dict(plan.scaling_state)
        self.missing_since = dict(plan.missing_since)
        decision = plan.decisions[self.pool.name]
        ready = sum(r.capacity_units for r in self.records.values() if r.state == S.READY)
        return TickOutcome(desired=decision.desired, ready_units=ready)

    def summary_counts(self) -> dict[str, int]:
        return {"launches": self.counters.launches, "capacity_errors": self.counters.capacity_errors}

    # ------------------------------------------------------------ in-memory actuation (after actuate.Actuator)

    def _active_blocks(self, now: datetime) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks.values() if b.until > now)

    def _apply(self, plan: Plan, now: datetime) -> int:
        for event in plan.capacity_events:
            self._record_failure(event, now)
            if event.kind == FailureKind.PREEMPTION:
                self.preemptions.append(Preemption(event.offering, now))
        for intent in plan.intents:
            if isinstance(intent, Transition):
                self._move(intent.token, intent.to, intent.reason, now, intent.cloud_id)
            elif isinstance(intent, Adopt) and intent.token not in self.records:
                self.records[intent.token] = intent.record(now)
        ids: list[str] = []
        for t in plan.of_type(Terminate):
            if t.token is not None:
                rec = self.records.get(t.token)
                if rec is None or not rec.live:
                    continue
                if rec.state != S.TERMINATING and not self._move(t.token, S.TERMINATING, t.reason, now, None):
                    continue
            if t.cloud_id:
                ids.append(t.cloud_id)
        if ids:
            self.world.provider.terminate(ids)
        return self._launch(plan.of_type(Launch), now)

    def _move(self, token: str, to: InstanceState, reason: str, now: datetime, cloud_id: str | None) -> bool:
        rec = self.records.get(token)
        if rec is None or not can_transition(rec.state, to):
            return False
        # The constructor with every field: the same record as dataclasses.replace gives, at less than half its cost.
        moved = InstanceRecord(
            rec.token,
            rec.pool,
            rec.offering,
            to,
            rec.capacity_units,
            rec.gpus,
            rec.price_usd_per_hour,
            rec.created_at,
            now,
            cloud_id or rec.cloud_id,
            reason,
            rec.address,
        )
        if to.live:
            self.records[token] = moved
        else:
            del self.records[token]  # ended: the store would keep it as history, the simulation needs it not
            self.boots.forget((token,))
        return True

    def _record_failure(self, event: CapacityEvent, now: datetime) -> None:
        key = capacity.scope_key(event.offering, event.scope)
        if key in self._failed_scopes:
            return
        self._failed_scopes.add(key)
        self.blocks[key] = capacity.record_failure(self.blocks.get(key), event, now)

    def _launch(self, launches: list[Launch], now: datetime) -> int:
        refused = 0
        for launch in launches:
            if not launch.retry:
                if launch.token in self.records:
                    continue
                self.records[launch.token] = InstanceRecord(
                    token=launch.token,
                    pool=launch.pool,
                    offering=launch.offering,
                    state=S.PENDING,
                    capacity_units=launch.capacity_units,
                    gpus=launch.gpus,
                    price_usd_per_hour=launch.price_usd_per_hour,
                    created_at=now,
                    state_since=now,
                    reason=launch.reason,
                )
            rec = self.records.get(launch.token)
            if rec is None or rec.state not in (S.PENDING, S.REQUESTED):
                continue
            if rec.state == S.PENDING:
                self._move(launch.token, S.REQUESTED, "calling the cloud", now, None)
            tags = {TAG_DAEMON: self.policy.daemon.id, TAG_POOL: launch.pool, TAG_INTENT: launch.token}
            request = LaunchRequest(launch.token, launch.pool, launch.offering, LaunchTemplate(), tags)
            try:
                inst = self.world.provider.launch(request)
            except (CapacityError, QuotaError, AuthError, ConfigError) as exc:
                kind, scope = _failure_of(exc)
                self._move(launch.token, S.LAUNCH_FAILED, f"{kind}: {exc}", now, None)
                self._record_failure(CapacityEvent(launch.offering, scope, kind, str(exc), launch.pool), now)
                self.counters.capacity_errors += kind == FailureKind.CAPACITY
                refused += 1
                continue
            except ProviderError:
                continue  # retried next tick with the same token
            if inst.state in (CloudState.STOPPING, CloudState.TERMINATED):
                self._move(launch.token, S.TERMINATED, "the cloud answered with an ended instance", now, None)
                continue
            # The provider boots in 0 s; the world's listing says pending until the boot delay has passed.
            if self._move(
                launch.token, S.PROVISIONING, f"the cloud accepted: {inst.cloud_id}", now, inst.cloud_id
            ):
                for key in [k for k, b in self.blocks.items() if b.covers(launch.offering)]:
                    del self.blocks[key]
                self.counters.launches += 1
        return refused
