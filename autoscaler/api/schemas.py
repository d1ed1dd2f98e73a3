"""Request and response shapes of the admin API, and the conversions from the daemon's own values.

Responses are pydantic models so /openapi.json documents every field. Requests forbid unknown keys and
accept only finite JSON numbers of the right type: `"5"`, `true`, NaN and Infinity are refused rather than
coerced, because an operator's typo must not quietly become an override of the fleet. No string a request
carries may hold a control character (see `control_character`): the path and query are checked by
errors.ControlCharacterGate, JSON bodies by `_Request`, so every request model gets the check without asking.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autoscaler.config import MetricSourceConfig
from autoscaler.discovery import Endpoint
from autoscaler.lifecycle import InstanceState
from autoscaler.metrics import SourceReading, read_problem
from autoscaler.model import Block, Demand, InstanceRecord, Market, OfferingKey, PoolControl, PoolDecision, Sample
from autoscaler.sources.combine import problem
from autoscaler.store import CapacityEventRow, DecisionRow, HistoryEntry, PolicyRevisionRow, PriceRow

MAX_OVERRIDE_TTL_SECONDS = 7 * 24 * 3600.0
CloudName = Literal["simulated", "aws", "gcp", "azure"]  # the clouds of config.CLOUDS


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _seconds(later: datetime, earlier: datetime) -> float:
    return round((later - earlier).total_seconds(), 3)


def control_character(text: str) -> str | None:
    """The first C0 control character (or DEL) in `text`, named like "U+0000", or None if it has none.

    No pool name, instance token, offering label or zone holds one, and PostgreSQL cannot store NUL in a text
    column at all (the driver raises, which would be a 500): such input is refused before it reaches the store.
    """
    found = _CONTROL_CHARACTERS.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def _strings(value: object) -> list[str]:
    """Every string in a validated field value, nested lists and dicts (keys too) included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple | set | frozenset):
        return [s for item in value for s in _strings(item)]
    return []


# ------------------------------------------------------------------ requests


def _document_no_control_characters(schema: dict[str, Any]) -> None:
    """The OpenAPI document says what _no_control_characters enforces: free-text fields exclude C0 and DEL."""
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict) and prop.get("type") == "string" and "enum" not in prop:
            prop.setdefault("pattern", "^[^\u0000-\u001f\u007f]*$")


class _Request(BaseModel):
    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra=_document_no_control_characters
    )

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        for text in _strings(value):
            if (found := control_character(text)) is not None:
                raise ValueError(f"must not contain a control character (found {found})")
        return value


class OverrideIn(_Request):
    capacity: float = Field(strict=True, ge=0, le=1e6, description="capacity units to hold the pool at")
    ttl_seconds: float = Field(
        strict=True, gt=0, le=MAX_OVERRIDE_TTL_SECONDS, description="how long the override lasts"
    )


class UnblockIn(_Request):
    cloud: CloudName
    instance_type: str = Field(min_length=1, max_length=128)
    market: Market = Field(description="spot or on-demand")
    region: str = Field("", max_length=128, description='"" matches blocks of any region')
    zone: str = Field("", max_length=128, description='"" matches blocks of any zone')


# ------------------------------------------------------------------ responses


class ErrorOut(BaseModel):
    error: str


class Health(BaseModel):
    ok: bool
    reason: str
    # High availability (autoscaler.leader): "leader" or "follower" on PostgreSQL, "single" on SQLite; the
    # lease holder and its fencing token as this daemon last saw them.
    role: Literal["leader", "follower", "single"] | None = None
    leader: str | None = None
    fencing_token: int | None = None


class OfferingOut(BaseModel):
    cloud: str
    region: str
    zone: str
    instance_type: str
    market: str

    @classmethod
    def of(cls, key: OfferingKey) -> OfferingOut:
        return cls(**key.as_labels())


class OverrideOut(BaseModel):
    capacity: float
    until: datetime
    seconds_left: float


