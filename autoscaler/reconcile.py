"""reconcile(snapshot, policy) -> Plan: the whole decision of one tick, as data. Pure.

No clock reads (time is `snapshot.now`), no I/O, no randomness: launch tokens are derived from the snapshot's
tick name, so replaying a saved snapshot gives the same Plan. Two halves, as in Ray's autoscaler v2:

- passive (`observe`): what the clouds and health checks say happened to our instances;
- active (here): per pool, how much capacity is needed (policies.scaling), where to put more
  (policies.placement) and what to remove (policies.disruption), within the global limits and budget.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache

from autoscaler import capacity
from autoscaler.config import Limits, Policy, Pool, PoolLimits
from autoscaler.lifecycle import InstanceState
from autoscaler.model import (
    Block,
    BootStats,
    CapacityEvent,
    Demand,
    InstanceRecord,
    Intent,
    Launch,
    Market,
    Offering,
    OfferingKey,
    Plan,
    PoolControl,
    PoolDecision,
    Preemption,
    ScalingState,
    Skipped,
    Snapshot,
    Terminate,
    Transition,
)
from autoscaler.observe import Untracked, observe
from policies.boot import lead_seconds
from policies.disruption import choose_removals
from policies.limits import WorstPrices, charge, left_under, tighter
from policies.placement import Budget, matches, place
from policies.scaling import desired_capacity

S = InstanceState
_TOKEN_NAMESPACE = uuid.UUID("5b0f4f43-7a43-4c55-9d6b-1f9b8c0e2a61")
_GOING = frozenset({S.DRAINING, S.TERMINATING})
_NO_POOL_LIMITS = PoolLimits()


@lru_cache(maxsize=64)
def _span(seconds: float) -> timedelta:
    """timedelta(seconds=...) of a setting, built once (every tick asks for the same few)."""
    return timedelta(seconds=seconds)


def launch_token(tick: str, pool: str, index: int) -> str:
    """A UUID (GCE's requestId must be one; EC2's ClientToken and Azure VM names accept it) fixed by the tick."""
    return str(uuid.uuid5(_TOKEN_NAMESPACE, f"{tick}/{pool}/{index}"))


def budget_left(limits: Limits, fleet: Iterable[InstanceRecord], worst: WorstPrices | None = None) -> Budget:
    """What the global limits leave after `fleet` (booting included), each instance at its worst price."""
    return left_under(limits, fleet, worst or WorstPrices(Policy(), ()))


def provisional_blocks(blocks: Sequence[Block], events: Sequence[CapacityEvent], now: datetime) -> list[Block]:
    """The blocks as they will be once this tick's events are recorded, so placement already avoids them."""
    by_key = {capacity.block_key(b): b for b in blocks}
    for ev in events:
        key = capacity.scope_key(ev.offering, ev.scope)
        by_key[key] = capacity.record_failure(by_key.get(key), ev, now)
    return list(by_key.values())


