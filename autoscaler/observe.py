"""The passive half of reconcile: compare our records with what the clouds list, and say what that means.

Pure. Reads a Snapshot, returns the observed transitions, the tagged instances we have no record of (each pool's
active half adopts them when it needs capacity, or terminates them after `untracked_grace_seconds`), terminations
of leaks no pool can adopt, retries of launches whose answer was lost, and preemption events.
The cloud listing is the truth of existence; a cloud whose listing failed this tick is left alone entirely
(absence from a failed listing proves nothing).

When an untracked instance was first seen is carried from tick to tick in `Snapshot.missing_since` under the key
`untracked_key(cloud, cloud_id)` (the record tokens' map: one in-memory map of "first seen" marks, so the daemon
and the simulator carry both without knowing either). A restart starts the grace period afresh: it can only
delay a termination, never hasten one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

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
_ADOPT_NAMESPACE = uuid.UUID("0d3c6f1e-54a6-4f7e-9a55-7f4f0f6b1c2d")


@dataclass(frozen=True)
class Untracked:
    """A tagged instance with no record that its pool could adopt: the pool decides (adopt if it needs the
    capacity, terminate once `since` is older than the grace period, hold until then)."""

    key: str  # its mark in missing_since
    adopt: Adopt  # how it would be taken into the books
    since: datetime  # first seen untracked (by this process)


@dataclass
class Observation:
    intents: list[Launch | Terminate | Transition | Adopt] = field(default_factory=list)
    events: list[CapacityEvent] = field(default_factory=list)
    # every live record as it stands after the observed transitions (records that ended are dropped)
    fleet: dict[str, InstanceRecord] = field(default_factory=dict)
    missing_since: dict[str, datetime] = field(default_factory=dict)
    # adoptable instances with no record, by pool, best first (running before booting, older before newer)
    untracked: dict[str, list[Untracked]] = field(default_factory=dict)

    def move(
        self,
        rec: InstanceRecord,
        to: InstanceState,
        reason: str,
        cloud_id: str | None = None,
        observed: bool = True,
    ) -> InstanceRecord:
        self.intents.append(Transition(rec.token, to, reason, observed=observed, cloud_id=cloud_id))
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
    offerings: Mapping[OfferingKey, Offering] | None = None  # built when an untracked instance needs a price
    for cloud, listed in snapshot.cloud_instances.items():
        by_id = {i.cloud_id: i for i in listed}
        by_token = {i.tags.get(TAG_INTENT): i for i in listed}
        matched: set[str] = set()
        for rec in [r for r in obs.fleet.values() if r.offering.cloud == cloud]:
            inst = by_id.get(rec.cloud_id) if rec.cloud_id else by_token.get(rec.token)
            if inst is None:
                _missing(obs, rec, snapshot, policy, retry_after)
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
                if offerings is None:
                    offerings = {o.key: o for o in snapshot.offerings}
                _untracked(obs, inst, policy, offerings, snapshot)
    # A cloud that could not be listed this tick proves nothing either way: its records (and the untracked
    # instances seen on it) keep their marks.
    for token, since in snapshot.missing_since.items():
        kept = obs.fleet.get(token)
        if kept is not None:
            cloud = kept.offering.cloud
        elif token.startswith(_UNTRACKED):
            cloud = token[len(_UNTRACKED) :].split("/", 1)[0]
        else:
            continue
        if cloud not in snapshot.cloud_instances:
            obs.missing_since[token] = since
    for waiting in obs.untracked.values():
        waiting.sort(key=lambda u: (u.adopt.state != S.RUNNING, u.adopt.instance.launched_at, u.key))
    return obs


_UNTRACKED = "untracked:"


def untracked_key(cloud: str, cloud_id: str) -> str:
    """The missing_since key under which an untracked instance's first sighting is carried between ticks."""
    return f"{_UNTRACKED}{cloud}/{cloud_id}"


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


def _missing(
    obs: Observation, rec: InstanceRecord, snap: Snapshot, policy: Policy, retry_after: timedelta
) -> None:
    """The cloud (whose listing succeeded) does not list the record's instance."""
    if rec.state in (S.PENDING, S.REQUESTED):
        _unanswered(obs, rec, snap, policy, retry_after)
        return
    if rec.state == S.TERMINATING:
        obs.move(rec, S.TERMINATED, "gone from the cloud")
        return
    # A listing may lag behind a launch's answer, or miss an instance once (eventual consistency, a short page):
    # the instance is taken for lost only after it has been missing for `retry_after`.
    since = snap.missing_since.get(rec.token, snap.now)
    if snap.now - since < retry_after:
        obs.missing_since[rec.token] = since
        return
    _lost(obs, rec, f"missing from the cloud listing for {(snap.now - since).total_seconds():.0f}s", None)