class ControlOut(BaseModel):
    pool: str
    paused: bool
    override: OverrideOut | None = Field(description="null when none is set or it has expired")

    @classmethod
    def of(cls, pool: str, control: PoolControl, now: datetime) -> ControlOut:
        override = None
        if (
            control.override_capacity is not None
            and control.override_until is not None
            and control.override_until > now
        ):
            override = OverrideOut(
                capacity=control.override_capacity,
                until=control.override_until,
                seconds_left=_seconds(control.override_until, now),
            )
        return cls(pool=pool, paused=control.paused, override=override)


class SkippedOut(BaseModel):
    offering: str
    reason: str


class DecisionOut(BaseModel):
    pool: str
    at: datetime
    age_seconds: float
    desired: float
    ready: float
    booting: float
    draining: float
    spend_usd_per_hour: float
    signal: str
    reasons: list[str]
    chosen: list[str]
    skipped: list[SkippedOut]

    @classmethod
    def of(cls, row: DecisionRow, now: datetime) -> DecisionOut:
        d: PoolDecision = row.decision
        return cls(
            pool=d.pool,
            at=row.at,
            age_seconds=_seconds(now, row.at),
            desired=d.desired,
            ready=d.ready,
            booting=d.booting,
            draining=d.draining,
            spend_usd_per_hour=d.spend_usd_per_hour,
            signal=d.signal,
            reasons=list(d.reasons),
            chosen=list(d.chosen),
            skipped=[SkippedOut(offering=s.offering, reason=s.reason) for s in d.skipped],
        )


class CandidateOut(BaseModel):
    cloud: str
    instance_type: str
    market: str
    throughput: float


class SourceOut(BaseModel):
    """One metric source of a pool, as the daemon's last tick read it."""

    name: str
    type: str = Field(description="prometheus, http, synthetic, redis, ...")
    kind: str = Field(description="queue or latency")
    up: bool | None = Field(
        description="the last tick's read gave a usable value (an answer in time, a finite number >= 0); "
        "null: not read yet"
    )
    value: float | None = Field(description="the last tick's reading; null when it failed or was not finite")
    observed_at: datetime | None = Field(
        description="when the newest usable reading was observed: the last tick's, or while the source is "
        "down the last one before; null when it never gave one"
    )
    age_seconds: float | None = Field(description="age of that reading now, by the daemon's clock")
    stale: bool = Field(description="that reading is older than the pool's max_metric_age_seconds")
    error: str = Field(description="why the source cannot be scaled on now; empty when it can")

    @classmethod
    def of(
        cls,
        cfg: MetricSourceConfig,
        sample: Sample | None,
        last_good: SourceReading | None,
        read_at: datetime | None,
        now: datetime,
        max_age_seconds: float,
    ) -> SourceOut:
        earlier = last_good.observed_at if last_good is not None else None
        if sample is None or read_at is None:
            up, value, observed_at, error = None, None, earlier, "not read yet"
        else:
            up = not read_problem(sample, read_at)
            finite = sample.value is not None and math.isfinite(sample.value)
            value = sample.value if finite else None
            observed_at = sample.observed_at if up else earlier
            # The reading's own problem, or (judged now, by the pool's limit) its staleness.
            error = problem(sample, now, max_age_seconds)
        age = max(_seconds(now, observed_at), 0.0) if observed_at is not None else None
        return cls(
            name=cfg.name,
            type=cfg.type,
            kind=cfg.kind,
            up=up,
            value=value,
            observed_at=observed_at,
            age_seconds=age,
            stale=age is not None and age > max_age_seconds,
            error=error,
        )


HOLDING = (
    "the pool holds its capacity because its metric data cannot be trusted (no scale-in on missing data, no "
    "scale-out on garbage); it scales on its signals again by itself once the data is good"
)


def signal_fields(demand: Demand | None, read_at: datetime | None, sources: list[SourceOut]) -> dict[str, object]:
    """The fields PoolOut and ExplainOut share about the pool's demand signals, from the last tick's Demand."""
    return {
        "holding": bool(demand is not None and demand.hold),
        "hold_reason": demand.hold_reason if demand is not None else "",
        "sources_read_at": read_at if demand is not None else None,
        "sources": sources,
    }