def reconcile(snapshot: Snapshot, policy: Policy) -> Plan:
    now = snapshot.now
    obs = observe(snapshot, policy, _span(policy.daemon.launch_retry_seconds))
    intents: list[Intent] = list(obs.intents)
    fleet = obs.fleet
    blocks = provisional_blocks(snapshot.blocks, obs.events, now)
    worst = WorstPrices(policy, snapshot.offerings)
    budget = budget_left(policy.daemon.limits, fleet.values(), worst)

    pool_names = {p.name for p in policy.pools}
    for rec in fleet.values():
        # Draining ones too: their pool will not come back to finish the drain. (Records of removed pools that
        # have no cloud id yet were cancelled by observe.)
        if rec.pool not in pool_names and rec.state != S.TERMINATING and rec.cloud_id:
            intents.append(
                Terminate(rec.token, rec.pool, rec.offering.cloud, rec.cloud_id, "pool removed from policy")
            )

    # Each pool looks only at the offerings of its candidates: grouped once here, not scanned once per pool.
    offerings_by_kind: dict[tuple[str, str, str], list[Offering]] = defaultdict(list)
    for offering in snapshot.offerings:
        k = offering.key
        offerings_by_kind[(k.cloud, k.instance_type, k.market)].append(offering)
    blocks_by_kind: dict[tuple[str, str, str], list[Block]] = defaultdict(list)
    for block in blocks:
        blocks_by_kind[(block.cloud, block.instance_type, block.market)].append(block)
    by_pool: dict[str, list[InstanceRecord]] = defaultdict(list)
    for rec in fleet.values():
        by_pool[rec.pool].append(rec)
    decisions: dict[str, PoolDecision] = {}
    states: dict[str, ScalingState] = {}
    for pool in policy.pools:
        members = by_pool.get(pool.name, [])
        ctx = _PoolTick(
            pool=pool,
            now=now,
            tick=snapshot.tick,
            members=members,
            demand=snapshot.demand.get(pool.name, Demand(None, None)),
            state=snapshot.scaling_state.get(pool.name, ScalingState()),
            control=snapshot.controls.get(pool.name, PoolControl()),
            untracked=obs.untracked.get(pool.name, []),
            untracked_grace=_span(policy.daemon.untracked_grace_seconds),
            marks=obs.missing_since,
            worst=worst,
            boot_times=snapshot.boot_times,
            preemptions=snapshot.preemptions,
        )
        kinds = dict.fromkeys((c.cloud, c.instance_type, c.market) for c in pool.candidates)
        offerings = [o for kind in kinds for o in offerings_by_kind.get(kind, ())]
        pool_blocks = [b for kind in kinds for b in blocks_by_kind.get(kind, ())]
        decision, pool_intents, states[pool.name], budget = ctx.decide(offerings, pool_blocks, budget)
        decisions[pool.name] = decision
        intents.extend(pool_intents)
    return Plan(now, tuple(intents), decisions, states, tuple(obs.events), obs.missing_since)


