"""The passive half of reconcile: compare our records with what the clouds list, and say what that means.

Pure. Reads a Snapshot, returns the observed transitions, adoptions of tagged instances we have no record of,
terminations of leaks we cannot adopt, retries of launches whose answer was lost, and preemption events.
The cloud listing is the truth of existence; a cloud whose listing failed this tick is left alone entirely
(absence from a failed listing proves nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta

from autoscaler.config import Policy, Pool
from autoscaler.lifecycle import InstanceState, can_transition
from autoscaler.model import (
    TAG_INTENT,
    Adopt,
    CapacityEvent,
    CloudInstance,
    CloudState,
    FailureKind,
    InstanceRecord,
    Launch,
    Market,
    Offering,
    OfferingKey,
    Scope,
    Snapshot,
    Terminate,
    Transition,
)

S = InstanceState
# How often a TERMINATING instance the cloud still shows gets its (idempotent) terminate call again.
TERMINATE_RETRY = timedelta(seconds=30)


@dataclass
class Observation:
    intents: list[Launch | Terminate | Transition | Adopt] = field(default_factory=list)
    events: list[CapacityEvent] = field(default_factory=list)
    # every live record as it stands after the observed transitions (records that ended are dropped)
    fleet: dict[str, InstanceRecord] = field(default_factory=dict)

    def move(
        self, rec: InstanceRecord, to: InstanceState, reason: str, cloud_id: str | None = None
    ) -> InstanceRecord:
        self.intents.append(Transition(rec.token, to, reason, observed=True, cloud_id=cloud_id))
        moved = replace(rec, state=to, reason=reason, cloud_id=cloud_id or rec.cloud_id)
        if to.live:
            self.fleet[rec.token] = moved
        else:
            self.fleet.pop(rec.token, None)
        return moved


def candidate_for(pool: Pool, key: OfferingKey) -> tuple[int, float] | None:
    """(rank, throughput) of the pool's first candidate that this offering satisfies."""
    for rank, cand in enumerate(pool.candidates):
        if (cand.cloud, cand.instance_type, cand.market) != (key.cloud, key.instance_type, key.market):
            continue
        if cand.regions and key.region not in cand.regions:
            continue
        if cand.zones and key.zone not in cand.zones:
            continue
        return rank, cand.throughput
    return None


def observe(snapshot: Snapshot, policy: Policy, retry_after: timedelta) -> Observation:
    obs = Observation(fleet={r.token: r for r in snapshot.records if r.live})
    offerings: Mapping[OfferingKey, Offering] = {o.key: o for o in snapshot.offerings}
    for cloud, listed in snapshot.cloud_instances.items():
        by_id = {i.cloud_id: i for i in listed}
        by_token = {i.tags.get(TAG_INTENT): i for i in listed}
        matched: set[str] = set()
        for rec in [r for r in obs.fleet.values() if r.offering.cloud == cloud]:
            inst = by_id.get(rec.cloud_id) if rec.cloud_id else by_token.get(rec.token)
            if inst is None:
                _missing(obs, rec, snapshot, retry_after)
                continue
            matched.add(inst.cloud_id)
            if (
                rec.state == S.READY
                and inst.state == CloudState.RUNNING
                and snapshot.health.get(inst.cloud_id) is not False
            ):
                continue  # the steady state, most of the fleet: nothing to observe
            _follow(obs, rec, inst, snapshot, policy)
        for inst in listed:
            if inst.cloud_id not in matched:
                _untracked(obs, inst, policy, offerings, snapshot)
    return obs