class PoolOut(BaseModel):
    name: str
    min_capacity: float
    max_capacity: float
    desired: float | None = Field(description="from the last decision; null before the first one")
    ready: float | None
    booting: float | None
    draining: float | None
    spend_usd_per_hour: float | None
    live_instances: int = Field(description="live instance records in the store now")
    paused: bool
    override: OverrideOut | None
    last_decision_at: datetime | None
    last_decision_age_seconds: float | None = Field(description="by the daemon's clock")
    signal: str
    reasons: list[str]
    holding: bool = Field(description=HOLDING)
    hold_reason: str = Field(description="each source and what is wrong with it; empty when not holding")
    sources_read_at: datetime | None = Field(description="when the last tick read the sources; null before")
    sources: list[SourceOut] = Field(description="the pool's metric sources, in policy order")


class PoolDetailOut(PoolOut):
    candidates: list[CandidateOut]
    instances_by_state: dict[str, int]


class CapacityEventOut(BaseModel):
    offering: OfferingOut
    scope: str
    kind: str
    at: datetime
    message: str
    pool: str | None

    @classmethod
    def of(cls, row: CapacityEventRow) -> CapacityEventOut:
        return cls(
            offering=OfferingOut.of(row.offering),
            scope=str(row.scope),
            kind=str(row.kind),
            at=row.at,
            message=row.message,
            pool=row.pool,
        )


class ExplainOut(BaseModel):
    pool: str
    decision: DecisionOut | None = Field(description="the last decision in full; null before the first one")
    control: ControlOut
    capacity_events: list[CapacityEventOut] = Field(
        description="recent capacity events of this pool, newest first"
    )
    holding: bool = Field(description=HOLDING)
    hold_reason: str = Field(description="each source and what is wrong with it; empty when not holding")
    sources_read_at: datetime | None = Field(description="when the last tick read the sources; null before")
    sources: list[SourceOut] = Field(description="the pool's metric sources, in policy order")


class BlockOut(BaseModel):
    cloud: str
    region: str
    zone: str
    instance_type: str
    market: str
    scope: str
    kind: str
    failures: int
    until: datetime
    seconds_left: float
    last_failure_at: datetime
    reason: str
    description: str

    @classmethod
    def of(cls, b: Block, now: datetime) -> BlockOut:
        return cls(
            cloud=b.cloud,
            region=b.region,
            zone=b.zone,
            instance_type=b.instance_type,
            market=str(b.market),
            scope=str(b.scope),
            kind=str(b.kind),
            failures=b.failures,
            until=b.until,
            seconds_left=max(_seconds(b.until, now), 0.0),
            last_failure_at=b.last_failure_at,
            reason=b.reason,
            description=b.describe(),
        )


class CapacityOut(BaseModel):
    blocked: list[BlockOut]
    events: list[CapacityEventOut]


class HistoryOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    from_state: str | None = Field(alias="from")
    to: str
    at: datetime
    reason: str
    edge: str

    @classmethod
    def of(cls, h: HistoryEntry) -> HistoryOut:
        return cls(
            from_state=None if h.frm is None else str(h.frm), to=str(h.to), at=h.at, reason=h.reason, edge=h.edge
        )


class InstanceOut(BaseModel):
    token: str
    pool: str
    offering: OfferingOut
    state: InstanceState
    live: bool
    capacity_units: float
    gpus: int
    price_usd_per_hour: float
    created_at: datetime
    state_since: datetime
    seconds_in_state: float
    cloud_id: str | None
    reason: str

    @classmethod
    def fields_of(cls, r: InstanceRecord, now: datetime) -> dict[str, object]:
        return {
            "token": r.token,
            "pool": r.pool,
            "offering": OfferingOut.of(r.offering),
            "state": r.state,
            "live": r.live,
            "capacity_units": r.capacity_units,
            "gpus": r.gpus,
            "price_usd_per_hour": r.price_usd_per_hour,
            "created_at": r.created_at,
            "state_since": r.state_since,
            "seconds_in_state": max(_seconds(now, r.state_since), 0.0),
            "cloud_id": r.cloud_id,
            "reason": r.reason,
        }

    @classmethod
    def of(cls, r: InstanceRecord, now: datetime) -> InstanceOut:
        return cls.model_validate(cls.fields_of(r, now))


