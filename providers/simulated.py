"""The simulated cloud: the embedded default cloud of `gpu-autoscaler run`, and the fake every core test uses.

It behaves like EC2 where the daemon can tell the difference: launches are idempotent on the token (ClientToken),
instances boot (PENDING -> RUNNING after `boot_seconds`), a terminated instance shows as STOPPING for a few
seconds and stays listed as TERMINATED for a minute before it vanishes, spot instances get preempted, stockouts
and quota limits raise the typed errors with EC2's error codes. Every state is computed lazily from the injected
clock at the moment it is read, so a FakeClock drives the whole cloud without a background thread.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from autoscaler import config
from autoscaler.errors import AuthError, CapacityError, ConfigError, ProviderError, QuotaError, TransientError
from autoscaler.interfaces import Clock
from autoscaler.model import (
    TAG_DAEMON,
    CloudInstance,
    CloudState,
    LaunchRequest,
    Market,
    Offering,
    OfferingKey,
    Scope,
)
from providers import BuildContext, _simstate
from providers._simstate import SimInstance

FaultKind = Literal["capacity", "quota", "transient", "auth", "config"]
CallName = Literal["offerings", "list_instances", "launch", "terminate"]

CLOUD = "simulated"
TERMINATE_SECONDS = 5.0  # STOPPING -> TERMINATED after terminate()
VANISH_SECONDS = 60.0  # a TERMINATED instance stays listed this long, like EC2
FORGET_SECONDS = 24 * 3600.0  # after vanishing, its token is forgotten too (keeps the state file bounded)
PREEMPT_REASON = "Server.SpotInstanceTermination: preempted"
TERMINATE_REASON = "Client.UserInitiatedShutdown: User initiated shutdown"


@dataclass
class _Fault:
    error: FaultKind
    instance_type: str | None
    zone: str | None
    market: Market | None
    remaining: int

    def matches(self, key: OfferingKey) -> bool:
        return (
            self.instance_type in (None, key.instance_type)
            and self.zone in (None, key.zone)
            and self.market in (None, key.market)
        )


@dataclass(frozen=True)
class _Observed:
    state: CloudState
    reason: str
    ended_at: datetime | None  # when it became TERMINATED


class SimulatedProvider:
    """An in-memory cloud (optionally persisted to `state_file`). Thread-safe: one lock guards every table."""

    name = CLOUD

    def __init__(
        self, cfg: config.SimulatedCloud, clock: Clock, daemon_id: str, *, state_file: Path | None = None
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.daemon_id = daemon_id
        self.state_file = state_file
        # Calls per Provider method name (offerings, list_instances, launch, terminate), for tests.
        # Test hook: called after the cloud recorded a new instance, before launch() returns. A test makes it
        # raise to model a crash between "the cloud accepted" and "we heard the answer".
        self.after_accept: Callable[[CloudInstance], None] | None = None
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._capacity: list[config.SimCapacity] = list(cfg.capacity)
        self._faults = [_Fault(f.error, f.instance_type, f.zone, f.market, f.times) for f in cfg.faults]
        self._call_errors: list[tuple[CallName, ProviderError]] = []
        self._instances: dict[str, SimInstance] = {}
        self._tokens: dict[str, str] = {}
        self._next_id = 1
        if state_file is not None:
            loaded = _simstate.load(state_file)
            if loaded is not None:
                self._next_id, instances = loaded
                self._instances = {i.cloud_id: i for i in instances}
                self._tokens = {i.token: i.cloud_id for i in instances}

    # ------------------------------------------------------------ the Provider protocol

    def offerings(self) -> Sequence[Offering]:
        with self._lock:
            self.calls["offerings"] += 1
            self._raise_call_error("offerings")
        now = self.clock.now()
        out: list[Offering] = []
        for region in sorted(self.cfg.regions):
            for zone in self._zones(region):
                for itype, spec in sorted(self.cfg.instance_types.items()):
                    prices = [(Market.ON_DEMAND, spec.on_demand_usd_per_hour)]
                    if spec.spot_usd_per_hour is not None:
                        prices.append((Market.SPOT, spec.spot_usd_per_hour))
                    for market, price in prices:
                        key = OfferingKey(CLOUD, region, zone, itype, market)
                        out.append(Offering(key, price, spec.gpus, price_observed_at=now, price_source=CLOUD))
        return out

    def list_instances(self) -> Sequence[CloudInstance]:
        with self._lock:
            self.calls["list_instances"] += 1
            self._raise_call_error("list_instances")
            now = self.clock.now()
            self._forget_old(now)
            out = []
            for inst in self._instances.values():
                if inst.tags.get(TAG_DAEMON) != self.daemon_id:
                    continue
                seen = self._observe(inst, now)
                if seen.ended_at is not None and now >= seen.ended_at + timedelta(seconds=VANISH_SECONDS):
                    continue
                out.append(self._view(inst, seen))
        return sorted(out, key=lambda i: (i.launched_at, i.cloud_id))

    def launch(self, req: LaunchRequest) -> CloudInstance:
        with self._lock:
            self.calls["launch"] += 1
            self._raise_call_error("launch")  # before the token lookup: a throttled call reaches nothing
            now = self.clock.now()
            existing = self._tokens.get(req.token)
            if existing is not None:
                # Like EC2's ClientToken: a retry returns what the first call made, whatever changed since.
                inst = self._instances[existing]
                if inst.key != req.offering:
                    raise ConfigError(
                        f"token {req.token!r} was used for {inst.key}, not {req.offering}",
                        code="IdempotentParameterMismatch",
                    )
                return self._view(inst, self._observe(inst, now))
            self._validate(req)
            self._raise_fault(req.offering)
            self._check_capacity(req.offering, now)
            inst = SimInstance(
                cloud_id=f"sim-{self._next_id:06d}",
                key=req.offering,
                tags={**req.template.tags, **req.tags},
                token=req.token,
                launched_at=now,
            )
            self._next_id += 1
            self._instances[inst.cloud_id] = inst
            self._tokens[req.token] = inst.cloud_id
            self._save()
            accepted = self._view(inst, self._observe(inst, now))
        # Outside the lock: the hook may call back into the provider.
        if self.after_accept is not None:
            self.after_accept(accepted)
        return accepted

    def terminate(self, cloud_ids: Sequence[str]) -> None:
        with self._lock:
            self.calls["terminate"] += 1
            self._raise_call_error("terminate")
            now = self.clock.now()
            changed = False
            for cloud_id in cloud_ids:
                inst = self._instances.get(cloud_id)
                if inst is None or inst.terminate_requested_at is not None:
                    continue  # unknown, gone, or already on its way out: success, like EC2
                if self._observe(inst, now).state == CloudState.TERMINATED:
                    continue
                inst.terminate_requested_at = now
                changed = True
            if changed:
                self._save()

    # ------------------------------------------------------------ test and operator hooks

    def set_capacity(
        self, instance_type: str, market: Market | None = None, zone: str | None = None, available: int | None = 0
    ) -> None:
        """Replace the capacity rule for exactly (instance_type, market, zone); `available=None` removes it."""
        with self._lock:
            self._capacity = [
                r for r in self._capacity if (r.instance_type, r.market, r.zone) != (instance_type, market, zone)
            ]
            if available is not None:
                rule = config.SimCapacity(
                    instance_type=instance_type, market=market, zone=zone, available=available
                )
                self._capacity.append(rule)

    def inject_fault(
        self,
        error: FaultKind,
        *,
        instance_type: str | None = None,
        zone: str | None = None,
        market: Market | None = None,
        times: int = 1,
    ) -> None:
        """The next `times` launches matching the filters (None = any) raise the typed error for `error`."""
        with self._lock:
            self._faults.append(_Fault(error, instance_type, zone, market, times))

    def inject_call_error(self, call: CallName, error: ProviderError, times: int = 1) -> None:
        """The next `times` calls of that method raise `error` before doing anything (an outage, throttling).
        Unlike inject_fault it hits every call, retries of a known token included."""
        with self._lock:
            self._call_errors.extend([(call, error)] * times)

    def preempt(self, cloud_id: str) -> None:
        """Take the instance back now, as a spot reclaim would. Raises KeyError for an id the cloud never had."""
        with self._lock:
            inst = self._instances[cloud_id]
            seen = self._observe(inst, self.clock.now())
            if seen.state in (CloudState.PENDING, CloudState.RUNNING):
                inst.preempted_at = self.clock.now()
                self._save()

    def all_instances(self) -> list[CloudInstance]:
        """Every instance the cloud holds, whoever launched it, vanished ones included (for tests and the CLI)."""
        with self._lock:
            now = self.clock.now()
            return [self._view(i, self._observe(i, now)) for i in self._instances.values()]

    # ------------------------------------------------------------ internals (called with the lock held)

    def _zones(self, region: str) -> list[str]:
        # An empty zone list means "every zone of the region"; the simulated region then has one zone.
        return sorted(self.cfg.regions.get(region) or [f"{region}-a"])

    def _observe(self, inst: SimInstance, now: datetime) -> _Observed:
        running_at = inst.launched_at + timedelta(seconds=self.cfg.boot_seconds)
        reclaims = [inst.preempted_at] if inst.preempted_at is not None else []
        if inst.key.market == Market.SPOT and self.cfg.preempt_spot_after_seconds is not None:
            reclaims.append(running_at + timedelta(seconds=self.cfg.preempt_spot_after_seconds))
        reclaim_at = min(reclaims) if reclaims else None
        asked = inst.terminate_requested_at
        if asked is not None and (reclaim_at is None or asked < reclaim_at):
            done = asked + timedelta(seconds=TERMINATE_SECONDS)
            if now >= done:
                return _Observed(CloudState.TERMINATED, TERMINATE_REASON, done)
            return _Observed(CloudState.STOPPING, TERMINATE_REASON, None)
        if reclaim_at is not None and now >= reclaim_at:
            return _Observed(CloudState.TERMINATED, PREEMPT_REASON, reclaim_at)
        if now >= running_at:
            return _Observed(CloudState.RUNNING, "", None)
        return _Observed(CloudState.PENDING, "", None)

    @staticmethod
    def _view(inst: SimInstance, seen: _Observed) -> CloudInstance:
        return CloudInstance(
            cloud_id=inst.cloud_id,
            offering=inst.key,
            state=seen.state,
            launched_at=inst.launched_at,
            tags=dict(inst.tags),
            state_reason=seen.reason,
            address=address_of(inst.cloud_id),
        )

    def _validate(self, req: LaunchRequest) -> None:
        key = req.offering
        if not req.token:
            raise ConfigError("a launch needs a token", code="MissingParameter")
        if TAG_DAEMON not in req.tags:
            raise ConfigError(f"a launch must carry the {TAG_DAEMON} tag", code="MissingParameter")
        if key.cloud != CLOUD:
            raise ConfigError(f"{key} is not an offering of the simulated cloud", code="InvalidParameterValue")
        spec = self.cfg.instance_types.get(key.instance_type)
        if spec is None:
            raise ConfigError(f"unknown instance type {key.instance_type!r}", code="InvalidInstanceType")
        if key.region not in self.cfg.regions or key.zone not in self._zones(key.region):
            raise ConfigError(
                f"unknown zone {key.zone!r} in region {key.region!r}", code="InvalidAvailabilityZone"
            )
        if key.market == Market.SPOT and spec.spot_usd_per_hour is None:
            raise ConfigError(f"{key.instance_type} is not offered as spot", code="Unsupported")

    def _raise_fault(self, key: OfferingKey) -> None:
        fault = next((f for f in self._faults if f.matches(key)), None)
        if fault is None:
            return
        fault.remaining -= 1
        if fault.remaining <= 0:
            self._faults.remove(fault)
        raise _fault_error(fault.error, key)

    def _raise_call_error(self, call: CallName) -> None:
        for i, (name, error) in enumerate(self._call_errors):
            if name == call:
                del self._call_errors[i]
                raise error

    def _available(self, key: OfferingKey) -> int | None:
        """The most specific matching rule wins (zone beats market beats type-only); later rules break ties."""
        best: config.SimCapacity | None = None
        best_rank = -1
        for rule in self._capacity:
            if rule.instance_type != key.instance_type or rule.market not in (None, key.market):
                continue
            if rule.zone not in (None, key.zone):
                continue
            rank = 2 * (rule.zone is not None) + (rule.market is not None)
            if rank >= best_rank:
                best, best_rank = rule, rank
        return None if best is None else best.available

    def _check_capacity(self, key: OfferingKey, now: datetime) -> None:
        available = self._available(key)
        if available is None:
            return
        # Capacity is the cloud's, not ours: every daemon's instances count, STOPPING ones still hold hardware.
        live = sum(
            1
            for i in self._instances.values()
            if i.key == key and self._observe(i, now).state != CloudState.TERMINATED
        )
        if live >= available:
            raise CapacityError(
                f"insufficient capacity for {key.instance_type} ({key.market}) in {key.zone}",
                scope=Scope.ZONE,
                code="InsufficientInstanceCapacity",
            )

    def _forget_old(self, now: datetime) -> None:
        horizon = timedelta(seconds=VANISH_SECONDS + FORGET_SECONDS)
        old = []
        for inst in self._instances.values():
            ended = self._observe(inst, now).ended_at
            if ended is not None and now >= ended + horizon:
                old.append(inst)
        for inst in old:
            del self._instances[inst.cloud_id]
            self._tokens.pop(inst.token, None)
        if old:
            self._save()

    def _save(self) -> None:
        if self.state_file is not None:
            _simstate.save(self.state_file, self._next_id, list(self._instances.values()))


def address_of(cloud_id: str) -> str | None:
    """The simulated instance's private address: a loopback address derived from its number (sim-000001 ->
    127.0.0.2, sim-000002 -> 127.0.0.3, ...), so a test can stand a local server in for an instance (Linux
    routes all of 127.0.0.0/8 to lo)."""
    number = cloud_id.removeprefix("sim-")
    if not number.isdigit() or not 0 < int(number) < 2**24 - 2:
        return None
    value = _LOOPBACK_BASE + int(number)  # dotted quad by hand: ipaddress costs ~10 us a listing row
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


_LOOPBACK_BASE = 0x7F000001  # 127.0.0.1


def _fault_error(kind: FaultKind, key: OfferingKey) -> ProviderError:
    what = f"{key.instance_type} ({key.market})"
    if kind == "capacity":
        return CapacityError(
            f"insufficient capacity for {what} in {key.zone}",
            scope=Scope.ZONE,
            code="InsufficientInstanceCapacity",
        )
    if kind == "quota":
        code = "MaxSpotInstanceCountExceeded" if key.market == Market.SPOT else "VcpuLimitExceeded"
        return QuotaError(f"quota exceeded for {what} in {key.region}", scope=Scope.REGION, code=code)
    if kind == "transient":
        return TransientError("request limit exceeded", code="RequestLimitExceeded")
    if kind == "auth":
        return AuthError("the credentials were refused", code="AuthFailure")
    return ConfigError(f"invalid launch parameters for {what}", code="InvalidParameterValue")


def build(cfg: config.CloudBase, ctx: BuildContext) -> SimulatedProvider:
    """The factory `providers.build_providers` calls; the fake cloud persists under `state_dir` when given."""
    if not isinstance(cfg, config.SimulatedCloud):
        raise TypeError(f"expected SimulatedCloud settings, got {type(cfg).__name__}")
    state_dir = ctx.state_dir
    state_file = state_dir / f"simulated-cloud-{ctx.daemon_id}.json" if state_dir is not None else None
    return SimulatedProvider(cfg, ctx.clock, ctx.daemon_id, state_file=state_file)
