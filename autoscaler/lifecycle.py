"""Instance lifecycle: the one table of allowed state changes.

    PENDING -> REQUESTED -> PROVISIONING -> RUNNING -> READY <-> UNHEALTHY -> DRAINING -> TERMINATING -> TERMINATED
       |           |             |            |                                  ^
       +-----------+--> CANCELLED / LAUNCH_FAILED       (any live state) ---------+  (preempted / vanished)

Every edge is marked *observed* (a cloud listing or a health check said so) or *decided* (a policy chose it).
`transition()` is the only function that moves a record between states; the store appends each move to the
instance's history, and timeouts are read from that history (`state_since`). Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class InstanceState(enum.StrEnum):
    PENDING = "pending"  # intent recorded, no cloud call yet
    REQUESTED = "requested"  # cloud call in flight (or its answer was lost)
    PROVISIONING = "provisioning"  # the cloud knows it, it is booting
    RUNNING = "running"  # the cloud says running, not yet healthy
    READY = "ready"  # serving: counted as ready capacity
    UNHEALTHY = "unhealthy"  # was ready, health check failing
    DRAINING = "draining"  # chosen for removal, finishing its work
    TERMINATING = "terminating"  # terminate called
    TERMINATED = "terminated"  # gone
    LAUNCH_FAILED = "launch_failed"  # the cloud refused the launch
    CANCELLED = "cancelled"  # the intent was dropped before the cloud made anything

    @property
    def live(self) -> bool:
        """Still costs money or may: the cloud may hold an instance for it."""
        return self not in FINAL_STATES

    @property
    def booting(self) -> bool:
        return self in BOOTING_STATES


FINAL_STATES = frozenset({InstanceState.TERMINATED, InstanceState.LAUNCH_FAILED, InstanceState.CANCELLED})
BOOTING_STATES = frozenset(
    {InstanceState.PENDING, InstanceState.REQUESTED, InstanceState.PROVISIONING, InstanceState.RUNNING}
)


class Edge(enum.StrEnum):
    OBSERVED = "observed"
    DECIDED = "decided"


S = InstanceState
OBS, DEC = Edge.OBSERVED, Edge.DECIDED

# (from, to) -> kind of edge. Anything not in this table is a bug and raises.
TRANSITIONS: dict[tuple[InstanceState, InstanceState], Edge] = {
    (S.PENDING, S.REQUESTED): DEC,
    (S.PENDING, S.CANCELLED): DEC,
    (S.PENDING, S.PROVISIONING): OBS,  # crash after the cloud accepted: the listing shows our token
    (S.PENDING, S.RUNNING): OBS,
    (S.REQUESTED, S.PROVISIONING): OBS,
    (S.REQUESTED, S.RUNNING): OBS,
    (S.REQUESTED, S.LAUNCH_FAILED): OBS,
    (S.REQUESTED, S.CANCELLED): DEC,
    (S.PROVISIONING, S.RUNNING): OBS,
    (S.RUNNING, S.READY): OBS,
    (S.PROVISIONING, S.READY): OBS,
    (S.READY, S.UNHEALTHY): OBS,
    (S.UNHEALTHY, S.READY): OBS,
    (S.READY, S.DRAINING): DEC,
    (S.UNHEALTHY, S.DRAINING): DEC,
    (S.RUNNING, S.DRAINING): DEC,
    (S.DRAINING, S.TERMINATING): DEC,
    (S.PROVISIONING, S.TERMINATING): DEC,
    (S.RUNNING, S.TERMINATING): DEC,
    (S.READY, S.TERMINATING): DEC,
    (S.UNHEALTHY, S.TERMINATING): DEC,
    (S.REQUESTED, S.TERMINATING): DEC,
    (S.PENDING, S.TERMINATING): DEC,
    (S.TERMINATING, S.TERMINATED): OBS,
    # A live instance that the cloud says is gone (preempted, vanished, killed by hand). PENDING and REQUESTED
    # too: the answer to a launch was lost, and the instance had already ended when we found it by its tag.
    (S.PENDING, S.TERMINATED): OBS,
    (S.REQUESTED, S.TERMINATED): OBS,
    (S.PROVISIONING, S.TERMINATED): OBS,
    (S.RUNNING, S.TERMINATED): OBS,
    (S.READY, S.TERMINATED): OBS,
    (S.UNHEALTHY, S.TERMINATED): OBS,
    (S.DRAINING, S.TERMINATED): OBS,
}


class IllegalTransition(ValueError):
    pass


@dataclass(frozen=True)
class Move:
    frm: InstanceState
    to: InstanceState
    edge: Edge
    reason: str


def transition(frm: InstanceState, to: InstanceState, reason: str) -> Move:
    """Check one move against the table; the caller (the store) applies and records it."""
    edge = TRANSITIONS.get((frm, to))
    if edge is None:
        raise IllegalTransition(f"{frm} -> {to} is not in the lifecycle table ({reason})")
    return Move(frm, to, edge, reason)


def can_transition(frm: InstanceState, to: InstanceState) -> bool:
    return (frm, to) in TRANSITIONS
