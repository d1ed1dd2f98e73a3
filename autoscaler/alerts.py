"""Webhook alerts: what an operator must hear about, sent to Slack or any JSON receiver, never blocking a tick.

Conditions (evaluated at the end of every tick from its Snapshot and Plan, with the policy in force):

- `all_candidates_blocked` (one per pool): every offering that matches one of the pool's candidates is blocked
  by capacity memory, so the pool cannot grow anywhere;
- `budget_limit_reached`: live instances reach a global limit (`daemon.limits`), or placement skipped an
  offering because it would not fit under a budget;
- `slo_breached` (one per pool): the pool's latency has stayed above `targets.latency_slo_seconds` for longer
  than `targets.slo_breach_alert_seconds`;
- `preemption_storm`: at least `alerts.preemption_storm.count` spot preemptions within its `window_seconds`;
- `metric_source_stale` (one per pool and source): no usable reading for longer than the pool's
  `scaling.max_metric_age_seconds` (a single failed read does not alert; the pool already holds);
- `leadership_changed`: an event, not a condition: `Alerts.leadership_changed()` sends it once.

Deduplication: a condition is sent when it starts ("firing"), again only after `alerts.repeat_seconds` while it
stays active, and once more when it clears ("resolved", unless `send_resolved: false`). Times come from the
Snapshot (the daemon's injected clock), so the behaviour is the same on a fake clock.

Delivery: `observe()` only evaluates and enqueues; a background thread POSTs each notice to every webhook, with
retries and exponential backoff on connection errors, timeouts, 429 and 5xx. The queue is bounded: when it is
full a new notice is dropped and logged (a firing one is tried again on the next tick). Webhook URLs are Secrets
(read when sending, so a rotated URL needs no restart) and never appear in a log line.

The JSON body carries `text` (what Slack's incoming webhooks show) and structured fields for other receivers:
`status` (firing | resolved | event), `alert`, `key`, `severity`, `summary`, `labels`, `daemon`, `started_at`,
`at`, `sends` (1 for the first notice of an activation, 2 for the first repeat, ...).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from autoscaler.capacity import blocking
from autoscaler.config import AlertSettings, Policy, Webhook
from autoscaler.model import Block, FailureKind, Plan, Snapshot
from autoscaler.sources.combine import problem
from metrics_sources._secrets import SecretError, read_secret
from policies.placement import matches

log = logging.getLogger(__name__)
SENDER_THREAD = "alert-sender"


def _not_from_the_sender(record: logging.LogRecord) -> bool:
    """httpx logs every request's full URL at INFO; a webhook URL is a secret, so the sender's are dropped."""
    return record.threadName != SENDER_THREAD


for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_not_from_the_sender)

MAX_BACKOFF_SECONDS = 60.0
_EPSILON = 1e-9

ALL_BLOCKED = "all_candidates_blocked"
BUDGET = "budget_limit_reached"
SLO = "slo_breached"
STORM = "preemption_storm"
STALE = "metric_source_stale"
LEADERSHIP = "leadership_changed"


@dataclass(frozen=True)
class Condition:
    """One active alert condition; `key` identifies it across ticks (for deduplication)."""

    key: str
    alert: str
    severity: str  # critical | warning | info
    summary: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice:
    body: dict[str, Any]
    webhooks: tuple[Webhook, ...]
    settings: AlertSettings


@dataclass
class _Active:
    condition: Condition
    started_at: datetime
    last_sent: datetime
    sends: int


@dataclass
class SenderStats:
    delivered: int = 0  # POSTs answered with 2xx
    attempts: int = 0  # POSTs tried, retries included
    failed: int = 0  # notices given up on (per webhook)
    dropped: int = 0  # notices not queued: the queue was full


class Alerts:
    """Evaluates alert conditions each tick and hands notices to a background sender. Thread-safe."""

    def __init__(self, settings: AlertSettings | None = None, daemon_id: str = "default") -> None:
        self._settings = settings or AlertSettings()
        self._daemon_id = daemon_id
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        # timing memory (all by the daemon's clock)
        self._breach_since: dict[str, datetime] = {}
        self._last_good: dict[tuple[str, str], datetime] = {}
        self._first_seen: dict[tuple[str, str], datetime] = {}
        self._preemptions: deque[tuple[datetime, str]] = deque()
        self._leader: str | None = None
        self._sender = _Sender(self._settings.queue_size)

    # ------------------------------------------------------------------ the daemon's calls

    def observe(
        self, policy: Policy, snapshot: Snapshot, plan: Plan, blocks: Sequence[Block] | None = None
    ) -> None:
        """Evaluate every condition after a tick and queue what must be sent. Never raises, never blocks."""
        try:
            with self._lock:
                self._settings = policy.alerts
                self._daemon_id = policy.daemon.id
                conditions = self._evaluate(policy, snapshot, plan, snapshot.blocks if blocks is None else blocks)
                self._dedup(conditions, snapshot.now)
        except Exception:  # an alert bug must never break the tick
            log.exception("evaluating alerts failed")

    def leadership_changed(
        self, leader: str | None, previous: str | None, at: datetime, fencing_token: int | None = None
    ) -> None:
        """Send a one-off `leadership_changed` notice (the same leader reported again is not re-sent)."""
        try:
            with self._lock:
                if leader == self._leader and leader is not None:
                    return
                self._leader = leader
                who = leader or "nobody"
                summary = f"leadership changed: {who} now leads" + (f" (was {previous})" if previous else "")
                if fencing_token is not None:
                    summary += f", fencing token {fencing_token}"
                labels = {"leader": leader or "", "previous": previous or ""}
                cond = Condition(f"{LEADERSHIP}:{who}", LEADERSHIP, "info", summary, labels)
                self._enqueue(cond, "event", at, at, 1)
        except Exception:
            log.exception("sending the leadership alert failed")

    def active(self) -> list[Condition]:
        """The conditions active now (firing), by key."""
        with self._lock:
            return [a.condition for _, a in sorted(self._active.items())]

    @property
    def stats(self) -> SenderStats:
        return self._sender.stats

    def close(self, timeout: float = 5.0) -> None:
        """Give queued notices up to `timeout` seconds to go out, then stop the sender."""
        self._sender.close(timeout)

    # ------------------------------------------------------------------ conditions

    def _evaluate(
        self, policy: Policy, snap: Snapshot, plan: Plan, blocks: Sequence[Block]
    ) -> dict[str, Condition]:
        now = snap.now
        out: list[Condition] = []
        for pool in policy.pools:
            out.extend(self._blocked(pool.name, pool.candidates, snap, blocks))
            out.extend(self._slo(pool, snap))
            out.extend(self._stale(pool, snap))
        out.extend(_budget(policy, snap, plan))
        out.extend(self._storm(policy, plan, now))
        known = {p.name for p in policy.pools}
        for name in list(self._breach_since):
            if name not in known:
                del self._breach_since[name]
        return {c.key: c for c in out}

    def _blocked(
        self, pool: str, candidates: Sequence[Any], snap: Snapshot, blocks: Sequence[Block]
    ) -> list[Condition]:
        offerings = {o.key for o in snap.offerings if any(matches(c, o.key) for c in candidates)}
        if not offerings:
            return []
        found = {key: blocking(blocks, key, snap.now) for key in offerings}
        if any(b is None for b in found.values()):
            return []
        kinds = sorted({str(b.kind) for b in found.values() if b is not None})
        until = min(b.until for b in found.values() if b is not None)
        summary = (
            f"pool {pool}: all {len(offerings)} offering(s) of its {len(candidates)} candidate(s) are blocked "
            f"({', '.join(kinds)}); the first block ends at {until.isoformat()}"
        )
        return [Condition(f"{ALL_BLOCKED}:{pool}", ALL_BLOCKED, "critical", summary, {"pool": pool})]

    def _slo(self, pool: Any, snap: Snapshot) -> list[Condition]:
        slo = pool.targets.latency_slo_seconds
        demand = snap.demand.get(pool.name)
        latency = demand.latency_seconds if demand is not None else None
        if slo is None:
            self._breach_since.pop(pool.name, None)
            return []
        if latency is not None:  # no reading (the pool holds): neither a breach nor a recovery
            if latency > slo:
                self._breach_since.setdefault(pool.name, snap.now)
            else:
                self._breach_since.pop(pool.name, None)
        since = self._breach_since.get(pool.name)
        if since is None:
            return []
        lasted = (snap.now - since).total_seconds()
        allowed = pool.targets.slo_breach_alert_seconds
        if lasted < allowed:
            return []
        shown = f"{latency:.3g} s" if latency is not None else "unknown now"
        summary = (
            f"pool {pool.name}: latency above its SLO of {slo:g} s for {lasted:.0f} s "
            f"(allowed {allowed:g} s; latest {shown})"
        )
        return [Condition(f"{SLO}:{pool.name}", SLO, "critical", summary, {"pool": pool.name})]

    def _stale(self, pool: Any, snap: Snapshot) -> list[Condition]:
        now, limit = snap.now, pool.scaling.max_metric_age_seconds
        demand = snap.demand.get(pool.name)
        samples = {s.source: s for s in demand.samples} if demand is not None else {}
        out = []
        for cfg in pool.metrics:
            key = (pool.name, cfg.name)
            self._first_seen.setdefault(key, now)
            sample = samples.get(cfg.name)
            why = problem(sample, now, math.inf) if sample is not None else "no sample"
            if not why and sample is not None and sample.observed_at is not None:
                previous = self._last_good.get(key)
                if previous is None or sample.observed_at > previous:
                    self._last_good[key] = sample.observed_at
            good = self._last_good.get(key)
            age = (now - (good or self._first_seen[key])).total_seconds()
            if age <= limit:
                continue
            since = (
                f"its newest usable reading is {age:.0f} s old" if good else f"no usable reading for {age:.0f} s"
            )
            summary = f"pool {pool.name}: metric source {cfg.name} is stale: {since} (limit {limit:g} s)" + (
                f"; last read: {why}" if why else ""
            )
            labels = {"pool": pool.name, "source": cfg.name}
            out.append(Condition(f"{STALE}:{pool.name}:{cfg.name}", STALE, "warning", summary, labels))
        return out

    def _storm(self, policy: Policy, plan: Plan, now: datetime) -> list[Condition]:
        storm = policy.alerts.preemption_storm
        for event in plan.capacity_events:
            if event.kind == FailureKind.PREEMPTION:
                self._preemptions.append((now, f"{event.offering.cloud}/{event.offering.zone}"))
        while self._preemptions and (now - self._preemptions[0][0]).total_seconds() > storm.window_seconds:
            self._preemptions.popleft()
        n = len(self._preemptions)
        if n < storm.count:
            return []
        zones = sorted({z for _, z in self._preemptions})
        summary = (
            f"preemption storm: {n} spot preemptions within {storm.window_seconds:g} s "
            f"(threshold {storm.count}) in {', '.join(zones)}"
        )
        return [Condition(STORM, STORM, "warning", summary, {"count": str(n)})]

    # ------------------------------------------------------------------ deduplication

    def _dedup(self, conditions: Mapping[str, Condition], now: datetime) -> None:
        repeat = self._settings.repeat_seconds
        for key, cond in conditions.items():
            active = self._active.get(key)
            if active is None:
                if self._enqueue(cond, "firing", now, now, 1):
                    self._active[key] = _Active(cond, now, now, 1)
                continue
            active.condition = cond
            due = (now - active.last_sent).total_seconds() >= repeat - _EPSILON
            if due and self._enqueue(cond, "firing", active.started_at, now, active.sends + 1):
                active.last_sent, active.sends = now, active.sends + 1
        for key in [k for k in self._active if k not in conditions]:
            gone = self._active.pop(key)
            if self._settings.send_resolved:
                cond = gone.condition
                self._enqueue(
                    Condition(cond.key, cond.alert, cond.severity, f"resolved: {cond.summary}", cond.labels),
                    "resolved",
                    gone.started_at,
                    now,
                    gone.sends + 1,
                )

    def _enqueue(self, cond: Condition, status: str, started: datetime, now: datetime, sends: int) -> bool:
        """Queue a notice; False when it could not be queued (no webhook: True, nothing to do)."""
        settings = self._settings
        if not settings.webhooks:
            return True
        mark = {"firing": "[FIRING]", "resolved": "[RESOLVED]", "event": "[INFO]"}[status]
        body = {
            "text": f"{mark} gpu-autoscaler {self._daemon_id}: {cond.summary}",
            "status": status,
            "alert": cond.alert,
            "key": cond.key,
            "severity": "info" if status == "resolved" else cond.severity,
            "summary": cond.summary,
            "labels": dict(cond.labels),
            "daemon": self._daemon_id,
            "started_at": started.isoformat(),
            "at": now.isoformat(),
            "sends": sends,
        }
        return self._sender.submit(Notice(body, tuple(settings.webhooks), settings))


def _budget(policy: Policy, snap: Snapshot, plan: Plan) -> list[Condition]:
    limits = policy.daemon.limits
    live = [r for r in snap.records if r.live]
    spend = sum(r.price_usd_per_hour for r in live)
    gpus = sum(r.gpus for r in live)
    reached = []
    if len(live) >= limits.max_instances:
        reached.append(f"{len(live)} instances of max_instances {limits.max_instances}")
    if gpus >= limits.max_gpus:
        reached.append(f"{gpus} GPUs of max_gpus {limits.max_gpus}")
    if spend >= limits.max_usd_per_hour - _EPSILON:
        reached.append(f"${spend:.2f}/h of max_usd_per_hour ${limits.max_usd_per_hour:g}")
    pools = sorted(name for name, d in plan.decisions.items() if any("budget" in s.reason for s in d.skipped))
    if pools:
        reached.append(f"launches skipped for budget in pool(s) {', '.join(pools)}")
    if not reached:
        return []
    summary = "budget limit reached: " + "; ".join(reached)
    return [Condition(BUDGET, BUDGET, "warning", summary, {"pools": ",".join(pools)})]


class _Sender:
    """One background thread POSTing queued notices, with retries and backoff. Started on the first notice."""

    def __init__(self, queue_size: int) -> None:
        self._queue: queue.Queue[Notice | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.stats = SenderStats()

    def submit(self, notice: Notice) -> bool:
        if self._stop.is_set():
            return False
        self._ensure_started()
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self.stats.dropped += 1
            log.error(
                "alert queue full (%d waiting): dropped %s %s",
                self._queue.maxsize,
                notice.body["status"],
                notice.body["key"],
            )
            return False
        return True

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=SENDER_THREAD, daemon=True)
                self._thread.start()

    def close(self, timeout: float) -> None:
        thread = self._thread
        if thread is None:
            self._stop.set()
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        thread.join(timeout)
        self._stop.set()  # cuts a backoff wait short
        thread.join(1.0)

    def _run(self) -> None:
        with httpx.Client(follow_redirects=False) as client:
            while True:
                notice = self._queue.get()
                try:
                    if notice is None or self._stop.is_set():
                        return
                    for hook in notice.webhooks:
                        try:
                            self._post(client, hook, notice)
                        except Exception:  # never let one notice kill the sender
                            log.exception("alert webhook %s: unexpected error", hook.name)
                finally:
                    self._queue.task_done()

    def _post(self, client: httpx.Client, hook: Webhook, notice: Notice) -> None:
        settings = notice.settings
        try:
            url = read_secret(hook.url, f"the URL of alert webhook {hook.name}")
        except SecretError as exc:
            self.stats.failed += 1
            log.error("alert webhook %s not sent: %s", hook.name, exc)
            return
        what = f"{notice.body['status']} {notice.body['key']}"
        for attempt in range(1, settings.max_attempts + 1):
            self.stats.attempts += 1
            retry_after = 0.0
            try:
                answer = client.post(url, json=notice.body, timeout=settings.timeout_seconds)
            except httpx.HTTPError as exc:
                why = type(exc).__name__  # never str(exc): it may name the URL, which is a secret
            else:
                if answer.status_code < 300:
                    self.stats.delivered += 1
                    return
                why = f"HTTP {answer.status_code}"
                if answer.status_code != 429 and answer.status_code < 500:
                    self.stats.failed += 1
                    log.error("alert webhook %s refused %s: %s (not retried)", hook.name, what, why)
                    return
                retry_after = _retry_after(answer.headers.get("retry-after"))
            if attempt == settings.max_attempts:
                break
            delay = max(min(settings.backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS), retry_after)
            log.warning("alert webhook %s: %s for %s; retry %d in %.1f s", hook.name, why, what, attempt, delay)
            if self._stop.wait(delay):
                break
        self.stats.failed += 1
        log.error("alert webhook %s: gave up on %s after %d attempt(s)", hook.name, what, attempt)


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value), 0.0), MAX_BACKOFF_SECONDS) if value else 0.0
    except ValueError:
        return 0.0


def wait_idle(alerts: Alerts, timeout: float = 10.0) -> bool:
    """Wait until the sender's queue is empty and it is not mid-send (tests and shutdown)."""
    deadline = time.monotonic() + timeout
    sender = alerts._sender
    while time.monotonic() < deadline:
        if sender._queue.unfinished_tasks == 0:
            return True
        time.sleep(0.01)
    return False
