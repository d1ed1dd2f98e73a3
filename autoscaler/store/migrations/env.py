"""Alembic environment. Store.open passes its own connection in `config.attributes["connection"]`; without
one (alembic's command line, `alembic_config(url)`), an engine is made from sqlalchemy.url."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from autoscaler.store.engine import create_store_engine, writer
from autoscaler.store.tables import Base

# Any fixed number: every daemon replica takes the same PostgreSQL advisory lock, so replicas starting together
# run the migrations one after the other instead of racing to create the same tables.
MIGRATION_LOCK_ID = 7_215_634_001

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and sqlalchemy.url is not set")
    engine = create_store_engine(url)
    try:
        with writer(engine).begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
