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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from autoscaler import capacity
from autoscaler.config import Limits, Policy, Pool
from autoscaler.lifecycle import InstanceState
from autoscaler.model import (
    Block,
    CapacityEvent,
    Demand,
    InstanceRecord,
    Intent,
    Launch,
    Offering,
    Plan,
    PoolControl,
    PoolDecision,
    ScalingState,
    Skipped,
    Snapshot,
    Terminate,
    Transition,
)
from autoscaler.observe import observe
from policies.disruption import choose_removals
from policies.placement import Budget, place
from policies.scaling import desired_capacity

S = InstanceState
_TOKEN_NAMESPACE = uuid.UUID("5b0f4f43-7a43-4c55-9d6b-1f9b8c0e2a61")
_GOING = frozenset({S.DRAINING, S.TERMINATING})


def launch_token(tick: str, pool: str, index: int) -> str:
    """A UUID (GCE's requestId must be one; EC2's ClientToken and Azure VM names accept it) fixed by the tick."""
    return str(uuid.uuid5(_TOKEN_NAMESPACE, f"{tick}/{pool}/{index}"))


def budget_left(limits: Limits, fleet: Iterable[InstanceRecord]) -> Budget:
    records = list(fleet)
    return Budget(
        instances=limits.max_instances - len(records),
        gpus=limits.max_gpus - sum(r.gpus for r in records),
        usd_per_hour=limits.max_usd_per_hour - sum(r.price_usd_per_hour for r in records),
    )


def provisional_blocks(blocks: Sequence[Block], events: Sequence[CapacityEvent], now: datetime) -> list[Block]:
    """The blocks as they will be once this tick's events are recorded, so placement already avoids them."""
    by_key = {capacity.block_key(b): b for b in blocks}
    for ev in events:
        key = capacity.scope_key(ev.offering, ev.scope)
        by_key[key] = capacity.record_failure(by_key.get(key), ev, now)
    return list(by_key.values())


def reconcile(snapshot: Snapshot, policy: Policy) -> Plan:
    now = snapshot.now
    obs = observe(snapshot, policy, timedelta(seconds=policy.daemon.launch_retry_seconds))
    intents: list[Intent] = list(obs.intents)
    fleet = obs.fleet
    blocks = provisional_blocks(snapshot.blocks, obs.events, now)
    budget = budget_left(policy.daemon.limits, fleet.values())

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

    def decide(
        self, offerings: Sequence[Offering], blocks: Sequence[Block], budget: Budget
    ) -> tuple[PoolDecision, list[Intent], ScalingState, Budget]:
        pool, now = self.pool, self.now
        intents: list[Intent] = []  # decided actions; a paused pool takes none of them
        reasons: list[str] = []
        active: list[InstanceRecord] = []
        boot_timeout = timedelta(seconds=pool.boot_timeout_seconds)
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

        live = sum(r.capacity_units for r in active)
        ready = sum(r.capacity_units for r in active if r.state == S.READY)
        draining = sum(r.capacity_units for r in self.members if r.state == S.DRAINING)
        spend = sum(r.price_usd_per_hour for r in self.members)
        result, new_state = desired_capacity(pool, self.demand, live, ready, self.state, now)
        desired = result.desired
        reasons.extend(result.reasons)
        signal = result.signal
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
        if need > 0:
            placement = place(pool, need, offerings, blocks, self.members, budget, now)
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
        elif need < 0:
            removable = [r for r in active if r.cloud_id]
            for removal in choose_removals(removable, -need):
                rec = removal.record
                if rec.state in (S.READY, S.UNHEALTHY, S.RUNNING) and pool.drain_seconds > 0:
                    intents.append(Transition(rec.token, S.DRAINING, removal.reason, observed=False))
                else:
                    intents.append(self._terminate(rec, removal.reason))
                chosen.append(f"remove {rec.offering} {rec.cloud_id} ({removal.reason})")
            reasons.append(f"{-need:g} units more than needed")
        decision = self._decision(desired, ready, live - ready, draining, spend, reasons, signal)
        return replace(decision, chosen=tuple(chosen), skipped=tuple(skipped)), intents, new_state, budget

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
    ) -> PoolDecision:
        return PoolDecision(
            self.pool.name, desired, ready, booting, draining, spend, tuple(reasons), signal=signal
        )
