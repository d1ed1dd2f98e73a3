"""The hand-written Alembic migrations against the ORM, on every backend; and the migrations as package data."""

from __future__ import annotations

import fnmatch
import io
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, inspect

from autoscaler.store import Store
from autoscaler.store.migrate import MIGRATIONS, alembic_config, current_revision, downgrade, upgrade
from autoscaler.store.tables import Base

REPO = Path(__file__).resolve().parents[1]
TABLES = {
    "instances",
    "instance_history",
    "capacity_events",
    "capacity_blocks",
    "decisions",
    "scaling_state",
    "pool_controls",
    "prices",
    "policy_revisions",
    "leader_lease",  # 0003: high availability on PostgreSQL
}


def _differences(store: Store, metadata: MetaData) -> list[object]:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_upgrade_head_matches_the_orm_exactly(database_url: str) -> None:
    with Store.open(database_url) as store:
        assert set(inspect(store.engine).get_table_names()) == TABLES | {"alembic_version"}
        assert set(Base.metadata.tables) == TABLES
        assert _differences(store, Base.metadata) == []


def test_the_comparison_sees_drift(database_url: str) -> None:
    """Guard for the test above: a schema that differs from the ORM is reported."""
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["prices"].append_column(Column("spot_interruption_rate", Integer, nullable=True))
    drifted.remove(drifted.tables["pool_controls"])
    with Store.open(database_url) as store:
        kinds = sorted(diff[0] for diff in _differences(store, drifted) if isinstance(diff, tuple))
    assert kinds == ["add_column", "remove_table"]


def test_head_revision_is_recorded_and_downgrade_to_base_empties_the_database(database_url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == "0003"
    with Store.open(database_url) as store:
        assert current_revision(store.engine) == head
        downgrade(store.engine, "base")
        assert current_revision(store.engine) is None
        assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
        upgrade(store.engine)
        assert current_revision(store.engine) == head
        assert _differences(store, Base.metadata) == []


def test_replicas_opening_a_fresh_database_together_all_succeed(database_url: str) -> None:
    """Each replica runs `upgrade head` on start; they must not race to create the same tables."""
    script = "import sys; from autoscaler.store import Store; Store.open(sys.argv[1]).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, database_url], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, errors
    with Store.open(database_url) as store:
        assert _differences(store, Base.metadata) == []


@pytest.mark.parametrize("url", ["sqlite:///offline.db", "postgresql+psycopg://nobody@nowhere/none"])
def test_offline_mode_renders_the_schema_as_sql(url: str) -> None:
    out = io.StringIO()
    command.upgrade(alembic_config(url, stdout=out), "head", sql=True)
    sql = out.getvalue()
    for table in TABLES:
        assert f"CREATE TABLE {table} " in sql
    assert "alembic_version" in sql


def test_every_migration_file_is_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["autoscaler"]
    package = REPO / "autoscaler"
    shipped = [
        p.relative_to(package).as_posix()
        for p in MIGRATIONS.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert "store/migrations/env.py" in shipped
    assert "store/migrations/script.py.mako" in shipped
    assert "store/migrations/versions/0001_initial.py" in shipped
    assert "store/migrations/versions/0003_leader_lease.py" in shipped
    missing = [f for f in shipped if not any(fnmatch.fnmatchcase(f, pattern) for pattern in patterns)]
    assert missing == []
