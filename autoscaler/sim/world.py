"""The simulated world of one run: a fake clock, the simulated cloud fed by the capacity traces, the queue model.

The cloud is `providers.simulated.SimulatedProvider`, unchanged. The world adds what the scenario says and the
provider does not model: capacity that follows a trace (its `set_capacity` rule per offering, set every tick;
live spot instances beyond the new count are preempted, newest first), on-demand stockout windows, and a
boot-to-ready delay per offering drawn from a distribution (the provider boots in 0 s; the world's listing shows
an instance as pending until its own delay has passed). Every policy under comparison gets a fresh world built
from the same scenario and seed, so they see the same demand and the same capacity.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np

from autoscaler.clock import FakeClock
from autoscaler.config import Policy, SimInstanceType, SimulatedCloud
from autoscaler.model import CloudInstance, CloudState, Market, OfferingKey
from autoscaler.sim.queue import QueueModel
from autoscaler.sim.scenario import LoadedScenario
from autoscaler.sim.traces import IntArray, capacity_per_tick, load_capacity_trace
from providers.simulated import VANISH_SECONDS, SimulatedProvider

BILLED = (CloudState.PENDING, CloudState.RUNNING)
# How long the simulation's cloud remembers an ended instance after it stopped being listed.
FORGET_AFTER_VANISH = timedelta(seconds=60)


class TraceCloud(SimulatedProvider):
    """The simulated cloud, forgetting ended instances soon after they vanish from listings instead of after a
    day: the day is there so that a daemon restarting with an old token gets its instance back, which cannot
    happen in a simulation (tick names, hence tokens, never repeat). Without it every listing of a month-long
    run would walk every instance the run ever launched."""

    _next_forget: datetime | None = None  # no instance can be old enough to forget before this

    def _forget_old(self, now: datetime) -> None:
        # An instance not ended at a scan ends at or after it (a terminate, preemption or launch comes later, and
        # a pending end is in the future), so nothing can be forgotten before the earliest of the scan + horizon
        # and the ended instances' end + horizon: the scan is skipped until then.
        if self._next_forget is not None and now < self._next_forget:
            return
        horizon = timedelta(seconds=VANISH_SECONDS) + FORGET_AFTER_VANISH
        old = []
        next_forget = now + horizon
        for inst in self._instances.values():
            ended = self._observe(inst, now).ended_at
            if ended is not None:
                if now >= ended + horizon:
                    old.append(inst)
                else:
                    next_forget = min(next_forget, ended + horizon)
        for inst in old:
            del self._instances[inst.cloud_id]
            self._tokens.pop(inst.token, None)
        self._next_forget = next_forget


_NEVER = float("inf")


@dataclass(frozen=True)
class _Rule:
    """One capacity rule of the provider, driven per tick: a count (a trace) or 0/None (a stockout window)."""

    instance_type: str
    market: Market
    zone: str | None
    counts: IntArray | None  # per tick (a trace), or None for a stockout window
    start: float = 0.0
    end: float = 0.0


def sim_cloud_config(loaded: LoadedScenario) -> SimulatedCloud:
    """The policy's simulated cloud with the scenario's prices, booting in 0 s (the world adds the delays)."""
    sim = loaded.policy.policy.clouds.simulated
    assert sim is not None  # checked when the scenario was loaded
    types = dict(sim.instance_types)
    for name, price in loaded.scenario.prices.items():
        gpus = types[name].gpus if name in types else 1
        types[name] = SimInstanceType(
            gpus=gpus,
            on_demand_usd_per_hour=price.on_demand_usd_per_hour,
            spot_usd_per_hour=price.spot_usd_per_hour,
        )
    return sim.model_copy(update={"instance_types": types, "boot_seconds": 0.0})


def sim_policy(loaded: LoadedScenario) -> Policy:
    """The scenario's policy narrowed to its one simulated pool, with the scenario's prices."""
    policy = loaded.policy.policy
    name = loaded.scenario.pool or policy.pools[0].name
    pool = policy.pool(name)
    assert pool is not None
    clouds = policy.clouds.model_copy(update={"simulated": sim_cloud_config(loaded)})
    return policy.model_copy(update={"pools": [pool], "clouds": clouds})


class World:
    def __init__(self, loaded: LoadedScenario, arrivals: IntArray, tick_seconds: float, ticks: int) -> None:
        sc = loaded.scenario
        self.scenario = sc
        self.policy = sim_policy(loaded)
        self.pool = self.policy.pools[0]
        self.tick_seconds = tick_seconds
        self.ticks = ticks
        self.arrivals = arrivals
        self.clock = FakeClock(sc.start)
        self.start = sc.start
        cfg = self.policy.clouds.simulated
        assert cfg is not None
        self.cloud_config = cfg
        self.default_boot = loaded.policy.policy.clouds.simulated.boot_seconds  # type: ignore[union-attr]
        self.provider = TraceCloud(cfg, self.clock, self.policy.daemon.id)
        self.prices: dict[OfferingKey, float] = {o.key: o.price_usd_per_hour for o in self.provider.offerings()}
        self.zones = sorted({k.zone for k in self.prices})
        slo = sc.queue.latency_slo_seconds or self.pool.targets.latency_slo_seconds
        assert slo is not None
        self.queue = QueueModel(
            tick_seconds=tick_seconds,
            requests_per_unit_per_second=sc.queue.requests_per_unit_per_second,
            service_seconds=sc.queue.service_seconds,
            timeout_seconds=sc.queue.timeout_seconds,
            latency_slo_seconds=slo,
        )
        self.rng = np.random.default_rng(sc.seed)
        self.rules: list[_Rule] = []
        for cap in sc.capacity:
            gap, data = load_capacity_trace(loaded.path(cap.file))
            counts = capacity_per_tick(
                gap,
                data,
                tick_seconds=tick_seconds,
                ticks=ticks,
                offset_seconds=cap.offset_seconds,
                gap_override=cap.gap_seconds,
            )
            self.rules.append(_Rule(cap.instance_type, cap.market, cap.zone, counts))
        for so in sc.stockouts:
            self.rules.append(_Rule(so.instance_type, so.market, so.zone, None, so.start_seconds, so.end_seconds))
        self._rule_values: dict[tuple[str, Market, str | None], int | None] = {}
        self._ready_at: dict[str, float] = {}  # cloud_id -> seconds since start when it is ready
        self.preemptions = 0
        self._listing: tuple[CloudInstance, ...] = ()
        self._calls_seen = -1
        # A cloud that preempts spot on its own schedule changes its listing with time alone.
        self._time_driven = cfg.preempt_spot_after_seconds is not None

    # ------------------------------------------------------------ time

    def seconds(self) -> float:
        return (self.clock.now() - self.start).total_seconds()

    def advance(self) -> None:
        self.clock.advance(self.tick_seconds)

    # ------------------------------------------------------------ capacity

    def apply_capacity(self, index: int) -> int:
        """Set this tick's capacity rules; preempt the live spot instances over a trace's count. Returns the
        number of preemptions."""
        t = index * self.tick_seconds
        wanted: dict[tuple[str, Market, str | None], int | None] = {}
        for rule in self.rules:
            key = (rule.instance_type, rule.market, rule.zone)
            if rule.counts is not None:
                wanted[key] = int(rule.counts[index])
            elif rule.start <= t < rule.end:
                wanted[key] = 0  # a stockout window beats a trace on the same offering
            else:
                wanted.setdefault(key, None)
        # The cloud refuses launches beyond a rule's count, so live instances can exceed it only when it drops.
        dropped: list[tuple[tuple[str, Market, str | None], int]] = []
        for key, value in wanted.items():
            before = self._rule_values.get(key, "unset")
            if before != value:
                self.provider.set_capacity(key[0], key[1], key[2], value)
                self._rule_values[key] = value
                if value is not None:
                    dropped.append((key, value))
        preempted = 0
        over = dropped
        if over:
            live: dict[OfferingKey, list[CloudInstance]] = {}
            for inst in self.listing():
                if inst.state in BILLED:
                    live.setdefault(inst.offering, []).append(inst)
            for (itype, market, zone), available in over:
                for offering, instances in live.items():
                    if (offering.instance_type, offering.market) != (itype, market) or zone not in (
                        None,
                        offering.zone,
                    ):
                        continue
                    excess = len(instances) - available
                    # Newest first: the listing is sorted by launch time.
                    for inst in instances[::-1][: max(excess, 0)]:
                        if offering.market == Market.SPOT:
                            self.provider.preempt(inst.cloud_id)
                            preempted += 1
        self.preemptions += preempted
        return preempted

    # ------------------------------------------------------------ what the policies see

    def _boot_seconds(self, key: OfferingKey) -> float:
        for rule in self.scenario.boot:
            if rule.matches(key.instance_type, key.market, key.zone):
                if rule.fixed is not None:
                    return rule.fixed
                if rule.uniform is not None:
                    return float(self.rng.uniform(rule.uniform[0], rule.uniform[1]))
                assert rule.lognormal_median is not None
                return float(rule.lognormal_median * np.exp(self.rng.normal(0.0, rule.lognormal_sigma)))
        return self.default_boot

    def listing(self) -> tuple[CloudInstance, ...]:
        """The cloud's listing, with instances that have not finished booting shown as pending.

        The provider is listed again only when the listing can have changed: after a launch, terminate or
        preemption, or while an instance is stopping or terminated (those move on with time). Otherwise the same
        tuple is returned, re-derived only while an instance is still booting."""
        calls = self.provider.calls["launch"] + self.provider.calls["terminate"] + self.preemptions
        now_s = self.seconds()
        if now_s == self._listed_at and calls == self._calls_seen:
            return self._listing
        if calls != self._calls_seen or self._raw_moving or self._time_driven:
            self._raw = tuple(self.provider.list_instances())
            self._raw_moving = any(i.state not in BILLED for i in self._raw)
            self._calls_seen = calls
            self._booting_until = -1.0  # force the derivation below
        # Derived again when the raw listing changed (-1) or when a booting instance's ready time has come (the
        # derivation of an unchanged raw listing changes only then).
        if self._booting_until == -1.0 or now_s >= self._next_ready:
            out = []
            next_ready = _NEVER
            for inst in self._raw:
                ready_at = self._ready_at.get(inst.cloud_id)
                if ready_at is None:
                    launched = (inst.launched_at - self.start).total_seconds()
                    ready_at = self._ready_at[inst.cloud_id] = launched + self._boot_seconds(inst.offering)
                if inst.state == CloudState.RUNNING and now_s < ready_at:
                    inst = replace(inst, state=CloudState.PENDING)
                    next_ready = min(next_ready, ready_at)
                out.append(inst)
            self._listing = tuple(out)
            self._booting_until = 0.0
            self._next_ready = next_ready
        self._listed_at = now_s
        return self._listing

    _listed_at = -1.0
    _raw: tuple[CloudInstance, ...] = ()
    _raw_moving = True
    _booting_until = -1.0  # -1: the raw listing changed since the last derivation
    _next_ready = _NEVER  # the earliest ready time of an instance shown as pending in the derived listing

    def billed(self) -> tuple[float, Counter[str]]:
        """(spend rate in $/h, instances by cloud/market) of what the cloud holds now, booting included."""
        listing = self.listing()
        if self._billed is not None and self._billed[0] is listing:
            return self._billed[1]
        spend = 0.0
        counts: Counter[str] = Counter()
        for inst in listing:
            if inst.state in BILLED:
                spend += self.prices.get(inst.offering, 0.0)
                counts[f"{inst.offering.cloud}_{inst.offering.market}"] += 1
        self._billed = (listing, (spend, counts))
        return spend, counts

    _billed: tuple[tuple[CloudInstance, ...], tuple[float, Counter[str]]] | None = None
