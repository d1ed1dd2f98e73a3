"""Initial schema: instances and their history, capacity memory, decisions, scaling state, operator controls,
prices, policy revisions.

Revision ID: 0001
Revises:
Create Date: 2024-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = 100
ENUM = 32


def _utc() -> sa.DateTime:
    # autoscaler.store.types.UTCDateTime stores through this type; migrations must not import app types.
    return sa.DateTime(timezone=True)


def _offering_key() -> list[sa.Column[str]]:
    """The five columns of an OfferingKey (fresh objects each call: a Column belongs to one table)."""
    return [
        sa.Column("cloud", sa.String(NAME), nullable=False),
        sa.Column("region", sa.String(NAME), nullable=False),
        sa.Column("zone", sa.String(NAME), nullable=False),
        sa.Column("instance_type", sa.String(NAME), nullable=False),
        sa.Column("market", sa.String(ENUM), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("token", sa.String(NAME), nullable=False),
        sa.Column("pool", sa.String(NAME), nullable=False),
        *_offering_key(),
        sa.Column("state", sa.String(ENUM), nullable=False),
        sa.Column("capacity_units", sa.Double(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("price_usd_per_hour", sa.Double(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("state_since", _utc(), nullable=False),
        sa.Column("cloud_id", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("token", name="pk_instances"),
    )
    op.create_index("ix_instances_pool", "instances", ["pool"])
    op.create_index("ix_instances_state", "instances", ["state"])

    op.create_table(
        "instance_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token", sa.String(NAME), nullable=False),
        sa.Column("frm", sa.String(ENUM), nullable=True),
        sa.Column("to", sa.String(ENUM), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("edge", sa.String(ENUM), nullable=False),
        sa.ForeignKeyConstraint(
            ["token"], ["instances.token"], name="fk_instance_history_token_instances", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_instance_history"),
    )
    op.create_index("ix_instance_history_token", "instance_history", ["token"])

    op.create_table(
        "capacity_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        *_offering_key(),
        sa.Column("scope", sa.String(ENUM), nullable=False),
        sa.Column("kind", sa.String(ENUM), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("pool", sa.String(NAME), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_capacity_events"),
    )
    op.create_index("ix_capacity_events_at", "capacity_events", ["at"])

    op.create_table(
        "capacity_blocks",
        *_offering_key(),
        sa.Column("scope", sa.String(ENUM), nullable=False),
        sa.Column("kind", sa.String(ENUM), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("until", _utc(), nullable=False),
        sa.Column("last_failure_at", _utc(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "cloud", "region", "zone", "instance_type", "market", "scope", name="pk_capacity_blocks"
        ),
    )
    op.create_index("ix_capacity_blocks_until", "capacity_blocks", ["until"])

    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("pool", sa.String(NAME), nullable=False),
        sa.Column("desired", sa.Double(), nullable=False),
        sa.Column("ready", sa.Double(), nullable=False),
        sa.Column("booting", sa.Double(), nullable=False),
        sa.Column("draining", sa.Double(), nullable=False),
        sa.Column("spend_usd_per_hour", sa.Double(), nullable=False),
        sa.Column("signal", sa.Text(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("chosen", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
    )
    op.create_index("ix_decisions_at", "decisions", ["at"])
    op.create_index("ix_decisions_pool_at", "decisions", ["pool", "at"])

    op.create_table(
        "scaling_state",
        sa.Column("pool", sa.String(NAME), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("pool", name="pk_scaling_state"),
    )

    op.create_table(
        "pool_controls",
        sa.Column("pool", sa.String(NAME), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("override_capacity", sa.Double(), nullable=True),
        sa.Column("override_until", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("pool", name="pk_pool_controls"),
    )

    op.create_table(
        "prices",
        *_offering_key(),
        sa.Column("usd_per_hour", sa.Double(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("observed_at", _utc(), nullable=False),
        sa.Column("source", sa.String(NAME), nullable=False),
        sa.PrimaryKeyConstraint("cloud", "region", "zone", "instance_type", "market", name="pk_prices"),
    )

    op.create_table(
        "policy_revisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_policy_revisions"),
    )
    op.create_index("ix_policy_revisions_at", "policy_revisions", ["at"])


def downgrade() -> None:
    op.drop_table("policy_revisions")
    op.drop_table("prices")
    op.drop_table("pool_controls")
    op.drop_table("scaling_state")
    op.drop_table("decisions")
    op.drop_table("capacity_blocks")
    op.drop_table("capacity_events")
    op.drop_table("instance_history")
    op.drop_table("instances")
