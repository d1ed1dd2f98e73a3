"""The leader lease and its fencing token (high availability on PostgreSQL).

Several daemons share one PostgreSQL database; the one holding the lease row is the leader and the only one that
actuates. Every time is the database's clock (clock_timestamp()), so the hosts' clocks may disagree freely.

- `acquire`: one statement that takes the lease when it is free or expired, or renews it for its holder. The
  fencing token is bumped whenever a new holding begins: another holder, or the same holder after its lease
  lapsed (writes it started under the old token are then refused too, which is the safe side).
- `check`: run inside a write transaction; locks the lease row FOR SHARE and raises StaleLeader unless the
  caller's (holder, token) still holds an unexpired lease. The lock makes the order strict: a takeover's UPDATE
  waits for a fenced transaction in flight, so either that transaction's intent is committed before the new
  leader's first read (it sees it, and retries the launch with the same idempotency token), or the transaction
  sees the new token and fails before anything is written or any cloud is called.

SQLite is single-node (one daemon per file, enforced by a lock file in autoscaler.leader): it has no leases.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from autoscaler.store.types import as_utc

LEASE = "leader"  # the one lease of a database: every daemon sharing it competes for it

_ACQUIRE = text(
    """
    WITH t AS (SELECT clock_timestamp() AS now)
    INSERT INTO leader_lease AS l (name, holder, token, acquired_at, renewed_at, expires_at)
    SELECT :name, :holder, 1, t.now, t.now, t.now + make_interval(secs => :seconds) FROM t
    ON CONFLICT (name) DO UPDATE SET
        token = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > EXCLUDED.renewed_at
                     THEN l.token ELSE l.token + 1 END,
        acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > EXCLUDED.renewed_at
                           THEN l.acquired_at ELSE EXCLUDED.acquired_at END,
        holder = EXCLUDED.holder,
        renewed_at = EXCLUDED.renewed_at,
        expires_at = EXCLUDED.expires_at
    WHERE l.holder = EXCLUDED.holder OR l.expires_at <= EXCLUDED.renewed_at
    RETURNING l.holder, l.token, l.acquired_at, l.expires_at, l.renewed_at
    """
)
_READ = text(
    "SELECT holder, token, acquired_at, expires_at, clock_timestamp() AS now FROM leader_lease WHERE name = :name"
)
_CHECK = text(
    "SELECT holder, token, expires_at, clock_timestamp() AS now FROM leader_lease WHERE name = :name FOR SHARE"
)
_RELEASE = text(
    "UPDATE leader_lease SET expires_at = clock_timestamp() "
    "WHERE name = :name AND holder = :holder AND token = :token AND expires_at > clock_timestamp()"
)


class StaleLeader(Exception):
    """A write fenced with a token that no longer holds the lease: this daemon is not the leader (any more)."""


@dataclass(frozen=True)
class Fence:
    """What a leader's writes carry: who it is and the token of its holding."""

    holder: str
    token: int


@dataclass(frozen=True)
class LeaseState:
    """The lease as the database saw it at `db_now`. `mine` is True when the caller holds it."""

    holder: str
    token: int
    acquired_at: datetime
    expires_at: datetime
    db_now: datetime
    mine: bool

    @property
    def fence(self) -> Fence:
        return Fence(self.holder, self.token)

    @property
    def expired(self) -> bool:
        return self.expires_at <= self.db_now


def acquire(session: Session, holder: str, seconds: float, name: str = LEASE) -> LeaseState | None:
    """Take or renew the lease for `seconds` from now (database time). Returns the lease as it is afterwards:
    mine=True when `holder` holds it; None when no one has ever held it and the insert lost a race (rare)."""
    row = session.execute(_ACQUIRE, {"name": name, "holder": holder, "seconds": seconds}).first()
    if row is not None:
        got_holder, token, acquired_at, expires_at, renewed_at = row
        return LeaseState(got_holder, token, as_utc(acquired_at), as_utc(expires_at), as_utc(renewed_at), True)
    return read(session, holder, name)


def read(session: Session, holder: str = "", name: str = LEASE) -> LeaseState | None:
    row = session.execute(_READ, {"name": name}).first()
    if row is None:
        return None
    got_holder, token, acquired_at, expires_at, now = row
    state = LeaseState(got_holder, token, as_utc(acquired_at), as_utc(expires_at), as_utc(now), False)
    return replace(state, mine=got_holder == holder and not state.expired)


def check(session: Session, fence: Fence, name: str = LEASE) -> None:
    """Raise StaleLeader unless `fence` holds the unexpired lease; the row stays share-locked until the caller's
    transaction ends, so no takeover can commit in between."""
    row = session.execute(_CHECK, {"name": name}).first()
    if row is None:
        raise StaleLeader(f"fencing token {fence.token} refused: no one holds the lease (it was never taken)")
    holder, token, expires_at, now = row
    if holder != fence.holder or token != fence.token:
        raise StaleLeader(
            f"fencing token {fence.token} of {fence.holder} is stale: {holder} holds the lease with token {token}"
        )
    if expires_at <= now:
        raise StaleLeader(
            f"fencing token {fence.token} of {fence.holder} refused: the lease expired at "
            f"{as_utc(expires_at).isoformat()} (database time {as_utc(now).isoformat()})"
        )


def release(session: Session, fence: Fence, name: str = LEASE) -> bool:
    """End the holding now (a clean shutdown), so a follower takes over at its next try. True if it was held."""
    result = session.execute(_RELEASE, {"name": name, "holder": fence.holder, "token": fence.token})
    return bool(result.rowcount)  # type: ignore[attr-defined]
