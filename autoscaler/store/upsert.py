"""INSERT ... ON CONFLICT on the primary key, for the two backends the store supports.

A read-then-insert would race between replicas sharing a PostgreSQL database (both read "absent", the second
insert fails); the database's own upsert does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from autoscaler.store.tables import Base

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
BATCH = 500  # rows per statement: well under SQLite's bound-parameter limit for our widest table


def upsert(session: Session, table: type[Base], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows`, or overwrite every non-key column of the row already holding the same key."""
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        stmt = _insert(session, table).values(list(batch))
        keys = _primary_key(table)
        update = {name: stmt.excluded[name] for name in batch[0] if name not in keys}
        session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update))


def insert_if_absent(session: Session, table: type[Base], row: Mapping[str, Any]) -> bool:
    """Insert `row` unless its key exists (or is being inserted by a concurrent transaction); True if inserted."""
    keys = _primary_key(table)
    stmt = _insert(session, table).values(dict(row)).on_conflict_do_nothing(index_elements=keys)
    # RETURNING, not rowcount: psycopg reports rowcount -1 for this statement.
    inserted = session.execute(stmt.returning(inspect(table).primary_key[0])).first()
    return inserted is not None


def _primary_key(table: type[Base]) -> list[str]:
    return [column.name for column in inspect(table).primary_key]


def _insert(session: Session, table: type[Base]) -> postgresql.Insert | sqlite.Insert:
    backend = session.get_bind().dialect.name
    if backend == "postgresql":
        return postgresql.insert(table)
    if backend == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the store supports {', '.join(SUPPORTED_BACKENDS)}, not {backend}")
