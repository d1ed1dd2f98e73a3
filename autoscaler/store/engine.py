"""Engine construction: URL normalisation and the SQLite connection settings the store relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Execution option read by the SQLite "begin" hook. Writers open their transaction with BEGIN IMMEDIATE, which
# takes SQLite's write lock up front: two read-modify-write transactions (a transition, a block upsert) then
# queue on busy_timeout instead of both reading the old row, or the second failing with SQLITE_BUSY_SNAPSHOT
# (which busy_timeout does not retry) when it tries to write from a stale WAL snapshot. Other backends ignore it.
SQLITE_BEGIN = "autoscaler_sqlite_begin"


def normalise_url(url: str | URL) -> URL:
    """Parse `url`; a bare postgresql:// means psycopg 3, the only PostgreSQL driver we depend on."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_store_engine(url: str | URL) -> Engine:
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    # pre_ping: a PostgreSQL failover or restart otherwise surfaces as one failed tick per pooled connection.
    # Timeouts and TCP keepalives: a leader whose network path to the database silently drops packets must not hang
    # in a call for the kernel's minutes-long defaults (the lease, and with it the belief that it leads, runs out
    # meanwhile; see autoscaler.leader). idle_in_transaction_session_timeout: a daemon paused (SIGSTOP, a VM
    # freeze) inside a transaction would otherwise hold its row locks, the lease row's included, for as long as it
    # is paused, and no follower could take over; the server ends such a session instead (every transaction of
    # the store is a few statements with no cloud call inside). Settings given in the URL's query win.
    connect_args = {k: v for k, v in POSTGRES_CONNECT_ARGS.items() if k not in parsed.query}
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


IDLE_IN_TRANSACTION_MS = 5_000
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: data sent and never acknowledged (a silent partition) fails the call
    "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
}


def writer(engine: Engine) -> Engine:
    """The same engine (same pool), with write transactions opened as BEGIN IMMEDIATE on SQLite."""
    return engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:"):
        # One shared connection, so every session sees the same in-memory database; for tests and one-shot
        # tools only (a single connection cannot run transactions from several threads at once).
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        if not url.query.get("uri"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (its legacy mode skips BEGIN before SELECT, which
    # breaks read-then-write atomicity); _sqlite_begin emits BEGIN instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL: readers (the admin API) never block the loop's writes, and the loop's writes never block them.
        cursor.execute("PRAGMA journal_mode = WAL")
        # NORMAL under WAL: a commit survives the daemon's crash (the case crash safety is about); only a power
        # loss can drop the last commits, and those instances are found again by their tags and adopted.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")
