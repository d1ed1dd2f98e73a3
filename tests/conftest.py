# ---- PostgreSQL for the store tests (self-contained: keep this block at the top) ----
from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.aws_fake import FakeEC2

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USERS = ("postgres", "root")  # trust auth; which role exists depends on how the server was set up


@functools.cache
def _probe_postgres() -> tuple[str | None, str]:
    """(user that can connect, "") or (None, why not). Cached: one probe per test session."""
    try:
        import psycopg
    except ImportError as exc:
        return None, f"psycopg is not installed ({exc})"
    errors = []
    for user in POSTGRES_USERS:
        try:
            with psycopg.connect(
                host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname="postgres", connect_timeout=3
            ):
                return user, ""
        except psycopg.Error as exc:
            errors.append(f"{user}: {str(exc).strip()}")
    return None, "; ".join(errors)


def require_postgres() -> str:
    """Return the role to connect to the local PostgreSQL server as, or end the test when there is none.

    An unreachable server skips the test, unless GPU_AUTOSCALER_REQUIRE_SERVICES=1 (CI sets it), in which case
    the test fails with the same reason, so that a CI run can never pass by skipping the PostgreSQL half.
    """
    user, error = _probe_postgres()
    if user is None:
        reason = f"PostgreSQL not reachable at {POSTGRES_HOST}:{POSTGRES_PORT}: {error}"
        if os.environ.get("GPU_AUTOSCALER_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return user


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (postgresql+psycopg) to a freshly created, uniquely named database, dropped afterwards."""
    user = require_postgres()
    import psycopg
    from psycopg import sql

    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        with psycopg.connect(
            host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty database on each backend the store supports: a SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        # A directory that does not exist yet: Store.open must create it.
        return f"sqlite:///{tmp_path_factory.mktemp('store')}/state/autoscaler.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


# ---- end of the PostgreSQL block ----


# ---- AWS: moto's EC2 server behind tests/aws_fake.py ----


@pytest.fixture(scope="session")
def fake_ec2_server() -> Iterator[FakeEC2]:
    """One fake EC2 endpoint on 127.0.0.1 for the whole session (moto's state is process-global). Imported here,
    not at the top: loading moto costs a second that tests without AWS need not pay."""
    from tests.aws_fake import fake_ec2_fixture

    # boto3's standard credential chain, fed with test keys: the fake accepts any, and nothing real is used.
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        yield from fake_ec2_fixture()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def fake_ec2(fake_ec2_server: FakeEC2) -> FakeEC2:
    """The fake EC2 endpoint, emptied for this test."""
    fake_ec2_server.reset()
    return fake_ec2_server
