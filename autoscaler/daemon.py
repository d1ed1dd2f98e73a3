"""The daemon: one tick = gather -> reconcile (pure) -> actuate, with fallback rounds, plus policy reload.

`tick()` is what APScheduler calls (see autoscaler.runner); tests and the simulator call it directly with a fake
clock. A tick's failure is logged and counted, never fatal: the next tick recomputes everything from what it
observes (level-triggered), so nothing is carried over but the store.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from autoscaler import breaker as circuit
from autoscaler.actuate import Actuator
from autoscaler.alerts import Alerts
from autoscaler.config import Policy
from autoscaler.discovery import DiscoveryWriter, learned_addresses
from autoscaler.errors import ProviderError
from autoscaler.gather import Gatherer
from autoscaler.interfaces import Clock, MetricSource, Provider
from autoscaler.leader import LeaderElector, Leadership, default_identity
from autoscaler.metrics import Metrics
from autoscaler.model import Launch, Plan, PoolDecision, ScalingState, Snapshot, Terminate
from autoscaler.policyfile import LoadedPolicy, PolicyError, load_policy
from autoscaler.reconcile import reconcile
from autoscaler.sources import build_sources
from autoscaler.store import Fence, StaleLeader, Store

log = logging.getLogger(__name__)

ProviderFactory = Callable[[Policy], dict[str, Provider]]
PRUNE_EVERY = timedelta(hours=1)


class Daemon:
    """Owns the policy in force, the providers and sources built from it, and the tick. Implements the admin
    API's DaemonControl."""

    def __init__(
        self,
        loaded: LoadedPolicy,
        *,
        store: Store,
        clock: Clock,
        provider_factory: ProviderFactory,
        policy_path: Path | None = None,
        metrics: Metrics | None = None,
        crash_hook: Callable[[str, Launch], None] | None = None,
        dry_run: bool = False,
        ha_identity: str | None = None,
    ) -> None:
        self.store = store
        self.dry_run = dry_run  # shadow mode: plan, explain and record decisions, but never act (see actuate)
        self.clock = clock
        self.metrics = metrics or Metrics()
        # Webhook alerts (autoscaler.alerts): evaluated after each tick, sent by their own thread.
        self.alerts = Alerts(loaded.policy.alerts, loaded.policy.daemon.id)
        self.policy_path = policy_path
        self.started_at = clock.now()
        # Part of every tick's name, so launch tokens of this process never repeat those of an earlier one even
        # when a restart lands on the same timestamp.
        self.incarnation = uuid.uuid4().hex[:12]
        self._provider_factory = provider_factory
        self._crash_hook = crash_hook
        self._lock = threading.RLock()  # guards the policy and what is built from it
        self._tick_lock = threading.Lock()  # one tick at a time
        self._loaded = loaded
        self._providers: dict[str, Provider] = self._guard(provider_factory(loaded.policy), loaded.policy)
        self._sources = self._build_sources(loaded.policy)
        self._scaling_state: dict[str, ScalingState] = store.load_scaling_state()
        self._missing_since: dict[str, datetime] = {}  # see Snapshot.missing_since; a restart starts afresh
        self.gatherer = Gatherer(store, clock, max_workers=loaded.policy.daemon.max_parallel_cloud_calls)
        self.last_plan: Plan | None = None
        self.last_snapshot: Snapshot | None = None  # what the last tick observed: the API's view of the sources
        self._last_prune: datetime | None = None
        self.last_tick_finished: float | None = None  # monotonic seconds
        self.last_tick_error: str = ""
        self.on_policy_change: Callable[[Policy], None] | None = None
        # ---- high availability (autoscaler.leader): on PostgreSQL only the lease holder acts. A dry run never
        # competes for the lease (a shadow must not displace the real leader) and writes no instance rows.
        self.on_leadership_gained: Callable[[], None] | None = None  # the runner ticks at once
        self.elector: LeaderElector | None = None
        self._fence: Fence | None = None  # the fence of the tick in flight (None: single node)
        self._new_holding = False  # set on gaining leadership: the next tick reloads what a leader carries
        self._polling_in_tick = False  # a tick that gains leadership needs no extra tick
        if store.supports_leases and not dry_run:
            self.elector = LeaderElector(
                store,
                ha_identity or default_identity(loaded.policy.daemon.id),
                lambda: self.policy().policy.daemon.ha,
                self._leadership_changed,
            )
        # ---- end of the high availability block
        self.discovery = DiscoveryWriter()  # writes each pool's file_sd / nginx upstream files after a tick
        store.record_policy_revision(
            at=clock.now(), sha256=loaded.sha256, source=loaded.source, text=loaded.text, accepted=True
        )

    # ------------------------------------------------------------------ DaemonControl

    def policy(self) -> LoadedPolicy:
        with self._lock:
            return self._loaded

    def reload_policy(self) -> tuple[bool, str]:
        """Re-read the policy file. A bad file leaves the running policy in force and says why."""
        if self.policy_path is None:
            return False, "running the built-in default policy: there is no file to reload (use run --policy)"
        now = self.clock.now()
        try:
            new = load_policy(self.policy_path)
        except PolicyError as exc:
            text = _read_quietly(self.policy_path)
            self.store.record_policy_revision(
                at=now, sha256="", source=str(self.policy_path), text=text, accepted=False, error=str(exc)
            )
            log.error("policy reload rejected, the last good policy stays in force:\n%s", exc)
            return False, str(exc)
        stranded = self._stranded_clouds(new.policy)
        if stranded:
            error = (
                f"{self.policy_path}: the new policy drops cloud(s) that still have live instances: {stranded}; "
                "remove their candidates first, let those instances drain, then remove the cloud"
            )
            self.store.record_policy_revision(
                at=now, sha256=new.sha256, source=new.source, text=new.text, accepted=False, error=error
            )
            log.error("policy reload rejected, the last good policy stays in force: %s", error)
            return False, error
        old = self.policy()
        if new.sha256 == old.sha256:
            return True, "policy unchanged"
        try:  # build everything first: a missing library or a bad cloud setting rejects the reload whole
            rebuild = _provider_inputs(new.policy) != _provider_inputs(old.policy)
            providers = self._guard(self._provider_factory(new.policy), new.policy) if rebuild else None
            sources = self._build_sources(new.policy)
        except ProviderError as exc:
            error = f"{self.policy_path}: {exc}"
            self.store.record_policy_revision(
                at=now, sha256=new.sha256, source=new.source, text=new.text, accepted=False, error=error
            )
            log.error("policy reload rejected, the last good policy stays in force: %s", error)
            return False, error
        with self._lock:
            if providers is not None:
                self._providers = providers
                self.gatherer.forget_offerings()
            retired, self._sources = self._sources, sources
            self._loaded = new
        _close_sources(retired)
        self.store.record_policy_revision(
            at=now, sha256=new.sha256, source=new.source, text=new.text, accepted=True
        )
        log.info("policy reloaded from %s (sha256 %s)", new.source, new.sha256[:12])
        if self.on_policy_change is not None:
            self.on_policy_change(new.policy)
        return True, f"policy reloaded from {new.source}"

    def _stranded_clouds(self, policy: Policy) -> str:
        """Clouds with live records that `policy` no longer enables: without their provider the daemon could
        neither see nor terminate those instances."""
        enabled = policy.clouds.enabled()
        counts: dict[str, int] = {}
        for rec in self.store.instances(live_only=True):
            if rec.offering.cloud not in enabled:
                counts[rec.offering.cloud] = counts.get(rec.offering.cloud, 0) + 1
        return ", ".join(f"{cloud} ({n} live)" for cloud, n in sorted(counts.items()))

    def _tick_age(self) -> tuple[float, float] | None:
        """(seconds since the last tick finished, the tick interval); None before the first tick."""
        if self.last_tick_finished is None:
            return None
        return time.monotonic() - self.last_tick_finished, self.policy().policy.daemon.tick_seconds

    def health(self) -> tuple[bool, str]:
        """Alive unless ticks stopped finishing: a stuck loop is what a restart can cure."""
        if (since := self._tick_age()) is None:
            return True, "starting"
        age, interval = since
        if age > 10 * interval + 60:
            return False, f"no tick finished for {age:.0f}s"
        return True, f"last tick {age:.1f}s ago"

    def readiness(self) -> tuple[bool, str]:
        if (since := self._tick_age()) is None:
            return False, "no tick has completed yet"
        age, interval = since
        if age > 3 * interval + 30:
            return False, f"last tick finished {age:.0f}s ago"
        if self.last_tick_error:
            return False, f"last tick failed: {self.last_tick_error}"
        return True, "ok"

    @property
    def providers(self) -> Mapping[str, Provider]:
        with self._lock:
            return dict(self._providers)

    # ------------------------------------------------------------------ the tick

    def tick(self) -> Plan:
        """One tick. Raises on failure (run_tick() is the never-raising wrapper the scheduler uses).

        On PostgreSQL it first takes or renews the leader lease; a follower does nothing else (no cloud call,
        no write). A leader's writes carry its fence: if another daemon took over meanwhile (this one was paused
        or cut off), the store refuses the first of them, before any cloud call, and the tick ends there."""
        leadership = self.leadership()
        if self.elector is not None:
            self._polling_in_tick = True
            try:
                leadership = self.elector.poll()
            finally:
                self._polling_in_tick = False
            if not leadership.acts:
                return self._follower_tick(leadership)
        self._fence = leadership.fence
        try:
            return self._leader_tick()
        except StaleLeader as exc:
            self.metrics.count_stale_leader()
            log.warning("fenced off: the store refused this daemon's write, it is not the leader: %s", exc)
            if self.elector is not None:
                self.elector.demote(f"fenced off: {exc}")
            self.last_tick_finished = time.monotonic()
            self.last_tick_error = ""
            return self._empty_plan()

    def _leader_tick(self) -> Plan:
        with self._tick_lock:
            if self._new_holding:  # a new leader carries on from what the last one stored
                self._new_holding = False
                self._scaling_state = self.store.load_scaling_state()
                self._missing_since = {}
            started = time.perf_counter()
            with self._lock:
                loaded, providers, sources = self._loaded, dict(self._providers), dict(self._sources)
            policy = loaded.policy
            actuator = Actuator(
                self.store,
                providers,
                self.clock,
                self.metrics,
                policy.daemon.id,
                max_workers=policy.daemon.max_parallel_cloud_calls,
                crash_hook=self._crash_hook,
                dry_run=self.dry_run,
                fence=self._fence,
            )
            now = self.clock.now()
            name = f"{policy.daemon.id}/{self.incarnation}/{now.isoformat()}"
            snapshot = self.gatherer.gather(
                policy, providers, sources, self._scaling_state, self._missing_since, f"{name}/r0"
            )
            snapshot = self._with_open_breakers(snapshot, providers)  # a dark cloud's offerings are skipped
            plan = reconcile(snapshot, policy)
            result = actuator.apply(plan, policy)
            decisions = dict(plan.decisions)
            # Refused launches (each blocked its offering): re-place at once, within this tick, with the new blocks
            # in view. Only new launches are taken from these rounds; everything else waits for the next tick's
            # fresh observation.
            for round_no in range(1, policy.daemon.fallback_rounds + 1):
                if not result.refused:
                    break
                again = self._with_open_breakers(self._refreshed(snapshot, f"{name}/r{round_no}"), providers)
                fallback = reconcile(again, policy)
                launches = tuple(i for i in fallback.of_type(Launch) if not i.retry)
                # The refused pools' decisions tell how the fallback went, even when nothing was left to try.
                refused_pools = {launch.pool for launch, _ in result.refused}
                decisions = _merge_decisions(decisions, fallback.decisions, refused_pools, round_no)
                if not launches:
                    break
                result = actuator.apply(replace(fallback, intents=launches, capacity_events=()), policy)
            if self.dry_run:
                decisions = _dry_run_decisions(decisions, plan)
            self._scaling_state = dict(plan.scaling_state)
            self._missing_since = dict(plan.missing_since)
            self.store.save_scaling_state(plan.scaling_state)
            self.store.record_decisions(now, decisions)
            plan = replace(plan, decisions=decisions)
            duration = time.perf_counter() - started
            # service discovery: addresses the listings showed, then the files (see autoscaler.discovery)
            live = self.store.instances(live_only=True)
            self.store.set_addresses(learned_addresses(live, snapshot.cloud_instances))
            final = self._final_snapshot(snapshot)
            if not self.dry_run:  # shadow mode changes nothing outside the daemon, load balancers included
                self.discovery.publish(policy, final.records)
            self.metrics.observe_tick(final, plan, duration)
            self.metrics.set_budgets(policy)  # spend limits, for dashboards (spend against budget)
            blocks_now = self.store.blocks(now=self.clock.now())
            self.metrics.set_blocks(blocks_now, self.clock.now())
            self.metrics.set_breakers([b.status() for b in circuit.breakers(providers).values()])
            self.alerts.observe(policy, final, plan, blocks_now)  # never raises, never waits for a webhook
            self._prune_now_and_then(policy)
            self.last_plan = plan
            self.last_snapshot = final  # after observe_tick: the API pairs it with the metrics' last good readings
            self.last_tick_finished = time.monotonic()
            self.last_tick_error = ""
            return plan

    def _prune_now_and_then(self, policy: Policy) -> None:
        """Once an hour, drop history past the retention period, so the database stays bounded."""
        now = self.clock.now()
        if self._last_prune is not None and now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        counts = self.store.prune(now - timedelta(days=policy.daemon.history_retention_days))
        if any(counts.values()):
            log.info("pruned history older than %g days: %s", policy.daemon.history_retention_days, counts)

    # ---- high availability (autoscaler.leader)

    def leadership(self) -> Leadership:
        """This daemon's role: "single" on SQLite and in a dry run, else leader or follower of the lease."""
        if self.elector is None:
            return Leadership("single", self.policy().policy.daemon.id, reason="single node")
        return self.elector.current()

    def _leadership_changed(self, was_leader: bool, is_leader: bool, token: int | None) -> None:
        """The one place a change of leadership is seen (from the tick or the lease renewal thread)."""
        self.metrics.set_leadership(is_leader, token)
        if is_leader:
            self._new_holding = True
            log.warning(
                "leadership: this daemon is now the leader (fencing token %s)%s",
                token,
                "; its earlier holding had lapsed" if was_leader else "",
            )
            if self.elector is not None:  # only the daemon that gained the lease tells the webhooks
                self.alerts.leadership_changed(self.elector.identity, None, self.clock.now(), fencing_token=token)
            if self.on_leadership_gained is not None and not self._polling_in_tick:
                self.on_leadership_gained()
        else:
            log.warning("leadership: this daemon is no longer the leader (its fencing token was %s)", token)

    def _follower_tick(self, leadership: Leadership) -> Plan:
        """A follower calls no cloud and writes nothing: it only stays healthy and says whom it follows."""
        self.metrics.set_leadership(False, leadership.token)
        self.last_tick_finished = time.monotonic()
        self.last_tick_error = ""
        return self._empty_plan()

    def _empty_plan(self) -> Plan:
        return Plan(now=self.clock.now(), intents=(), decisions={}, scaling_state=self._scaling_state)

    def start_lease_renewal(self) -> None:
        """Renew the lease between ticks too (the runner calls this), so a long tick does not lose it."""
        if self.elector is not None:
            self.elector.start()

    def stop_lease_renewal(self) -> None:
        """On shutdown, after the last tick: release the lease so a follower takes over at once."""
        if self.elector is not None:
            self.elector.stop(release=True)

    # ---- end of the high availability block

    def run_tick(self) -> None:
        """The scheduler's job: one tick, and whatever happens, the loop goes on."""
        try:
            self.tick()
        except Exception as exc:
            self.last_tick_error = f"{type(exc).__name__}: {exc}"
            self.metrics.count_tick_failure()
            log.exception("tick failed; the next tick starts afresh")

    # ------------------------------------------------------------------ helpers

    # ---- circuit breakers (autoscaler.breaker): every provider is wrapped where it is built
    def _guard(self, providers: dict[str, Provider], policy: Policy) -> dict[str, Provider]:
        cfg = policy.daemon.circuit_breaker
        if not cfg.enabled:
            return providers
        settings = circuit.BreakerSettings(
            failures_to_open=cfg.failures_to_open,
            failure_ratio=cfg.failure_ratio,
            window_calls=cfg.window_calls,
            min_calls=cfg.min_calls,
            cooldown=timedelta(seconds=cfg.cooldown_seconds),
        )
        return circuit.wrap_providers(providers, settings, self.clock)

    def _with_open_breakers(self, snapshot: Snapshot, providers: Mapping[str, Provider]) -> Snapshot:
        extra = circuit.breaker_blocks(providers, snapshot.offerings, snapshot.now)
        return replace(snapshot, blocks=(*snapshot.blocks, *extra)) if extra else snapshot

    def breaker_status(self) -> list[circuit.BreakerStatus]:
        """Each provider's circuit breaker, for the API's status."""
        return [b.status() for _, b in sorted(circuit.breakers(self.providers).items())]

    # ---- end of the circuit breaker block

    def _refreshed(self, snapshot: Snapshot, tick: str) -> Snapshot:
        now = self.clock.now()
        return replace(
            snapshot,
            records=tuple(self.store.instances(live_only=True)),
            blocks=tuple(self.store.blocks(now=now)),
            scaling_state=self._scaling_state,
            tick=tick,
        )

    def _final_snapshot(self, snapshot: Snapshot) -> Snapshot:
        return replace(snapshot, records=tuple(self.store.instances(live_only=True)))

    def _build_sources(self, policy: Policy) -> dict[str, list[MetricSource]]:
        return {pool.name: build_sources(pool, self.started_at) for pool in policy.pools}


