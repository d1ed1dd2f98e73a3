"""The daemon's database: SQLAlchemy 2 ORM over SQLite (default) or PostgreSQL (HA), with Alembic migrations
shipped in the package and applied by Store.open()."""

from autoscaler.store.lease import Fence, LeaseState, StaleLeader
from autoscaler.store.rows import CapacityEventRow, DecisionRow, HistoryEntry, PolicyRevisionRow, PriceRow
from autoscaler.store.store import Store

__all__ = [
    "CapacityEventRow",
    "DecisionRow",
    "Fence",
    "HistoryEntry",
    "LeaseState",
    "PolicyRevisionRow",
    "PriceRow",
    "StaleLeader",
    "Store",
]