def _unanswered(
    obs: Observation, rec: InstanceRecord, snap: Snapshot, policy: Policy, retry_after: timedelta
) -> None:
    """A launch that was decided, maybe sent, but whose instance the cloud does not list."""
    pool = policy.pool(rec.pool)
    since = snap.missing_since.get(rec.token, snap.now)
    waited = snap.now - since
    if pool is None or waited >= retry_after:
        # Give it up. Should the cloud have made the instance after all, it carries our tags, so a later tick
        # finds it untracked and adopts or terminates it: nothing leaks.
        if pool is None:
            obs.move(rec, S.CANCELLED, "launch given up: its pool was removed from the policy", observed=False)
            return
        why = f"the cloud did not make it in {waited.total_seconds():.0f}s of retries"
        obs.move(rec, S.CANCELLED, f"launch given up: {why}", observed=False)
        # The offering failed to answer: block it like a stockout, so placement tries the next one.
        obs.events.append(CapacityEvent(rec.offering, Scope.ZONE, FailureKind.UNRESPONSIVE, why, rec.pool))
        return
    # Never reached the cloud, or its answer was lost (a crash, a timeout, a transient error). The launch is
    # idempotent on the token: asking again yields the instance the cloud may already have made, never a second.
    obs.missing_since[rec.token] = since
    obs.intents.append(
        Launch(
            rec.token,
            rec.pool,
            rec.offering,
            rec.capacity_units,
            rec.gpus,
            rec.price_usd_per_hour,
            f"launch not seen in the cloud for {waited.total_seconds():.0f}s: asking again with its token",
            retry=True,
        )
    )


def _lost(obs: Observation, rec: InstanceRecord, why: str, cloud_id: str | None) -> None:
    """A live instance we did not end is gone: a preemption for spot, a loss otherwise. The pool refills."""
    if not can_transition(rec.state, S.TERMINATED):
        return
    obs.move(rec, S.TERMINATED, why, cloud_id)
    if rec.offering.market == Market.SPOT:
        obs.events.append(
            CapacityEvent(rec.offering, Scope.ZONE, FailureKind.PREEMPTION, f"spot instance lost: {why}", rec.pool)
        )


def adopt_token(tick: str, cloud: str, cloud_id: str) -> str:
    # Fixed by the tick, so reconcile stays replayable; new for every adoption, so an instance adopted again
    # after its record ended never collides with that record.
    return f"adopted-{uuid.uuid5(_ADOPT_NAMESPACE, f'{tick}/{cloud}/{cloud_id}')}"


def _untracked(
    obs: Observation,
    inst: CloudInstance,
    policy: Policy,
    offerings: Mapping[OfferingKey, Offering],
    snap: Snapshot,
) -> None:
    """A tagged instance with no record is a leak: its pool adopts it or it is terminated. Never ignored."""
    if inst.state == CloudState.TERMINATED:
        return  # gone: the cloud merely still lists it
    if inst.state == CloudState.STOPPING:
        # Ended but not gone (stopped, suspended, shutting down): a stopped VM's disk still bills. Ask again until
        # the cloud says terminated; terminate is idempotent.
        obs.intents.append(
            Terminate(
                None, inst.pool, inst.offering.cloud, inst.cloud_id, f"ended but still exists: {inst.state_reason}"
            )
        )
        return
    pool = policy.pool(inst.pool or "")
    cand = candidate_for(pool, inst.offering) if pool else None
    if pool is None or cand is None:
        why = "its pool is not in the policy" if pool is None else "its offering is not a candidate of its pool"
        obs.intents.append(
            Terminate(None, inst.pool, inst.offering.cloud, inst.cloud_id, f"untracked instance: {why}")
        )
        return
    price = _price_of(inst.offering, offerings)
    if price is None:
        return  # this cloud's offerings are not known yet (a failed refresh): decide on a later tick
    state = S.RUNNING if inst.state == CloudState.RUNNING else S.PROVISIONING
    adopt = Adopt(
        adopt_token(snap.tick, inst.offering.cloud, inst.cloud_id),
        pool.name,
        inst,
        cand[1],
        price.gpus,
        price.price_usd_per_hour,
        state,
        "adopted: tagged instance with no record (lost intent or lost database)",
    )
    key = untracked_key(inst.offering.cloud, inst.cloud_id)
    since = snap.missing_since.get(key, snap.now)
    obs.missing_since[key] = since
    obs.untracked.setdefault(pool.name, []).append(Untracked(key, adopt, since))


def _price_of(key: OfferingKey, offerings: Mapping[OfferingKey, Offering]) -> Offering | None:
    """The offering's price, else the same type and market's in another zone, else (if the cloud lists other
    offerings, so this one is just no longer offered) zero; None when nothing of the cloud is known."""
    if key in offerings:
        return offerings[key]
    same_kind = [
        o
        for k, o in offerings.items()
        if (k.cloud, k.instance_type, k.market) == (key.cloud, key.instance_type, key.market)
    ]
    if same_kind:
        return min(same_kind, key=lambda o: o.key)
    if any(k.cloud == key.cloud for k in offerings):
        return Offering(key, 0.0, 0, price_source="unknown")
    return None
