"""Capacity memory: which offerings failed, at what scope, and until when they must not be tried. Pure.

A failure blocks its scope (zone, region or whole cloud) for a time that starts at `BASE_BLOCK` and doubles
with each consecutive failure up to `MAX_BLOCK` (Cluster Autoscaler's node-group backoff, Karpenter's 3-minute
unavailable-offerings cache). The count of consecutive failures is forgotten after `RESET_AFTER` without a
failure, or at once when a launch on a covered offering succeeds. The store persists Blocks, so the memory
survives restarts and is shared by every replica reading the same database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from autoscaler.model import Block, CapacityEvent, OfferingKey, Scope

BASE_BLOCK = timedelta(minutes=3)
MAX_BLOCK = timedelta(minutes=30)
RESET_AFTER = timedelta(hours=3)


def scope_key(key: OfferingKey, scope: Scope) -> tuple[str, str, str, str, str, str]:
    """The identity of a block: the offering with the parts its scope does not pin blanked out."""
    region = "" if scope == Scope.CLOUD else key.region
    zone = key.zone if scope == Scope.ZONE else ""
    return (key.cloud, region, zone, key.instance_type, str(key.market), str(scope))


def block_key(block: Block) -> tuple[str, str, str, str, str, str]:
    return (block.cloud, block.region, block.zone, block.instance_type, str(block.market), str(block.scope))


def backoff(failures: int) -> timedelta:
    """Block length after `failures` consecutive failures (1 -> BASE_BLOCK, doubling, capped)."""
    exponent = min(max(failures - 1, 0), 10)
    block: timedelta = BASE_BLOCK * (2**exponent)
    return min(block, MAX_BLOCK)


def record_failure(previous: Block | None, event: CapacityEvent, now: datetime) -> Block:
    """The block that follows `event`, given the block (if any) already held for the same scope."""
    failures = 1
    if previous is not None and now - previous.last_failure_at < RESET_AFTER:
        failures = previous.failures + 1
    region = "" if event.scope == Scope.CLOUD else event.offering.region
    zone = event.offering.zone if event.scope == Scope.ZONE else ""
    return Block(
        cloud=event.offering.cloud,
        region=region,
        zone=zone,
        instance_type=event.offering.instance_type,
        market=event.offering.market,
        scope=event.scope,
        kind=event.kind,
        failures=failures,
        until=now + backoff(failures),
        last_failure_at=now,
        reason=event.message,
    )


def blocking(blocks: Iterable[Block], key: OfferingKey, now: datetime) -> Block | None:
    """The active block that covers `key`, the one lasting longest if several do."""
    active = [b for b in blocks if b.until > now and b.covers(key)]
    return max(active, key=lambda b: b.until) if active else None


def cleared_by_success(blocks: Iterable[Block], key: OfferingKey) -> list[Block]:
    """Blocks whose failure count a successful launch of `key` resets (they are deleted)."""
    return [b for b in blocks if b.covers(key)]