def _follow(obs: Observation, rec: InstanceRecord, inst: CloudInstance, snap: Snapshot, policy: Policy) -> None:
    """The cloud lists the record's instance: move the record to what the cloud (and health check) says."""
    cid = inst.cloud_id
    if inst.state in (CloudState.STOPPING, CloudState.TERMINATED):
        if rec.state == S.TERMINATING:
            if inst.state == CloudState.TERMINATED:
                obs.move(rec, S.TERMINATED, "terminated as asked", cid)
            return
        _lost(obs, rec, f"the cloud ended it: {inst.state_reason or inst.state}", cid)
        return
    if rec.state == S.TERMINATING:
        if snap.now - rec.state_since >= TERMINATE_RETRY:
            obs.intents.append(
                Terminate(rec.token, rec.pool, rec.offering.cloud, cid, "terminate again: still listed")
            )
        return
    if rec.state in (S.PENDING, S.REQUESTED):
        rec = obs.move(rec, S.PROVISIONING, f"the cloud lists it ({inst.state})", cid)
    if inst.state == CloudState.RUNNING and rec.state == S.PROVISIONING:
        rec = obs.move(rec, S.RUNNING, "the cloud says running", cid)
    pool = policy.pool(rec.pool)
    healthy = True if pool is None or pool.health_check.type == "none" else snap.health.get(cid)
    if rec.state == S.RUNNING and healthy:
        obs.move(rec, S.READY, "running and healthy" if pool and pool.health_check.type != "none" else "running")
    elif rec.state == S.READY and healthy is False:
        obs.move(rec, S.UNHEALTHY, "health check failing")
    elif rec.state == S.UNHEALTHY and healthy:
        obs.move(rec, S.READY, "health check passing again")


def _missing(obs: Observation, rec: InstanceRecord, snap: Snapshot, retry_after: timedelta) -> None:
    """The cloud does not list the record's instance."""
    age = snap.now - rec.state_since
    if rec.state in (S.PENDING, S.REQUESTED):
        # Never reached the cloud, or its answer was lost (a crash, a timeout). The launch is idempotent on the
        # token, so asking again yields the instance the cloud may already have made, never a second one.
        obs.intents.append(
            Launch(
                rec.token,
                rec.pool,
                rec.offering,
                rec.capacity_units,
                rec.gpus,
                rec.price_usd_per_hour,
                f"launch not seen in the cloud after {age.total_seconds():.0f}s: asking again with its token",
                retry=True,
            )
        )
        return
    if rec.state == S.PROVISIONING and age < retry_after:
        return  # just launched: a listing may lag behind the launch answer
    if rec.state == S.TERMINATING:
        obs.move(rec, S.TERMINATED, "gone from the cloud")
        return
    _lost(obs, rec, "vanished from the cloud listing", None)


def _lost(obs: Observation, rec: InstanceRecord, why: str, cloud_id: str | None) -> None:
    """A live instance we did not end is gone: a preemption for spot, a loss otherwise. The pool refills."""
    if not can_transition(rec.state, S.TERMINATED):
        return
    obs.move(rec, S.TERMINATED, why, cloud_id)
    if rec.offering.market == Market.SPOT:
        obs.events.append(
            CapacityEvent(rec.offering, Scope.ZONE, FailureKind.PREEMPTION, f"spot instance lost: {why}", rec.pool)
        )


def _untracked(
    obs: Observation,
    inst: CloudInstance,
    policy: Policy,
    offerings: Mapping[OfferingKey, Offering],
    snap: Snapshot,
) -> None:
    """A tagged instance with no record is a leak: adopt it into its pool, or terminate it. Never ignore it."""
    if inst.state in (CloudState.STOPPING, CloudState.TERMINATED):
        return
    pool = policy.pool(inst.pool or "")
    cand = candidate_for(pool, inst.offering) if pool else None
    offering = offerings.get(inst.offering)
    if pool is None or cand is None or offering is None:
        why = "its pool is not in the policy" if pool is None else "its offering is not a candidate of its pool"
        obs.intents.append(
            Terminate(None, inst.pool, inst.offering.cloud, inst.cloud_id, f"untracked instance: {why}")
        )
        return
    state = S.RUNNING if inst.state == CloudState.RUNNING else S.PROVISIONING
    adopt = Adopt(
        pool.name,
        inst,
        cand[1],
        offering.gpus,
        offering.price_usd_per_hour,
        state,
        "adopted: tagged instance with no record (lost intent or lost database)",
    )
    obs.intents.append(adopt)
    obs.fleet[adopt.token] = adopt.record(snap.now)
