"""What to remove first when a pool has more capacity than it needs. Pure.

Not-ready instances go first (booting or unhealthy: they serve nothing yet, and the newest has done the least
work), then ready ones from the most expensive per capacity unit down, the newest first among equals. Records
already DRAINING or TERMINATING are on their way out and are not chosen again. A removal never takes the pool
below what it needs: the removed units stay within `excess_units`, so an instance too big for what is left of
the excess is passed over and a smaller one further down the order may still go.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autoscaler.lifecycle import InstanceState
from autoscaler.model import InstanceRecord
from policies.scaling import num

_EPSILON = 1e-9
_LEAVING = frozenset({InstanceState.DRAINING, InstanceState.TERMINATING})


@dataclass(frozen=True)
class Removal:
    record: InstanceRecord
    reason: str


def choose_removals(fleet: Sequence[InstanceRecord], excess_units: float) -> tuple[Removal, ...]:
    if excess_units <= 0:
        return ()
    eligible = [r for r in fleet if r.live and r.state not in _LEAVING]
    eligible.sort(key=_order)
    removals: list[Removal] = []
    removed = 0.0
    for record in eligible:
        if removed + record.capacity_units > excess_units + _EPSILON:
            continue
        removed += record.capacity_units
        removals.append(Removal(record, f"{_why(record)}; {num(removed)} of {num(excess_units)} excess units"))
    return tuple(removals)


def _not_ready(record: InstanceRecord) -> bool:
    return record.state.booting or record.state == InstanceState.UNHEALTHY


def _per_unit(record: InstanceRecord) -> float:
    # A record without capacity supplies nothing for its price: the most expensive of all.
    if record.capacity_units <= 0:
        return float("inf")
    return record.price_usd_per_hour / record.capacity_units


def _order(record: InstanceRecord) -> tuple[int, float, float, str]:
    newest_first = -record.created_at.timestamp()
    if _not_ready(record):
        return (0, 0.0, newest_first, record.token)
    return (1, -_per_unit(record), newest_first, record.token)


def _why(record: InstanceRecord) -> str:
    created = record.created_at.isoformat()
    if _not_ready(record):
        return f"not ready ({record.state}), newest first: created {created}"
    return (
        f"ready, most expensive per unit first: ${num(_per_unit(record))} per unit-hour "
        f"(${num(record.price_usd_per_hour)}/h for {num(record.capacity_units)} units), created {created}"
    )