class InstanceDetailOut(InstanceOut):
    history: list[HistoryOut]


class PriceOut(BaseModel):
    cloud: str
    region: str
    zone: str
    instance_type: str
    market: str
    usd_per_hour: float
    gpus: int
    usd_per_gpu_hour: float | None
    observed_at: datetime
    age_seconds: float
    source: str

    @classmethod
    def of(cls, p: PriceRow, now: datetime) -> PriceOut:
        return cls(
            **p.offering.as_labels(),
            usd_per_hour=p.usd_per_hour,
            gpus=p.gpus,
            usd_per_gpu_hour=round(p.usd_per_hour / p.gpus, 6) if p.gpus > 0 else None,
            observed_at=p.observed_at,
            age_seconds=max(_seconds(now, p.observed_at), 0.0),
            source=p.source,
        )


class RevisionOut(BaseModel):
    at: datetime
    sha256: str
    source: str
    accepted: bool
    error: str

    @classmethod
    def of(cls, r: PolicyRevisionRow) -> RevisionOut:
        return cls(at=r.at, sha256=r.sha256, source=r.source, accepted=r.accepted, error=r.error)


class PolicyOut(BaseModel):
    source: str
    sha256: str
    pools: list[str]
    dry_run: bool = Field(False, description="shadow mode (run --dry-run): plans are recorded, never acted on")
    revisions: list[RevisionOut] = Field(description="newest first, rejected ones included")


class ReloadOut(BaseModel):
    accepted: bool
    message: str
    source: str
    sha256: str


class ReloadRejectedOut(BaseModel):
    accepted: bool
    error: str


class UnblockOut(BaseModel):
    unblocked: int


# ------------------------------------------------------------------ service discovery and the status page's chart


class EndpointOut(BaseModel):
    """A ready instance a load balancer may send work to (see autoscaler.discovery)."""

    pool: str
    address: str = Field(description="as the instance's provider lists it")
    port: int = Field(description="the pool's discovery.port")
    metrics_port: int = Field(description="the pool's discovery.metrics_port (the GPU exporter)")
    cloud: str
    region: str
    zone: str
    market: str
    instance_type: str
    capacity_units: float
    token: str
    cloud_id: str | None

    @classmethod
    def of(cls, ep: Endpoint) -> EndpointOut:
        return cls(
            pool=ep.pool,
            address=ep.address,
            port=ep.port,
            metrics_port=ep.metrics_port,
            **{k: v for k, v in ep.offering.as_labels().items() if k != "instance_type"},
            instance_type=ep.offering.instance_type,
            capacity_units=ep.capacity_units,
            token=ep.token,
            cloud_id=ep.cloud_id,
        )


class HistoryPointOut(BaseModel):
    at: datetime
    desired: float
    ready: float
    booting: float
    draining: float
    spend_usd_per_hour: float

    @classmethod
    def of(cls, row: DecisionRow) -> HistoryPointOut:
        d = row.decision
        return cls(
            at=row.at,
            desired=d.desired,
            ready=d.ready,
            booting=d.booting,
            draining=d.draining,
            spend_usd_per_hour=d.spend_usd_per_hour,
        )


class PoolHistoryOut(BaseModel):
    pool: str
    points: list[HistoryPointOut] = Field(description="oldest first; the last decision of each time bucket")


class CapacityHistoryOut(BaseModel):
    since: datetime
    now: datetime
    pools: list[PoolHistoryOut] = Field(description="the pools of the policy in force, in policy order")


# ---- circuit breakers per provider (autoscaler.breaker) ----
class BreakerOut(BaseModel):
    cloud: str
    state: Literal["closed", "open", "half-open"] = Field(
        description="open: the cloud's offerings count as unavailable and no calls are made; half-open: one "
        "probe call decides"
    )
    consecutive_failures: int
    window_failures: int = Field(description="failed calls among the last window_calls calls")
    window_calls: int
    opened_at: datetime | None
    retry_at: datetime | None = Field(description="when an open breaker lets its probe call through")
    times_opened: int
    last_error: str


# ---- end of the circuit breaker block ----
