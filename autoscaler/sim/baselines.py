"""Baselines the daemon is compared against, as SimPolicy classes on the same simulated world.

- B0 "static": static peak provisioning. At t=0 it launches enough on-demand instances of the pool's
  cheapest-per-unit on-demand candidate to cover the trace's peak demand (peak arrivals per tick /
  (requests_per_unit_per_second x tick_seconds) capacity units) and keeps them for the whole run, replacing any
  that end.
- B1 "keda": a reactive on-demand autoscaler with KEDA's defaults: the queue depth is polled every 30 s,
  desired = ceil(queue depth / targets.queue_per_unit) capacity units (clamped to the pool's min/max capacity,
  KEDA's minReplicaCount/maxReplicaCount), scale-up at once, scale-down only once 300 s have passed since the
  last scale-up; the same cheapest-per-unit on-demand candidate.

Both launch and terminate through the world's simulated provider, so boot delays, stockouts and prices apply as
they do to the daemon. Neither knows the budget cap. An offering refused for capacity is skipped for the rest of
the tick (the next zone of the same instance type is tried) and retried the next tick.
"""

from __future__ import annotations

import math

from autoscaler.config import Candidate
from autoscaler.errors import CapacityError, ProviderError
from autoscaler.model import (
    TAG_DAEMON,
    TAG_INTENT,
    TAG_POOL,
    CloudState,
    LaunchRequest,
    LaunchTemplate,
    Market,
    OfferingKey,
)
from autoscaler.sim.policy import TickOutcome
from autoscaler.sim.world import BILLED, World

KEDA_POLLING_SECONDS = 30.0
KEDA_COOLDOWN_SECONDS = 300.0


def cheapest_on_demand(world: World) -> tuple[Candidate, list[OfferingKey]]:
    """The pool's on-demand candidate with the lowest price per capacity unit, and its offerings (cheapest
    first, then by zone). Raises ValueError when the pool has no on-demand candidate on offer."""
    return cheapest_candidate(world, Market.ON_DEMAND)


def cheapest_candidate(world: World, market: Market) -> tuple[Candidate, list[OfferingKey]]:
    """The pool's candidate in `market` with the lowest price per capacity unit, and its offerings (cheapest
    first, then by zone). Raises ValueError when the pool has no such candidate on offer."""
    best: tuple[float, Candidate, list[OfferingKey]] | None = None
    for cand in world.pool.candidates:
        if cand.market != market:
            continue
        keys = [
            k
            for k in world.prices
            if k.cloud == cand.cloud
            and k.instance_type == cand.instance_type
            and k.market == market
            and (cand.regions is None or k.region in cand.regions)
            and (cand.zones is None or k.zone in cand.zones)
        ]
        if not keys:
            continue
        keys.sort(key=lambda k: (world.prices[k], k.region, k.zone))
        per_unit = world.prices[keys[0]] / cand.throughput
        if best is None or per_unit < best[0]:
            best = (per_unit, cand, keys)
    if best is None:
        raise ValueError(f"pool {world.pool.name!r} has no {market} candidate on offer")
    return best[1], best[2]