def _provider_inputs(policy: Policy) -> tuple[object, ...]:
    """What providers are built from: when it changes, a reload rebuilds them (e.g. a new candidate type)."""
    types = sorted((c.cloud, c.instance_type) for p in policy.pools for c in p.candidates)
    return (policy.clouds, policy.daemon.id, types)


def _merge_decisions(
    first: Mapping[str, PoolDecision], later: Mapping[str, PoolDecision], pools: set[str], round_no: int
) -> dict[str, PoolDecision]:
    merged = dict(first)
    for name in pools:
        old, new = merged[name], later[name]
        # A round repeats what did not change (the demand, the desired capacity): keep only what it adds.
        reasons = [r for r in new.reasons if r not in old.reasons and not r.startswith("fallback round")]
        merged[name] = replace(
            old,
            reasons=(*old.reasons, *(f"fallback round {round_no}: {r}" for r in reasons)),
            chosen=(*old.chosen, *(f"fallback round {round_no}: {c}" for c in new.chosen)),
            skipped=tuple(dict.fromkeys((*old.skipped, *new.skipped))),
        )
    return merged


def _dry_run_decisions(decisions: Mapping[str, PoolDecision], plan: Plan) -> dict[str, PoolDecision]:
    """Say in each pool's decision what a dry run did not send."""
    launches = Counter(i.pool for i in plan.of_type(Launch))
    terminations = Counter(i.pool for i in plan.of_type(Terminate) if i.pool is not None)
    out = dict(decisions)
    for name, old in decisions.items():
        notes = [f"dry run: {launches[name]} launch(es) not sent"] if launches[name] else []
        if terminations[name]:
            notes.append(f"dry run: {terminations[name]} termination(s) not sent")
        if notes:
            out[name] = replace(old, reasons=(*old.reasons, *notes))
    return out


def _close_sources(sources: Mapping[str, list[MetricSource]]) -> None:
    """Close the connections of sources a reload replaced (brokers log connections dropped without a goodbye)."""
    for pool_sources in sources.values():
        for source in pool_sources:
            close = getattr(source, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # a broker already gone: nothing to close politely
                    log.debug("closing metric source %s failed", source.name, exc_info=True)


def _read_quietly(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
