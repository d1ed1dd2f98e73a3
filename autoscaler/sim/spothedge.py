"""B2 "spothedge": SpotHedge, the policy of SkyServe (EuroSys'25), as a SimPolicy on the simulated world.

- Target N: like B1 "keda", ceil(queue depth / targets.queue_per_unit) capacity units (polled every 30 s,
  clamped to the pool's min/max capacity, scale-down only 300 s after the last scale-up), converted to
  instances of the pool's cheapest-per-unit spot candidate.
- Spread spot placement with one spare: it keeps N + 1 spot replicas (booting included), each new one on the
  next zone, round-robin, of that candidate's zones that have not preempted one of its replicas in the last
  10 minutes (all of its zones when every zone has). A zone refusing for capacity is skipped for the tick.
- Dynamic on-demand fallback: while fewer than N spot replicas are ready, it keeps enough on-demand replicas
  of the cheapest-per-unit on-demand candidate to cover the gap, and terminates them as spot replicas become
  ready again (booting ones first).

Launches and terminations go through the world's simulated provider (the baselines' fleet code).
"""

from __future__ import annotations

import math

from autoscaler.model import CloudState, Market, OfferingKey
from autoscaler.sim.baselines import KEDA_COOLDOWN_SECONDS, KEDA_POLLING_SECONDS, _OnDemandFleet
from autoscaler.sim.policy import TickOutcome
from autoscaler.sim.world import BILLED, World

PREEMPTION_MEMORY_SECONDS = 600.0
SPARE_SPOT_REPLICAS = 1


class _SpotFleet(_OnDemandFleet):
    """The spot replicas: placed round-robin over the zones that have not preempted lately."""

    name = "spothedge-spot"

    def __init__(self, world: World) -> None:
        super().__init__(world, Market.SPOT)
        by_zone: dict[str, OfferingKey] = {}
        for key in self.offerings:  # cheapest first: keep each zone's cheapest offering
            by_zone.setdefault(key.zone, key)
        self.zones = sorted(by_zone)
        self.by_zone = by_zone
        self.zone_of: dict[str, str] = {}  # cloud_id -> zone
        self.preempted_at: dict[str, float] = {}  # zone -> last preemption (world seconds)
        self._next = 0

    def observe_preemptions(self, now: float) -> int:
        """Forget ended instances, remembering the zones of those we did not terminate; return the ready count."""
        before = list(self.ids)
        ready = self._observe()
        alive = set(self.ids)
        for cloud_id in before:
            if cloud_id not in alive:
                self.preempted_at[self.zone_of.pop(cloud_id)] = now
        return ready

    def active_zones(self, now: float) -> list[str]:
        fresh = [z for z in self.zones if now - self.preempted_at.get(z, -math.inf) >= PREEMPTION_MEMORY_SECONDS]
        return fresh or list(self.zones)

    def launch_spread(self, count: int, now: float) -> None:
        zones = self.active_zones(now)
        refused: set[str] = set()
        for _ in range(count):
            for _attempt in range(len(zones)):
                zone = zones[self._next % len(zones)]
                self._next += 1
                if zone in refused:
                    continue
                if self._try_launch(self.by_zone[zone]):
                    self.zone_of[self.ids[-1]] = zone
                    break
                refused.add(zone)
            else:
                return  # every zone refused: try again next tick

    def terminate(self, count: int) -> None:
        self._terminate(count)
        alive = set(self.ids)
        self.zone_of = {c: z for c, z in self.zone_of.items() if c in alive}


class _FallbackFleet(_OnDemandFleet):
    name = "spothedge-od"


class SpotHedgePolicy:
    """B2: SpotHedge (N + 1 spot replicas spread over zones, on-demand covering ready spot below N)."""

    name = "spothedge"

    def __init__(self, world: World) -> None:
        target = world.pool.targets.queue_per_unit
        if target is None:
            raise ValueError(f"pool {world.pool.name!r} has no targets.queue_per_unit for the spothedge baseline")
        self.world = world
        self.target = target
        self.spot = _SpotFleet(world)
        self.od = _FallbackFleet(world)
        self.n = 0  # spot replicas wanted, before the spare
        self.desired = 0.0
        self._last_poll: float | None = None
        self._last_scale_up = -math.inf

    def summary_counts(self) -> dict[str, int]:
        a, b = self.spot.summary_counts(), self.od.summary_counts()
        return {k: a[k] + b[k] for k in a}

    def _poll(self, now: float) -> None:
        if self._last_poll is not None and now - self._last_poll < KEDA_POLLING_SECONDS - 1e-9:
            return
        self._last_poll = now
        pool = self.world.pool
        units = math.ceil(self.world.queue.queue_depth / self.target - 1e-9)
        self.desired = min(max(float(units), pool.min_capacity), pool.max_capacity)
        wanted = math.ceil(self.desired / self.spot.units - 1e-9)
        if wanted > self.n:
            self.n = wanted
            self._last_scale_up = now
        elif wanted < self.n and now - self._last_scale_up >= KEDA_COOLDOWN_SECONDS:
            self.n = wanted

    def tick(self, index: int) -> TickOutcome:
        now = self.world.seconds()
        ready_spot = self.spot.observe_preemptions(now)
        self.od._observe()
        self._poll(now)
        spot_target = self.n + SPARE_SPOT_REPLICAS if self.n > 0 else 0
        if len(self.spot.ids) < spot_target:
            self.spot.launch_spread(spot_target - len(self.spot.ids), now)
        elif len(self.spot.ids) > spot_target:
            self.spot.terminate(len(self.spot.ids) - spot_target)
        ready_spot = self._ready(self.spot)
        gap_units = max(0, self.n - ready_spot) * self.spot.units
        od_target = math.ceil(gap_units / self.od.units - 1e-9)
        if len(self.od.ids) < od_target:
            self.od._launch(od_target - len(self.od.ids))
        elif len(self.od.ids) > od_target:
            self.od._terminate(len(self.od.ids) - od_target)
        ready_units = self.spot._observe() * self.spot.units + self.od._observe() * self.od.units
        return TickOutcome(desired=self.desired, ready_units=ready_units)

    def _ready(self, fleet: _OnDemandFleet) -> int:
        states = {i.cloud_id: i.state for i in self.world.listing()}
        return sum(states.get(c) == CloudState.RUNNING for c in fleet.ids if states.get(c) in BILLED)