class _OnDemandFleet:
    """A fleet of one on-demand candidate's instances, launched and terminated on the world's provider."""

    name = "baseline"

    def __init__(self, world: World, market: Market = Market.ON_DEMAND) -> None:
        self.world = world
        self.candidate, self.offerings = cheapest_candidate(world, market)
        self.units = self.candidate.throughput
        self.ids: list[str] = []  # live (billed) instances we launched, oldest first
        self.launches = 0
        self.capacity_errors = 0
        self._seq = 0

    def summary_counts(self) -> dict[str, int]:
        return {"launches": self.launches, "capacity_errors": self.capacity_errors}

    def _observe(self) -> int:
        """Forget instances that ended; return how many of ours are ready (running and booted)."""
        states = {i.cloud_id: i.state for i in self.world.listing()}
        self.ids = [c for c in self.ids if states.get(c) in BILLED]
        return sum(states[c] == CloudState.RUNNING for c in self.ids)

    def _try_launch(self, key: OfferingKey) -> bool:
        """Launch one instance on `key`; False when the cloud refused it (capacity errors are counted)."""
        self._seq += 1
        token = f"{self.world.policy.daemon.id}/{self.name}/{self._seq}"
        tags = {TAG_DAEMON: self.world.policy.daemon.id, TAG_POOL: self.world.pool.name, TAG_INTENT: token}
        try:
            inst = self.world.provider.launch(
                LaunchRequest(token, self.world.pool.name, key, LaunchTemplate(), tags)
            )
        except CapacityError:
            self.capacity_errors += 1
            return False
        except ProviderError:
            return False
        if inst.state not in BILLED:
            return False
        self.ids.append(inst.cloud_id)
        self.launches += 1
        return True

    def _launch(self, count: int) -> None:
        refused: set[OfferingKey] = set()
        for _ in range(count):
            for key in self.offerings:
                if key in refused:
                    continue
                if self._try_launch(key):
                    break
                refused.add(key)
            else:
                return  # every offering refused: try again next tick

    def _terminate(self, count: int) -> None:
        """Terminate `count` instances, those still booting first, then the newest."""
        if count <= 0:
            return
        states = {i.cloud_id: i.state for i in self.world.listing()}
        order = sorted(self.ids, key=lambda c: (states.get(c) == CloudState.RUNNING, -self.ids.index(c)))
        doomed = order[:count]
        self.world.provider.terminate(doomed)
        self.ids = [c for c in self.ids if c not in doomed]


class StaticPolicy(_OnDemandFleet):
    """B0: a fixed on-demand fleet sized for the trace's peak, replacing any instance that ends."""

    name = "static"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        q = world.scenario.queue
        peak = float(world.arrivals.max()) if world.arrivals.size else 0.0
        self.peak_units = peak / (q.requests_per_unit_per_second * world.tick_seconds)
        self.count = math.ceil(self.peak_units / self.units - 1e-9)
        self.desired = self.count * self.units

    def tick(self, index: int) -> TickOutcome:
        self._observe()
        if len(self.ids) < self.count:
            self._launch(self.count - len(self.ids))
        return TickOutcome(desired=self.desired, ready_units=self._observe() * self.units)


class KedaPolicy(_OnDemandFleet):
    """B1: KEDA's queue scaler with its defaults (30 s polling, 300 s cooldown), on-demand only."""

    name = "keda"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        target = world.pool.targets.queue_per_unit
        if target is None:
            raise ValueError(f"pool {world.pool.name!r} has no targets.queue_per_unit for the keda baseline")
        self.target = target
        self.count = 0  # instances wanted
        self.desired = 0.0
        self._last_poll: float | None = None
        self._last_scale_up = -math.inf

    def tick(self, index: int) -> TickOutcome:
        now = self.world.seconds()
        self._observe()
        if self._last_poll is None or now - self._last_poll >= KEDA_POLLING_SECONDS - 1e-9:
            self._last_poll = now
            pool = self.world.pool
            units = math.ceil(self.world.queue.queue_depth / self.target - 1e-9)
            self.desired = min(max(float(units), pool.min_capacity), pool.max_capacity)
            wanted = math.ceil(self.desired / self.units - 1e-9)
            if wanted > self.count:
                self.count = wanted
                self._last_scale_up = now
            elif wanted < self.count and now - self._last_scale_up >= KEDA_COOLDOWN_SECONDS:
                self.count = wanted
        if len(self.ids) < self.count:
            self._launch(self.count - len(self.ids))
        elif len(self.ids) > self.count:
            self._terminate(len(self.ids) - self.count)
        return TickOutcome(desired=self.desired, ready_units=self._observe() * self.units)
