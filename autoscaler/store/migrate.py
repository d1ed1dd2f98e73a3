"""Alembic, configured in code: the migrations ship inside the package and no alembic.ini is needed.

To write a new migration against a scratch database (then edit it by hand and extend tests/test_migrations.py):

    from alembic import command
    from autoscaler.store.migrate import alembic_config
    command.revision(alembic_config("sqlite:////tmp/scratch.db"), message="...", autogenerate=True)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# Alembic keeps the running migration context in a module-level proxy (alembic.context), so two upgrades in
# one process must not overlap. Across processes the database serialises them (see migrations/env.py).
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(url: str | None = None, stdout: TextIO | None = None) -> Config:
    """A Config for the shipped migrations; `url` is needed only when no connection is passed in attributes."""
    cfg = Config(output_buffer=stdout)
    # ConfigParser interpolation: a literal % in a path or password must be doubled.
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to `revision` on `engine`, in one transaction."""
    cfg = alembic_config()
    with _ALEMBIC_LOCK, engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo migrations down to `revision` ("base": an empty database), in one transaction."""
    cfg = alembic_config()
    with _ALEMBIC_LOCK, engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
