"""Plain frozen values the store returns for its history-like tables (never ORM objects)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from autoscaler.lifecycle import InstanceState
from autoscaler.model import FailureKind, OfferingKey, PoolDecision, Scope

# The edge recorded for the row add_instance writes: the record came into being, no lifecycle edge was taken.
CREATED_EDGE = "created"


@dataclass(frozen=True)
class HistoryEntry:
    """One applied move of an instance record. `frm` is None for the row written when the record was added."""

    frm: InstanceState | None
    to: InstanceState
    at: datetime
    reason: str
    edge: str  # lifecycle.Edge value ("observed" / "decided"), or CREATED_EDGE


@dataclass(frozen=True)
class CapacityEventRow:
    offering: OfferingKey
    scope: Scope
    kind: FailureKind
    at: datetime
    message: str
    pool: str | None


@dataclass(frozen=True)
class DecisionRow:
    at: datetime
    decision: PoolDecision


@dataclass(frozen=True)
class PriceRow:
    offering: OfferingKey
    usd_per_hour: float
    gpus: int
    observed_at: datetime
    source: str


@dataclass(frozen=True)
class PolicyRevisionRow:
    at: datetime
    sha256: str
    source: str
    text: str
    accepted: bool
    error: str
