"""Instances remember their address as the provider lists it (service discovery: endpoints, file_sd, nginx).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: existing rows learn their address from the next listing (see autoscaler.discovery).
    # Plain ALTER TABLE, not batch mode: on SQLite a batch rebuild drops the table, and with foreign keys on
    # that would cascade to instance_history. SQLite >= 3.35 adds and drops columns in place.
    op.add_column("instances", sa.Column("address", sa.String(255), nullable=True))


def downgrade() -> None:
    op.drop_column("instances", "address")