@dataclass
class _PoolTick:
    pool: Pool
    now: datetime
    tick: str
    members: list[InstanceRecord]
    demand: Demand
    state: ScalingState
    control: PoolControl
    untracked: list[Untracked]  # tagged instances with no record that this pool could adopt, best first
    untracked_grace: timedelta
    marks: dict[str, datetime]  # the plan's missing_since: an untracked instance adopted or ended drops its mark
    worst: WorstPrices = field(default_factory=lambda: WorstPrices(Policy(), ()))  # prices the caps count
    boot_times: Mapping[OfferingKey, BootStats] = field(default_factory=dict)  # learned, per offering
    preemptions: Sequence[Preemption] = ()  # recent, every pool's
    _ranks: dict[str, int] = field(default_factory=dict, init=False, repr=False)  # _rank's, by record token

    def decide(
        self, offerings: Sequence[Offering], blocks: Sequence[Block], budget: Budget
    ) -> tuple[PoolDecision, list[Intent], ScalingState, Budget]:
        pool, now = self.pool, self.now
        intents: list[Intent] = []  # decided actions; a paused pool takes none of them
        reasons: list[str] = []
        active: list[InstanceRecord] = []
        boot_timeout = _span(pool.boot_timeout_seconds)
        for rec in self.members:
            if rec.state in _GOING:
                if rec.state == S.DRAINING and now - rec.state_since >= timedelta(seconds=pool.drain_seconds):
                    intents.append(self._terminate(rec, "drained"))
                continue
            overdue = (rec.state.booting and now - rec.created_at > boot_timeout) or (
                rec.state == S.UNHEALTHY and now - rec.state_since > boot_timeout
            )
            if overdue and rec.cloud_id:
                what = "not ready" if rec.state.booting else "unhealthy"
                intents.append(self._terminate(rec, f"{what} after {pool.boot_timeout_seconds:.0f}s: replaced"))
                continue
            active.append(rec)

        live = sum([r.capacity_units for r in active])
        ready = sum([r.capacity_units for r in active if r.state == S.READY])
        draining = sum([r.capacity_units for r in self.members if r.state == S.DRAINING])
        spend = sum([r.price_usd_per_hour for r in self.members])
        # With no memory of an earlier decision (a fresh or lost database), the instances that exist, tracked or
        # not, are the best guess of what the pool runs on: a hold on bad metrics keeps them all.
        waiting = sum([u.adopt.capacity_units for u in self.untracked])
        current = live + waiting if self.state.last_desired is None else live
        lead, lead_why = lead_seconds(pool, self.boot_times)
        result, new_state = desired_capacity(pool, self.demand, current, ready, self.state, now, lead)
        desired = result.desired
        reasons.extend(result.reasons)
        if result.signal == "rate":
            reasons.append(lead_why)
        signal = result.signal
        spare, spare_why = self._spot_spare()
        if spare > 0 and desired > 0 and desired < pool.max_capacity:
            desired = min(desired + spare, pool.max_capacity)
            reasons.append(spare_why)
        if self.control.override_capacity is not None and (
            self.control.override_until is None or self.control.override_until > now
        ):
            desired = min(self.control.override_capacity, pool.max_capacity)
            until = self.control.override_until.isoformat() if self.control.override_until else "further notice"
            reasons.append(f"operator override: {desired:g} units until {until}")
            signal = "override"
            new_state = replace(new_state, last_desired=desired)

        chosen: list[str] = []
        skipped: tuple[Skipped, ...] = ()
        if self.control.paused:
            reasons.append("paused by operator: observed only, no launches, removals or replacements")
            decision = self._decision(desired, ready, live - ready, draining, spend, reasons, signal)
            return decision, [], new_state, budget

        need = desired - live
        # The pool's own limits on top of the global ones: it may use the tighter of the two.
        global_budget = budget
        if pool.limits != _NO_POOL_LIMITS:
            budget = tighter(budget, left_under(pool.limits, self.members, self.worst))
        before = budget
        adopted, budget = self._adopt_untracked(need, budget, intents, reasons, chosen)
        need -= adopted
        live += adopted
        if need > 0:
            worst = self.worst.for_pool(pool.name, offerings)
            risk = self._zone_preemptions()
            placement = place(pool, need, offerings, blocks, self.members, budget, now, worst, risk)
            budget = placement.budget
            skipped = placement.skipped
            for i, choice in enumerate(placement.choices):
                intents.append(
                    Launch(
                        launch_token(self.tick, pool.name, i),
                        pool.name,
                        choice.offering.key,
                        choice.capacity_units,
                        choice.offering.gpus,
                        choice.offering.price_usd_per_hour,
                        choice.reason,
                    )
                )
                chosen.append(f"{choice.offering.key} ({choice.reason})")
            reasons.append(f"need {need:g} more units: {len(placement.choices)} launch(es)")
            if placement.shortfall > 0:
                reasons.append(f"{placement.shortfall:g} units could not be placed (see skipped offerings)")
        else:
            budget = self._rebalance(need, active, offerings, blocks, budget, intents, reasons, chosen)
        if need < 0:
            # Replacements on their way (better-ranked instances booting while worse-ranked ones serve) are kept:
            # the worse-ranked ones go once they are ready (then they are the most expensive per unit).
            protected = self._replacements(active)
            held = sum(r.capacity_units for r in protected)
            removable = [r for r in active if r.cloud_id and r not in protected]
            if held:
                reasons.append(f"{held:g} units of better-ranked replacements booting: kept")
            for removal in choose_removals(removable, -need - held):
                rec = removal.record
                if rec.state in (S.READY, S.UNHEALTHY, S.RUNNING) and pool.drain_seconds > 0:
                    intents.append(Transition(rec.token, S.DRAINING, removal.reason, observed=False))
                else:
                    intents.append(self._terminate(rec, removal.reason))
                chosen.append(f"remove {rec.offering} {rec.cloud_id} ({removal.reason})")
            reasons.append(f"{-need:g} units more than needed")
        decision = self._decision(
            desired, ready, live - ready, draining, spend, reasons, signal, tuple(chosen), tuple(skipped)
        )
        budget = charge(before, budget, global_budget)
        return decision, intents, new_state, budget

    def _rank(self, rec: InstanceRecord) -> int:
        """The index of the first candidate the record's offering matches (len(candidates) when none)."""
        rank = self._ranks.get(rec.token)
        if rank is None:
            candidates = self.pool.candidates
            rank = len(candidates)
            for i, cand in enumerate(candidates):
                if matches(cand, rec.offering):
                    rank = i
                    break
            self._ranks[rec.token] = rank
        return rank

    def _replacements(self, active: Sequence[InstanceRecord]) -> list[InstanceRecord]:
        """Booting instances ranked better than some ready one: what a rebalance launched (or a scale-up that
        can stand in for a worse-ranked instance)."""
        ready = [self._rank(r) for r in active if r.state == S.READY]
        if not ready:
            return []
        worst = max(ready)
        if worst == 0:
            return []  # every ready one is on the best rank: nothing ranks better
        return [r for r in active if r.state.booting and self._rank(r) < worst]

    def _rebalance(
        self,
        need: float,
        active: Sequence[InstanceRecord],
        offerings: Sequence[Offering],
        blocks: Sequence[Block],
        budget: Budget,
        intents: list[Intent],
        reasons: list[str],
        chosen: list[str],
    ) -> Budget:
        """With capacity enough, move back to better-ranked offerings (spot after an on-demand fallback): launch
        one better-ranked, cheaper-per-unit instance in place of the worst-ranked ready one; it is removed once the
        replacement is ready (see the removal above). One at a time, within the limits."""
        if not self.pool.scaling.rebalance or self._replacements(active):
            return budget
        ready = [r for r in active if r.state == S.READY and r.cloud_id and r.capacity_units > 0]
        if not ready or max(map(self._rank, ready)) == 0:
            return budget  # (all on the best rank: the victim below would be too)
        victim = max(ready, key=lambda r: (self._rank(r), r.price_usd_per_hour / r.capacity_units))
        if self._rank(victim) == 0 or -need >= victim.capacity_units:
            return budget  # already on the best rank; or the excess removes it anyway (most expensive first)
        worst = self.worst.for_pool(self.pool.name, offerings)
        trial = place(self.pool, victim.capacity_units, offerings, blocks, self.members, budget, self.now, worst)
        if not trial.choices or len(trial.choices) != 1:
            return budget
        (choice,) = trial.choices
        per_unit = choice.offering.price_usd_per_hour / choice.capacity_units
        if choice.rank >= self._rank(victim) or per_unit >= victim.price_usd_per_hour / victim.capacity_units:
            return budget
        intents.append(
            Launch(
                launch_token(self.tick, self.pool.name, 0),
                self.pool.name,
                choice.offering.key,
                choice.capacity_units,
                choice.offering.gpus,
                choice.offering.price_usd_per_hour,
                f"rebalance: replaces {victim.offering} {victim.cloud_id} once ready; {choice.reason}",
            )
        )
        why = f"rebalance: {choice.offering.key} to replace {victim.offering} {victim.cloud_id} (better rank)"
        reasons.append(why)
        chosen.append(why)
        return trial.budget

    def _zone_preemptions(self) -> dict[tuple[str, str], int]:
        """Preemption episodes of the pool's spot offerings per (region, zone) within spare_memory_seconds."""
        since = self.now - timedelta(seconds=self.pool.scaling.spare_memory_seconds)
        spot = [c for c in self.pool.candidates if c.market == Market.SPOT]
        moments: dict[tuple[str, str], set[datetime]] = {}
        for p in self.preemptions:
            if since <= p.at <= self.now and any(matches(c, p.offering) for c in spot):
                moments.setdefault((p.offering.region, p.offering.zone), set()).add(p.at)
        return {zone: len(at) for zone, at in moments.items()}

    def _spot_spare(self) -> tuple[float, str]:
        """One spare spot instance (SpotHedge's spare replica) while the spot offerings this pool uses were
        preempted at `scaling.spare_after_preemptions` moments or more within `scaling.spare_memory_seconds`
        (capacity memory's preemption history): a preemption then costs no capacity while its replacement
        boots. None while spot is quiet, or after a single loss: spare capacity is paid for."""
        sc = self.pool.scaling
        if not sc.spot_spare or len(self.preemptions) < sc.spare_after_preemptions:
            return 0.0, ""  # (fewer preemptions than that are fewer episodes: no need to look at them)
        since = self.now - timedelta(seconds=sc.spare_memory_seconds)
        spot = [c for c in self.pool.candidates if c.market == Market.SPOT]
        recent = [
            p for p in self.preemptions if since <= p.at <= self.now and any(matches(c, p.offering) for c in spot)
        ]
        episodes = len({p.at for p in recent})  # instances taken back together are one episode
        if episodes < sc.spare_after_preemptions:
            return 0.0, ""
        units = spot[0].throughput
        return units, (
            f"spare: +{units:g} units (one {spot[0].instance_type} spot instance) after {episodes} preemption "
            f"episodes ({len(recent)} instances) of the pool's spot offerings in the last {sc.spare_memory_seconds:g}s"
        )

    def _adopt_untracked(
        self, need: float, budget: Budget, intents: list[Intent], reasons: list[str], chosen: list[str]
    ) -> tuple[float, Budget]:
        """Tagged instances with no record: adopted while the pool needs capacity (before anything new is
        launched) and the global limits allow; the others are held, then terminated once seen untracked for the
        grace period (a record may still be on its way: a restore of the database, a replica's late write)."""
        adopted = 0.0
        held: list[Untracked] = []
        for u in self.untracked:
            a = u.adopt
            price = self.worst.of(self.pool.name, a.instance.offering, a.price_usd_per_hour)  # the caps' price
            fits = budget.instances >= 1 and budget.gpus >= a.gpus and budget.usd_per_hour >= price
            if need - adopted > 0 and fits:
                budget = replace(
                    budget,
                    instances=budget.instances - 1,
                    gpus=budget.gpus - a.gpus,
                    usd_per_hour=budget.usd_per_hour - price,
                )
                adopted += a.capacity_units
                intents.append(a)
                self.marks.pop(u.key, None)
                chosen.append(f"adopt {a.instance.offering} {a.instance.cloud_id} (tagged, no record)")
                continue
            held.append(u)
        if adopted:
            reasons.append(f"adopted {adopted:g} units of tagged instances with no record instead of launching")
        for u in held:
            inst, age = u.adopt.instance, self.now - u.since
            if age >= self.untracked_grace:
                why = f"untracked instance not needed by pool {self.pool.name} for {age.total_seconds():.0f}s"
                intents.append(Terminate(None, self.pool.name, inst.offering.cloud, inst.cloud_id, why))
                self.marks.pop(u.key, None)
                chosen.append(f"terminate {inst.offering} {inst.cloud_id} ({why})")
            else:
                left = (self.untracked_grace - age).total_seconds()
                reasons.append(
                    f"holding untracked {inst.offering} {inst.cloud_id}: not needed; terminated in {left:.0f}s "
                    "unless the pool needs it by then"
                )
        return adopted, budget

    def _terminate(self, rec: InstanceRecord, reason: str) -> Terminate:
        return Terminate(rec.token, rec.pool, rec.offering.cloud, rec.cloud_id or "", reason)

    def _decision(
        self,
        desired: float,
        ready: float,
        booting: float,
        draining: float,
        spend: float,
        reasons: list[str],
        signal: str,
        chosen: tuple[str, ...] = (),
        skipped: tuple[Skipped, ...] = (),
    ) -> PoolDecision:
        return PoolDecision(
            self.pool.name,
            desired,
            ready,
            booting,
            draining,
            spend,
            tuple(reasons),
            chosen=chosen,
            skipped=skipped,
            signal=signal,
        )
