"""The schema: SQLAlchemy 2 typed ORM tables. Migrations in migrations/versions must match this exactly
(tests/test_migrations.py runs Alembic's autogenerate comparison on SQLite and PostgreSQL).

Enums are stored as short strings, not database enum types: a new state or market is then a code change
only, with no ALTER TYPE migration on PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Double, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from autoscaler.store.types import UTCDateTime

# Deterministic constraint names, so that migrations can name what they create and later ones can drop it.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME = 100  # cloud, region, zone, instance type, pool, token: short identifiers
ENUM = 32  # InstanceState, Market, Scope, FailureKind, Edge values
ADDRESS = 255  # an IPv4 or IPv6 address, or a host name where a provider gives one instead


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class InstanceTable(Base):
    __tablename__ = "instances"

    token: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    pool: Mapped[str] = mapped_column(String(NAME), index=True)
    cloud: Mapped[str] = mapped_column(String(NAME))
    region: Mapped[str] = mapped_column(String(NAME))
    zone: Mapped[str] = mapped_column(String(NAME))
    instance_type: Mapped[str] = mapped_column(String(NAME))
    market: Mapped[str] = mapped_column(String(ENUM))
    state: Mapped[str] = mapped_column(String(ENUM), index=True)
    capacity_units: Mapped[float] = mapped_column(Double)
    gpus: Mapped[int] = mapped_column(Integer)
    price_usd_per_hour: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state_since: Mapped[datetime] = mapped_column(UTCDateTime)
    cloud_id: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(String(ADDRESS))  # migration 0002


class InstanceHistoryTable(Base):
    __tablename__ = "instance_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token: Mapped[str] = mapped_column(String(NAME), ForeignKey("instances.token", ondelete="CASCADE"), index=True)
    frm: Mapped[str | None] = mapped_column(String(ENUM))
    to: Mapped[str] = mapped_column(String(ENUM))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)
    edge: Mapped[str] = mapped_column(String(ENUM))


class CapacityEventTable(Base):
    __tablename__ = "capacity_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cloud: Mapped[str] = mapped_column(String(NAME))
    region: Mapped[str] = mapped_column(String(NAME))
    zone: Mapped[str] = mapped_column(String(NAME))
    instance_type: Mapped[str] = mapped_column(String(NAME))
    market: Mapped[str] = mapped_column(String(ENUM))
    scope: Mapped[str] = mapped_column(String(ENUM))
    kind: Mapped[str] = mapped_column(String(ENUM))
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    message: Mapped[str] = mapped_column(Text)
    pool: Mapped[str | None] = mapped_column(String(NAME))


class CapacityBlockTable(Base):
    """One row per blocked scope; the key is capacity.scope_key (unpinned parts are "")."""

    __tablename__ = "capacity_blocks"

    cloud: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    region: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    zone: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    instance_type: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    market: Mapped[str] = mapped_column(String(ENUM), primary_key=True)
    scope: Mapped[str] = mapped_column(String(ENUM), primary_key=True)
    kind: Mapped[str] = mapped_column(String(ENUM))
    failures: Mapped[int] = mapped_column(Integer)
    until: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)


class DecisionTable(Base):
    """One row per pool per tick: the PoolDecision, with its lists as JSON."""

    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_pool_at", "pool", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    pool: Mapped[str] = mapped_column(String(NAME))
    desired: Mapped[float] = mapped_column(Double)
    ready: Mapped[float] = mapped_column(Double)
    booting: Mapped[float] = mapped_column(Double)
    draining: Mapped[float] = mapped_column(Double)
    spend_usd_per_hour: Mapped[float] = mapped_column(Double)
    signal: Mapped[str] = mapped_column(Text)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    chosen: Mapped[list[str]] = mapped_column(JSON)
    skipped: Mapped[list[dict[str, str]]] = mapped_column(JSON)


class ScalingStateTable(Base):
    __tablename__ = "scaling_state"

    pool: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)


class PoolControlTable(Base):
    __tablename__ = "pool_controls"

    pool: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean)
    override_capacity: Mapped[float | None] = mapped_column(Double)
    override_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PriceTable(Base):
    """The latest price seen per offering key."""

    __tablename__ = "prices"

    cloud: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    region: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    zone: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    instance_type: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    market: Mapped[str] = mapped_column(String(ENUM), primary_key=True)
    usd_per_hour: Mapped[float] = mapped_column(Double)
    gpus: Mapped[int] = mapped_column(Integer)
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(NAME))


class PolicyRevisionTable(Base):
    __tablename__ = "policy_revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    accepted: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str] = mapped_column(Text)


class LeaderLeaseTable(Base):
    """High availability on PostgreSQL (see autoscaler.store.lease): one row per lease, `token` is the fencing
    token, bumped whenever a new holding begins. Times are the database's own clock."""

    __tablename__ = "leader_lease"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    token: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
