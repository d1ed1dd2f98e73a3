"""actuate(plan): make the Plan true. Intent is written to the store before any cloud is called.

Order within a tick: capacity events and observed changes (store only), decided changes, terminations
(TERMINATING is committed, then the cloud is asked), launches (the PENDING record is committed for every launch
first, then each goes REQUESTED -> cloud call -> result, in a bounded thread pool because the cloud SDKs block).
A crash between any two steps leaves a record that the next tick's observe() resolves from the cloud listing:
PENDING/REQUESTED records are re-launched with the same token (idempotent), tagged instances without a record are
adopted. A failed call is never retried here: the retry is the next tick.

Dry run (`run --dry-run`, shadow mode): apply() calls no cloud and writes nothing to the instance table, not even
observed transitions or adoptions (simple and safe: the table stays as the last real run left it, so a later
real run resumes from the truth it observes). It logs what it would launch and terminate; capacity events (the
clouds' own answers, which only steer placement) are still recorded, and the Daemon records the decisions.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from autoscaler import capacity
from autoscaler.breaker import CircuitOpen
from autoscaler.config import Policy
from autoscaler.errors import AuthError, CapacityError, ConfigError, NotFound, ProviderError, QuotaError
from autoscaler.interfaces import Clock, Provider
from autoscaler.lifecycle import IllegalTransition, InstanceState
from autoscaler.metrics import Metrics
from autoscaler.model import (
    TAG_DAEMON,
    TAG_INTENT,
    TAG_POOL,
    Adopt,
    CapacityEvent,
    CloudState,
    FailureKind,
    InstanceRecord,
    Launch,
    LaunchRequest,
    LaunchTemplate,
    Plan,
    Scope,
    Terminate,
    Transition,
)
from autoscaler.store import Fence, Store

log = logging.getLogger(__name__)
S = InstanceState

# Named steps at which tests inject a crash (see tests/test_crash_safety.py).
CRASH_POINTS = ("before_intent", "after_intent", "after_requested", "after_answer")


@dataclass
class ActuationResult:
    launched: list[Launch] = field(default_factory=list)
    refused: list[tuple[Launch, ProviderError]] = field(default_factory=list)  # each one blocked its offering
    errors: list[str] = field(default_factory=list)


class Actuator:
    def __init__(
        self,
        store: Store,
        providers: Mapping[str, Provider],
        clock: Clock,
        metrics: Metrics,
        daemon_id: str,
        max_workers: int = 8,
        crash_hook: Callable[[str, Launch], None] | None = None,
        dry_run: bool = False,
        fence: Fence | None = None,
    ) -> None:
        self.store = store
        # High availability: every instance write and every cloud call is fenced with the leader's token; the
        # store raises StaleLeader (nothing written, no call made) once another daemon holds the lease.
        self.fence = fence
        self.dry_run = dry_run
        self.providers = providers
        self.clock = clock
        self.metrics = metrics
        self.daemon_id = daemon_id
        self.max_workers = max_workers
        self.crash_hook = crash_hook
        # Scopes already blocked by this Actuator (one per tick): several launches refused at the same moment are
        # one failure of the offering, not several, so they must not climb the backoff ladder by themselves.
        self._failed_scopes: set[tuple[str, ...]] = set()
        self._failed_lock = threading.Lock()

    def apply(self, plan: Plan, policy: Policy) -> ActuationResult:
        result = ActuationResult()
        for event in plan.capacity_events:
            self._record_failure(event)
        if self.dry_run:
            self._log_dry_run(plan)
            return result
        for intent in plan.intents:
            if isinstance(intent, Transition):
                self._transition(intent.token, intent.to, intent.reason, intent.cloud_id, result)
            elif isinstance(intent, Adopt):
                self._adopt(intent)
        self._terminate(plan.of_type(Terminate), result)
        self._launch(plan.of_type(Launch), policy, result)
        return result

    def _log_dry_run(self, plan: Plan) -> None:
        for launch in plan.of_type(Launch):
            log.info("dry run: would launch %s for pool %s: %s", launch.offering, launch.pool, launch.reason)
        for t in plan.of_type(Terminate):
            log.info("dry run: would terminate %s %s (pool %s): %s", t.cloud, t.cloud_id, t.pool, t.reason)
        skipped = len(plan.of_type(Transition)) + len(plan.of_type(Adopt))
        if skipped:
            log.debug("dry run: %d transition(s)/adoption(s) not recorded", skipped)

    # ------------------------------------------------------------------ store-only steps

    def _record_failure(self, event: CapacityEvent) -> None:
        self.metrics.count_capacity_error(event.offering, event.kind)
        scope = capacity.scope_key(event.offering, event.scope)
        with self._failed_lock:
            if scope in self._failed_scopes:
                return
            self._failed_scopes.add(scope)
        block = self.store.record_capacity_event(event, self.clock.now())
        log.warning(
            "capacity memory: %s blocked until %s: %s", block.describe(), block.until.isoformat(), event.message
        )

    def _transition(
        self, token: str, to: InstanceState, reason: str, cloud_id: str | None, result: ActuationResult
    ) -> bool:
        try:
            self.store.transition(token, to, reason, self.clock.now(), cloud_id=cloud_id, fence=self.fence)
            return True
        except (IllegalTransition, KeyError) as exc:
            # The record moved since the snapshot (another replica, an earlier step of this tick): the next
            # tick observes it afresh.
            result.errors.append(f"{token}: {exc}")
            log.info("skipped transition of %s to %s: %s", token, to, exc)
            return False

    def _adopt(self, intent: Adopt) -> None:
        now = self.clock.now()
        if self.store.get_instance(intent.token) is None:
            self.store.add_instance(intent.record(now), intent.reason, now, fence=self.fence)
            log.warning(
                "adopted %s %s into pool %s", intent.instance.offering, intent.instance.cloud_id, intent.pool
            )

    # ------------------------------------------------------------------ terminations

    def _terminate(self, terminations: list[Terminate], result: ActuationResult) -> None:
        by_cloud: dict[str, list[Terminate]] = defaultdict(list)
        for t in terminations:
            if t.token is not None:
                rec = self.store.get_instance(t.token)
                if rec is None or not rec.live:
                    continue
                if rec.state != S.TERMINATING and not self._transition(
                    t.token, S.TERMINATING, t.reason, None, result
                ):
                    continue
            if t.cloud_id:
                by_cloud[t.cloud].append(t)
        for cloud, batch in by_cloud.items():
            provider = self.providers.get(cloud)
            if provider is None:
                result.errors.append(f"no provider {cloud!r} to terminate {[t.cloud_id for t in batch]}")
                continue
            if self.fence is not None:
                self.store.check_fence(self.fence)  # some of these have no row to write (leaks, retries)
            try:
                provider.terminate([t.cloud_id for t in batch])
                log.info("terminated on %s: %s", cloud, ", ".join(f"{t.cloud_id} ({t.reason})" for t in batch))
            except NotFound:
                pass
            except ProviderError as exc:
                result.errors.append(f"terminate on {cloud}: {exc}")
                log.warning("terminate on %s failed (retried next tick): %s", cloud, exc)

    # ------------------------------------------------------------------ launches

    def _launch(self, launches: list[Launch], policy: Policy, result: ActuationResult) -> None:
        if not launches:
            return
        now = self.clock.now()
        for launch in launches:
            self._crash("before_intent", launch)
            if not launch.retry:
                if self.store.get_instance(launch.token) is not None:
                    # The same intent was written before (a replayed tick): it is followed up as a retry.
                    log.info("intent %s already recorded", launch.token)
                    continue
                self.store.add_instance(_record(launch, now), launch.reason, now, fence=self.fence)
            self._crash("after_intent", launch)
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="launch") as pool:
            futures = [pool.submit(self._launch_one, launch, policy, result) for launch in launches]
            for future in futures:
                future.result()  # re-raises a crash injected by a test; provider errors are handled inside

    def _launch_one(self, launch: Launch, policy: Policy, result: ActuationResult) -> None:
        rec = self.store.get_instance(launch.token)
        if rec is None or rec.state not in (S.PENDING, S.REQUESTED):
            return
        if rec.state == S.PENDING and not self._transition(
            launch.token, S.REQUESTED, "calling the cloud", None, result
        ):
            return
        if rec.state == S.REQUESTED and self.fence is not None:
            self.store.check_fence(self.fence)  # a retry writes no intent of its own: check the lease anyway
        self._crash("after_requested", launch)
        provider = self.providers.get(launch.offering.cloud)
        if provider is None:
            self._transition(
                launch.token, S.LAUNCH_FAILED, f"no provider for {launch.offering.cloud}", None, result
            )
            return
        try:
            inst = provider.launch(self._request(launch, policy))
        except (CapacityError, QuotaError, AuthError, ConfigError) as exc:
            # The offering will not work for a while: block it at the error's scope (so placement moves on to
            # the next candidate, in this very tick) and let the backoff decide when to try it again. Auth and
            # configuration errors block the whole cloud's offering: no zone will take a request that is wrong.
            kind, scope = _failure_of(exc)
            self._transition(launch.token, S.LAUNCH_FAILED, f"{kind}: {exc}", None, result)
            self._record_failure(CapacityEvent(launch.offering, scope, kind, str(exc), launch.pool))
            result.refused.append((launch, exc))
            if kind in (FailureKind.AUTH, FailureKind.CONFIG):
                result.errors.append(f"launch {launch.offering}: {exc}")
                log.error("launch of %s refused (%s), an operator must act: %s", launch.offering, kind, exc)
            return
        except ProviderError as exc:
            result.errors.append(f"launch {launch.offering}: {exc}")
            log.warning("launch of %s failed, retried next tick with the same token: %s", launch.offering, exc)
            return
        except Exception as exc:  # a provider bug must not stop the loop; the token makes the retry safe
            result.errors.append(f"launch {launch.offering}: unexpected {type(exc).__name__}: {exc}")
            log.exception("unexpected error launching %s", launch.offering)
            return
        self._crash("after_answer", launch)
        if inst.state in (CloudState.STOPPING, CloudState.TERMINATED):
            # A retried launch whose instance has already ended (preempted before we heard of it).
            why = f"the cloud answered with an ended instance: {inst.state_reason or inst.state}"
            self._transition(launch.token, S.TERMINATED, why, inst.cloud_id, result)
            return
        to = S.RUNNING if inst.state == CloudState.RUNNING else S.PROVISIONING
        if self._transition(launch.token, to, f"the cloud accepted: {inst.cloud_id}", inst.cloud_id, result):
            self.store.clear_blocks_covering(launch.offering)
            self.metrics.count_launch(launch.pool, launch.offering)
            result.launched.append(launch)
            log.info(
                "launched %s as %s for pool %s: %s", launch.offering, inst.cloud_id, launch.pool, launch.reason
            )

    def _request(self, launch: Launch, policy: Policy) -> LaunchRequest:
        pool = policy.pool(launch.pool)
        cfg = pool.launch_templates.get(launch.offering.cloud) if pool else None  # type: ignore[call-overload]
        template = (
            LaunchTemplate(cfg.image, cfg.user_data, cfg.disk_gb, cfg.network, dict(cfg.tags), dict(cfg.extra))
            if cfg
            else LaunchTemplate()
        )
        tags = {**template.tags, TAG_DAEMON: self.daemon_id, TAG_POOL: launch.pool, TAG_INTENT: launch.token}
        return LaunchRequest(launch.token, launch.pool, launch.offering, template, tags)

    def _crash(self, point: str, launch: Launch) -> None:
        if self.crash_hook is not None:
            self.crash_hook(point, launch)


def _failure_of(exc: CapacityError | QuotaError | AuthError | ConfigError) -> tuple[FailureKind, Scope]:
    if isinstance(exc, CircuitOpen):  # not sent: the cloud's circuit breaker is open (autoscaler.breaker)
        return FailureKind.UNRESPONSIVE, exc.scope
    if isinstance(exc, CapacityError):
        return FailureKind.CAPACITY, exc.scope
    if isinstance(exc, QuotaError):
        return FailureKind.QUOTA, exc.scope
    return (FailureKind.AUTH if isinstance(exc, AuthError) else FailureKind.CONFIG), Scope.CLOUD


def _record(launch: Launch, now: datetime) -> InstanceRecord:
    return InstanceRecord(
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
