"""The repository: every read and write of the daemon's database goes through Store.

Each method runs in its own Session and transaction, so a Store is shared freely between threads (the loop,
the actuation pool, the admin API). Methods return the model's frozen dataclasses or the rows in rows.py,
never ORM objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any

from sqlalchemy import Delete, Engine, and_, delete, or_, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from autoscaler import capacity, lifecycle
from autoscaler.lifecycle import FINAL_STATES, InstanceState
from autoscaler.model import (
    Block,
    CapacityEvent,
    FailureKind,
    InstanceRecord,
    Market,
    Offering,
    OfferingKey,
    PoolControl,
    PoolDecision,
    ScalingState,
    Scope,
)
from autoscaler.store import convert, lease
from autoscaler.store.engine import create_store_engine, normalise_url, writer
from autoscaler.store.lease import Fence, LeaseState
from autoscaler.store.migrate import upgrade
from autoscaler.store.rows import (
    CREATED_EDGE,
    CapacityEventRow,
    DecisionRow,
    HistoryEntry,
    PolicyRevisionRow,
    PriceRow,
)
from autoscaler.store.tables import (
    CapacityBlockTable,
    CapacityEventTable,
    DecisionTable,
    InstanceHistoryTable,
    InstanceTable,
    PolicyRevisionTable,
    PoolControlTable,
    PriceTable,
    ScalingStateTable,
)
from autoscaler.store.types import as_utc
from autoscaler.store.upsert import SUPPORTED_BACKENDS, insert_if_absent, upsert

_BLOCK_KEY = ("cloud", "region", "zone", "instance_type", "market", "scope")


class Store:
    def __init__(self, engine: Engine) -> None:
        """Wrap an engine whose database is already at the head migration; use Store.open() otherwise."""
        self.engine = engine
        self._reader = sessionmaker(engine, expire_on_commit=False)
        self._writer = sessionmaker(writer(engine), expire_on_commit=False)

    @classmethod
    def open(cls, url: str | URL) -> Store:
        """Connect to `url` (sqlite:///path or postgresql+psycopg://...) and migrate it to the newest schema."""
        backend = normalise_url(url).get_backend_name()
        if backend not in SUPPORTED_BACKENDS:
            raise ValueError(f"unsupported database {backend!r}: use one of {', '.join(SUPPORTED_BACKENDS)}")
        engine = create_store_engine(url)
        try:
            upgrade(writer(engine))
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._reader.begin() as session:
            yield session

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._writer.begin() as session:
            yield session

    # ---- instances ----

    def add_instance(
        self, record: InstanceRecord, reason: str, at: datetime, *, fence: Fence | None = None
    ) -> None:
        """Insert a new record and its first history row; a token that exists already raises IntegrityError.
        With a `fence`, only while it holds the leader lease (else StaleLeader, and nothing is written)."""
        at = as_utc(at)
        with self._writing() as session:
            if fence is not None:
                lease.check(session, fence)
            session.add(convert.instance_row(record))
            session.flush()  # the history row's foreign key needs the instance row first
            session.add(
                InstanceHistoryTable(
                    token=record.token, frm=None, to=str(record.state), at=at, reason=reason, edge=CREATED_EDGE
                )
            )

    def transition(
        self,
        token: str,
        to: InstanceState,
        reason: str,
        at: datetime,
        cloud_id: str | None = None,
        *,
        fence: Fence | None = None,
    ) -> InstanceRecord:
        """Move a record along one lifecycle edge and append it to the history, atomically.

        Raises KeyError for an unknown token and lifecycle.IllegalTransition for a move not in the table; either
        way nothing is written. The row is locked (FOR UPDATE; BEGIN IMMEDIATE on SQLite) from the read of the
        current state to the commit, so of several concurrent callers asking for the same edge exactly one wins.
        With a `fence`, only while it holds the leader lease (else StaleLeader, and nothing is written).
        """
        at = as_utc(at)
        with self._writing() as session:
            if fence is not None:
                lease.check(session, fence)
            row = session.scalars(
                select(InstanceTable).where(InstanceTable.token == token).with_for_update()
            ).one_or_none()
            if row is None:
                raise KeyError(token)
            move = lifecycle.transition(InstanceState(row.state), to, reason)
            row.state = str(move.to)
            row.state_since = at
            row.reason = reason
            if cloud_id is not None:
                row.cloud_id = cloud_id
            session.add(
                InstanceHistoryTable(
                    token=token, frm=str(move.frm), to=str(move.to), at=at, reason=reason, edge=str(move.edge)
                )
            )
            session.flush()
            return convert.instance_record(row)

    def get_instance(self, token: str) -> InstanceRecord | None:
        with self._reading() as session:
            row = session.get(InstanceTable, token)
            return None if row is None else convert.instance_record(row)

    def instances(self, *, live_only: bool = True, pool: str | None = None) -> list[InstanceRecord]:
        query = select(InstanceTable).order_by(InstanceTable.created_at, InstanceTable.token)
        if live_only:
            query = query.where(InstanceTable.state.not_in([str(s) for s in FINAL_STATES]))
        if pool is not None:
            query = query.where(InstanceTable.pool == pool)
        with self._reading() as session:
            return [convert.instance_record(row) for row in session.scalars(query)]

    def set_addresses(self, addresses: Mapping[str, str | None]) -> int:
        """Record the address each token's instance has now (as its provider lists it); unknown tokens are
        ignored. Not a lifecycle move, so no history row. Returns the number of records changed."""
        if not addresses:
            return 0
        changed = 0
        with self._writing() as session:
            rows = session.scalars(select(InstanceTable).where(InstanceTable.token.in_(sorted(addresses))))
            for row in rows:
                if row.address != addresses[row.token]:
                    row.address = addresses[row.token]
                    changed += 1
        return changed

    def decision_history(self, *, since: datetime, pool: str | None = None) -> list[DecisionRow]:
        """Decisions at or after `since`, oldest first (the status page's chart)."""
        t = DecisionTable
        query = select(t).where(t.at >= as_utc(since)).order_by(t.at, t.pool, t.id)
        if pool is not None:
            query = query.where(t.pool == pool)
        with self._reading() as session:
            return [convert.decision(row) for row in session.scalars(query)]

    def history(self, token: str) -> list[HistoryEntry]:
        """The record's moves in the order they were applied (oldest first); [] for an unknown token."""
        query = select(InstanceHistoryTable).where(InstanceHistoryTable.token == token)
        with self._reading() as session:
            return [convert.history_entry(row) for row in session.scalars(query.order_by(InstanceHistoryTable.id))]

    # ---- capacity memory ----

    def record_capacity_event(self, event: CapacityEvent, at: datetime) -> Block:
        """Append the event and extend (or create) the block for its scope, in one transaction."""
        at = as_utc(at)
        with self._writing() as session:
            session.add(
                CapacityEventTable(
                    **convert.key_columns(event.offering),
                    scope=str(event.scope),
                    kind=str(event.kind),
                    at=at,
                    message=event.message,
                    pool=event.pool,
                )
            )
            return _extend_block(session, event, at)

    def blocks(self, *, now: datetime | None = None) -> list[Block]:
        query = select(CapacityBlockTable).order_by(*(getattr(CapacityBlockTable, c) for c in _BLOCK_KEY))
        if now is not None:
            query = query.where(CapacityBlockTable.until > as_utc(now))
        with self._reading() as session:
            return [convert.block(row) for row in session.scalars(query)]

    def clear_blocks_covering(self, key: OfferingKey) -> int:
        """A launch of `key` succeeded: forget every block that covers it (zone, region or cloud scope)."""
        t = CapacityBlockTable
        covering = or_(
            t.scope == str(Scope.CLOUD),
            and_(
                t.region == key.region,
                or_(t.scope == str(Scope.REGION), and_(t.scope == str(Scope.ZONE), t.zone == key.zone)),
            ),
        )
        return self._delete(
            delete(t).where(
                t.cloud == key.cloud, t.instance_type == key.instance_type, t.market == str(key.market), covering
            )
        )

    def unblock(self, cloud: str, instance_type: str, market: Market, region: str = "", zone: str = "") -> int:
        """Admin action: delete the blocks on cloud/instance_type/market, narrowed by region and zone when given
        (compared literally: region="us-east-1" does not delete a cloud-scope block, whose region is "")."""
        t = CapacityBlockTable
        query = delete(t).where(t.cloud == cloud, t.instance_type == instance_type, t.market == str(market))
        if region:
            query = query.where(t.region == region)
        if zone:
            query = query.where(t.zone == zone)
        return self._delete(query)

    def capacity_events(
        self, *, limit: int = 100, kind: FailureKind | None = None, since: datetime | None = None
    ) -> list[CapacityEventRow]:
        """Newest first; only those of `kind` and at or after `since` when given."""
        t = CapacityEventTable
        query = select(t).order_by(t.at.desc(), t.id.desc()).limit(limit)
        if kind is not None:
            query = query.where(t.kind == kind.value)
        if since is not None:
            query = query.where(t.at >= as_utc(since))
        with self._reading() as session:
            return [convert.capacity_event(row) for row in session.scalars(query)]

    def _delete(self, query: Delete) -> int:
        with self._writing() as session:
            result = session.connection().execute(query)
            return result.rowcount

    # ---- decisions ----

    def record_decisions(self, at: datetime, decisions: Mapping[str, PoolDecision]) -> None:
        at = as_utc(at)
        for pool, decision in decisions.items():
            if decision.pool != pool:
                raise ValueError(f"decision for pool {decision.pool!r} filed under {pool!r}")
        with self._writing() as session:
            session.add_all(convert.decision_row(at, pool, d) for pool, d in decisions.items())

    def decisions(self, *, pool: str | None = None, limit: int = 50) -> list[DecisionRow]:
        """Newest tick first; within one tick, by pool name."""
        t = DecisionTable
        query = select(t).order_by(t.at.desc(), t.pool, t.id.desc()).limit(limit)
        if pool is not None:
            query = query.where(t.pool == pool)
        with self._reading() as session:
            return [convert.decision(row) for row in session.scalars(query)]

    # ---- scaling state ----

    def save_scaling_state(self, states: Mapping[str, ScalingState]) -> None:
        """Upsert the given pools' states; pools not in `states` keep what they had."""
        rows = [{"pool": pool, "state": convert.scaling_state_json(s)} for pool, s in sorted(states.items())]
        if rows:
            with self._writing() as session:
                upsert(session, ScalingStateTable, rows)

    def load_scaling_state(self) -> dict[str, ScalingState]:
        with self._reading() as session:
            return {
                row.pool: convert.scaling_state(row.state) for row in session.scalars(select(ScalingStateTable))
            }

    # ---- operator controls ----

    def controls(self) -> dict[str, PoolControl]:
        query = select(PoolControlTable).order_by(PoolControlTable.pool)
        with self._reading() as session:
            return {row.pool: convert.control(row) for row in session.scalars(query)}

    def set_control(self, pool: str, control: PoolControl) -> None:
        row: dict[str, Any] = {"pool": pool, **convert.control_columns(control)}
        if control.override_until is not None:
            row["override_until"] = as_utc(control.override_until)
        with self._writing() as session:
            upsert(session, PoolControlTable, [row])

    # ---- prices ----

    def record_prices(self, offerings: Sequence[Offering], at: datetime) -> None:
        """Upsert the latest price per offering key, observed at the offering's price_observed_at (else `at`)."""
        at = as_utc(at)
        rows: dict[OfferingKey, dict[str, Any]] = {}
        for offering in offerings:  # one row per key (the last wins): a statement may not hit a key twice
            observed = at if offering.price_observed_at is None else as_utc(offering.price_observed_at)
            rows[offering.key] = {
                **convert.key_columns(offering.key),
                "usd_per_hour": offering.price_usd_per_hour,
                "gpus": offering.gpus,
                "observed_at": observed,
                "source": offering.price_source,
            }
        if rows:
            with self._writing() as session:
                upsert(session, PriceTable, [rows[key] for key in sorted(rows)])

    def prices(self) -> list[PriceRow]:
        t = PriceTable
        query = select(t).order_by(t.cloud, t.region, t.zone, t.instance_type, t.market)
        with self._reading() as session:
            return [convert.price(row) for row in session.scalars(query)]

    # ---- policy revisions ----

    def record_policy_revision(
        self, *, at: datetime, sha256: str, source: str, text: str, accepted: bool, error: str = ""
    ) -> None:
        row = PolicyRevisionTable(
            at=as_utc(at), sha256=sha256, source=source, text=text, accepted=accepted, error=error
        )
        with self._writing() as session:
            session.add(row)

    def policy_revisions(self, *, limit: int = 20) -> list[PolicyRevisionRow]:
        """Newest first."""
        t = PolicyRevisionTable
        query = select(t).order_by(t.at.desc(), t.id.desc()).limit(limit)
        with self._reading() as session:
            return [convert.policy_revision(row) for row in session.scalars(query)]

    # ---- leader lease (high availability on PostgreSQL; see autoscaler.store.lease) ----

    @property
    def supports_leases(self) -> bool:
        """Only PostgreSQL is shared by several daemons; SQLite is single-node (autoscaler.leader.SingleNodeLock)."""
        return self.engine.dialect.name == "postgresql"

    def acquire_lease(self, holder: str, seconds: float) -> LeaseState | None:
        """Take or renew the leader lease for `seconds` of database time; the state says who holds it after."""
        self._need_leases()
        with self._writing() as session:
            return lease.acquire(session, holder, seconds)

    def lease(self) -> LeaseState | None:
        """The leader lease as it is now (None: never taken)."""
        self._need_leases()
        with self._reading() as session:
            return lease.read(session)

    def check_fence(self, fence: Fence) -> None:
        """Raise StaleLeader unless `fence` still holds the lease (the last check before a cloud call that has
        no intent row of its own to write)."""
        with self._writing() as session:
            lease.check(session, fence)

    def release_lease(self, fence: Fence) -> bool:
        self._need_leases()
        with self._writing() as session:
            return lease.release(session, fence)

    def _need_leases(self) -> None:
        if not self.supports_leases:
            raise NotImplementedError(f"leader leases need PostgreSQL, not {self.engine.dialect.name}")

    # ---- retention ----

    def prune(self, before: datetime) -> dict[str, int]:
        """Delete history older than `before`: decisions, capacity events, ended instances (with their history)
        and superseded policy revisions. Live instances, blocks (their failure counts still matter), controls,
        prices and the policy revision in force are never pruned. Returns rows deleted per table."""
        before = as_utc(before)
        ended = [str(s) for s in FINAL_STATES]
        in_force = (
            select(PolicyRevisionTable.id)
            .where(PolicyRevisionTable.accepted.is_(True))
            .order_by(PolicyRevisionTable.id.desc())
            .limit(1)
        )
        old_instances = select(InstanceTable.token).where(
            InstanceTable.state.in_(ended), InstanceTable.state_since < before
        )
        counts: dict[str, int] = {}
        with self._writing() as session:
            conn = session.connection()
            counts["decisions"] = conn.execute(delete(DecisionTable).where(DecisionTable.at < before)).rowcount
            counts["capacity_events"] = conn.execute(
                delete(CapacityEventTable).where(CapacityEventTable.at < before)
            ).rowcount
            conn.execute(delete(InstanceHistoryTable).where(InstanceHistoryTable.token.in_(old_instances)))
            counts["instances"] = conn.execute(
                delete(InstanceTable).where(InstanceTable.state.in_(ended), InstanceTable.state_since < before)
            ).rowcount
            # The revision in force (the newest accepted) and everything after it stay.
            keep_from = conn.execute(in_force).scalar_one_or_none()
            counts["policy_revisions"] = conn.execute(
                delete(PolicyRevisionTable).where(
                    PolicyRevisionTable.at < before, PolicyRevisionTable.id < (keep_from or 0)
                )
            ).rowcount
        return counts


def _extend_block(session: Session, event: CapacityEvent, at: datetime) -> Block:
    """Read the scope's block under a row lock, compute its successor with capacity.record_failure, write it."""
    key = dict(zip(_BLOCK_KEY, capacity.scope_key(event.offering, event.scope), strict=True))
    query = select(CapacityBlockTable).filter_by(**key).with_for_update()
    # Two attempts: the first insert of a scope can lose to a concurrent one (another replica), and then the
    # second read finds that row, locks it and extends it.
    for _ in range(2):
        row = session.scalars(query).one_or_none()
        block = capacity.record_failure(None if row is None else convert.block(row), event, at)
        columns = convert.block_columns(block)
        if row is not None:
            for name, value in columns.items():
                setattr(row, name, value)
            return block
        if insert_if_absent(session, CapacityBlockTable, columns):
            return block
    raise RuntimeError(f"could not record a block for {event.offering} ({event.scope} scope)")
