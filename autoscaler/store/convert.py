"""Conversions between ORM rows and the model's frozen dataclasses, in both directions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from autoscaler.lifecycle import InstanceState
from autoscaler.model import (
    Block,
    FailureKind,
    InstanceRecord,
    Market,
    OfferingKey,
    PoolControl,
    PoolDecision,
    Recommendation,
    ScalingState,
    Scope,
    Skipped,
)
from autoscaler.store.rows import CapacityEventRow, DecisionRow, HistoryEntry, PolicyRevisionRow, PriceRow
from autoscaler.store.tables import (
    CapacityBlockTable,
    CapacityEventTable,
    DecisionTable,
    InstanceHistoryTable,
    InstanceTable,
    PolicyRevisionTable,
    PoolControlTable,
    PriceTable,
)
from autoscaler.store.types import as_utc


def key_columns(key: OfferingKey) -> dict[str, str]:
    return {
        "cloud": key.cloud,
        "region": key.region,
        "zone": key.zone,
        "instance_type": key.instance_type,
        "market": str(key.market),
    }


def _key(row: InstanceTable | CapacityEventTable | PriceTable) -> OfferingKey:
    return OfferingKey(row.cloud, row.region, row.zone, row.instance_type, Market(row.market))


# ---- instances ----


def instance_row(record: InstanceRecord) -> InstanceTable:
    return InstanceTable(
        token=record.token,
        pool=record.pool,
        **key_columns(record.offering),
        state=str(record.state),
        capacity_units=record.capacity_units,
        gpus=record.gpus,
        price_usd_per_hour=record.price_usd_per_hour,
        created_at=record.created_at,
        state_since=record.state_since,
        cloud_id=record.cloud_id,
        reason=record.reason,
        address=record.address,
    )


def instance_record(row: InstanceTable) -> InstanceRecord:
    return InstanceRecord(
        token=row.token,
        pool=row.pool,
        offering=_key(row),
        state=InstanceState(row.state),
        capacity_units=row.capacity_units,
        gpus=row.gpus,
        price_usd_per_hour=row.price_usd_per_hour,
        created_at=row.created_at,
        state_since=row.state_since,
        cloud_id=row.cloud_id,
        reason=row.reason,
        address=row.address,
    )


def history_entry(row: InstanceHistoryTable) -> HistoryEntry:
    return HistoryEntry(
        frm=None if row.frm is None else InstanceState(row.frm),
        to=InstanceState(row.to),
        at=row.at,
        reason=row.reason,
        edge=row.edge,
    )


# ---- capacity memory ----


def block_columns(block: Block) -> dict[str, Any]:
    return {
        "cloud": block.cloud,
        "region": block.region,
        "zone": block.zone,
        "instance_type": block.instance_type,
        "market": str(block.market),
        "scope": str(block.scope),
        "kind": str(block.kind),
        "failures": block.failures,
        "until": block.until,
        "last_failure_at": block.last_failure_at,
        "reason": block.reason,
    }


def block(row: CapacityBlockTable) -> Block:
    return Block(
        cloud=row.cloud,
        region=row.region,
        zone=row.zone,
        instance_type=row.instance_type,
        market=Market(row.market),
        scope=Scope(row.scope),
        kind=FailureKind(row.kind),
        failures=row.failures,
        until=row.until,
        last_failure_at=row.last_failure_at,
        reason=row.reason,
    )


def capacity_event(row: CapacityEventTable) -> CapacityEventRow:
    return CapacityEventRow(
        offering=_key(row),
        scope=Scope(row.scope),
        kind=FailureKind(row.kind),
        at=row.at,
        message=row.message,
        pool=row.pool,
    )


# ---- decisions, scaling state, controls ----


def decision_row(at: datetime, pool: str, decision: PoolDecision) -> DecisionTable:
    return DecisionTable(
        at=at,
        pool=pool,
        desired=decision.desired,
        ready=decision.ready,
        booting=decision.booting,
        draining=decision.draining,
        spend_usd_per_hour=decision.spend_usd_per_hour,
        signal=decision.signal,
        reasons=list(decision.reasons),
        chosen=list(decision.chosen),
        skipped=[{"offering": s.offering, "reason": s.reason} for s in decision.skipped],
    )


def decision(row: DecisionTable) -> DecisionRow:
    return DecisionRow(
        at=row.at,
        decision=PoolDecision(
            pool=row.pool,
            desired=row.desired,
            ready=row.ready,
            booting=row.booting,
            draining=row.draining,
            spend_usd_per_hour=row.spend_usd_per_hour,
            reasons=tuple(row.reasons),
            chosen=tuple(row.chosen),
            skipped=tuple(Skipped(offering=s["offering"], reason=s["reason"]) for s in row.skipped),
            signal=row.signal,
        ),
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat()


def _instant(value: str) -> datetime:
    return as_utc(datetime.fromisoformat(value))


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else _instant(value)


def scaling_state_json(state: ScalingState) -> dict[str, Any]:
    return {
        "recommendations": [{"at": _iso(r.at), "capacity": r.capacity} for r in state.recommendations],
        "panic_until": _iso(state.panic_until),
        "last_desired": state.last_desired,
        # rate-based scaling's memory (policies.rate): the pool's demand history, its headroom, its season
        "rates": [[_iso(r.at), r.capacity] for r in state.rates],
        "headroom": state.headroom,
        "headroom_at": _iso(state.headroom_at),
        # every entry of the season, the open bucket's last (stored as before it was kept apart in memory)
        "seasonal": [list(e) for e in state.seasonal]
        + ([] if state.season_open is None else [list(state.season_open)]),
    }


def scaling_state(doc: dict[str, Any]) -> ScalingState:
    recommendations = [
        Recommendation(at=_instant(item["at"]), capacity=float(item["capacity"]))
        for item in doc.get("recommendations", [])
    ]
    last = doc.get("last_desired")
    # the newest entry of the season is its open bucket (policies.rate keeps that one apart)
    seasonal = tuple((int(p), int(b), float(t), int(n)) for p, b, t, n in doc.get("seasonal", []))
    return ScalingState(
        recommendations=tuple(recommendations),
        panic_until=_from_iso(doc.get("panic_until")),
        last_desired=None if last is None else float(last),
        rates=tuple(Recommendation(_instant(at), float(rate)) for at, rate in doc.get("rates", [])),
        headroom=None if doc.get("headroom") is None else float(doc["headroom"]),
        headroom_at=_from_iso(doc.get("headroom_at")),
        seasonal=seasonal[:-1],
        season_open=seasonal[-1] if seasonal else None,
    )


def control_columns(control: PoolControl) -> dict[str, Any]:
    return {
        "paused": control.paused,
        "override_capacity": control.override_capacity,
        "override_until": control.override_until,
    }


def control(row: PoolControlTable) -> PoolControl:
    return PoolControl(
        paused=row.paused, override_capacity=row.override_capacity, override_until=row.override_until
    )


# ---- prices, policy revisions ----


def price(row: PriceTable) -> PriceRow:
    return PriceRow(
        offering=_key(row),
        usd_per_hour=row.usd_per_hour,
        gpus=row.gpus,
        observed_at=row.observed_at,
        source=row.source,
    )


def policy_revision(row: PolicyRevisionTable) -> PolicyRevisionRow:
    return PolicyRevisionRow(
        at=row.at, sha256=row.sha256, source=row.source, text=row.text, accepted=row.accepted, error=row.error
    )
