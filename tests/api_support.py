"""A small real DaemonControl for the admin API tests: a SQLite store, a fake clock, a policy file.

Shared by tests/test_api.py and tests/test_cli_client.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn

from autoscaler.lifecycle import InstanceState
from autoscaler.metrics import Metrics
from autoscaler.model import (
    CapacityEvent,
    FailureKind,
    InstanceRecord,
    Market,
    Offering,
    OfferingKey,
    PoolDecision,
    Scope,
    Skipped,
    Snapshot,
)
from autoscaler.policyfile import LoadedPolicy, PolicyError, load_default_policy, load_policy
from autoscaler.store import Store

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
TOKEN = "s3cret-admin-token"
POOL = "demo-llm"  # the built-in default policy's one pool

H100_SPOT = OfferingKey("simulated", "sim-east", "sim-east-a", "sim.h100x8", Market.SPOT)
A100_SPOT = OfferingKey("simulated", "sim-east", "sim-east-b", "sim.a100x8", Market.SPOT)
A100_OD = OfferingKey("simulated", "sim-east", "sim-east-a", "sim.a100x8", Market.ON_DEMAND)


@dataclass
class FakeClock:
    t: datetime = T0

    def now(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@dataclass
class TestControl:
    """Implements autoscaler.api.control.DaemonControl the way the daemon does, minus the loop."""

    __test__ = False  # not a pytest test class

    store: Store
    clock: FakeClock
    policy_path: Path
    loaded: LoadedPolicy = field(default_factory=load_default_policy)
    metrics: Metrics = field(default_factory=Metrics)
    alive: tuple[bool, str] = (True, "last tick 3s ago")
    ready: tuple[bool, str] = (True, "a tick completed 3s ago")
    last_snapshot: Snapshot | None = None  # the daemon sets it at the end of each tick; tests set it by hand
    dry_run: bool = False

    def policy(self) -> LoadedPolicy:
        return self.loaded

    def reload_policy(self) -> tuple[bool, str]:
        now = self.clock.now()
        try:
            new = load_policy(self.policy_path)
        except PolicyError as exc:
            text = self.policy_path.read_text(encoding="utf-8") if self.policy_path.exists() else ""
            sha = hashlib.sha256(text.encode()).hexdigest()
            self.store.record_policy_revision(
                at=now, sha256=sha, source=str(self.policy_path), text=text, accepted=False, error=str(exc)
            )
            return False, str(exc)
        self.loaded = new
        self.store.record_policy_revision(
            at=now, sha256=new.sha256, source=new.source, text=new.text, accepted=True
        )
        return True, f"policy {new.sha256[:12]} from {new.source} is in force"

    def health(self) -> tuple[bool, str]:
        return self.alive

    def readiness(self) -> tuple[bool, str]:
        return self.ready


def make_control(tmp_path: Path) -> TestControl:
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    return TestControl(store=store, clock=FakeClock(), policy_path=tmp_path / "policy.yaml")


def record(token: str, key: OfferingKey, state: InstanceState, price: float, pool: str = POOL) -> InstanceRecord:
    return InstanceRecord(
        token=token,
        pool=pool,
        offering=key,
        state=state,
        capacity_units=8.0,
        gpus=8,
        price_usd_per_hour=price,
        created_at=T0 - timedelta(minutes=10),
        state_since=T0 - timedelta(minutes=10),
    )


DECISION = PoolDecision(
    pool=POOL,
    desired=24.0,
    ready=8.0,
    booting=8.0,
    draining=0.0,
    spend_usd_per_hour=26.22,
    reasons=("queue 120 / 5 per unit needs 24 units", "burst: scaling up at once [panic window 60s]"),
    chosen=("simulated/sim-east-b/sim.a100x8/spot x1 (rank 2)",),
    skipped=(Skipped("simulated/sim-east-a/sim.h100x8/spot", "blocked: capacity until 12:03:00"),),
    signal="queue request-queue=120",
)


def seed(control: TestControl) -> None:
    """A fleet, a block, a decision, prices and a policy revision, written through the real store API."""
    store, at = control.store, T0 - timedelta(minutes=10)
    store.add_instance(record("tok-ready", A100_SPOT, InstanceState.PENDING, 13.11), "scale up", at)
    for to in (InstanceState.REQUESTED, InstanceState.PROVISIONING, InstanceState.RUNNING, InstanceState.READY):
        store.transition("tok-ready", to, f"now {to}", at, cloud_id="sim-1" if to == InstanceState.READY else None)
    store.add_instance(record("tok-boot", A100_SPOT, InstanceState.PENDING, 13.11), "burst", T0)
    store.add_instance(record("tok-gone", A100_OD, InstanceState.PENDING, 32.77), "scale up", at)
    store.transition("tok-gone", InstanceState.CANCELLED, "dropped before launch", at)
    store.record_capacity_event(
        CapacityEvent(H100_SPOT, Scope.ZONE, FailureKind.CAPACITY, "InsufficientInstanceCapacity", POOL),
        T0 - timedelta(seconds=60),
    )
    store.record_decisions(T0 - timedelta(seconds=5), {POOL: DECISION})
    store.record_prices(
        [
            Offering(A100_SPOT, 13.11, 8, price_observed_at=T0 - timedelta(seconds=90), price_source="simulated"),
            Offering(H100_SPOT, 39.33, 8, price_observed_at=T0 - timedelta(seconds=30), price_source="simulated"),
        ],
        T0,
    )
    loaded = control.loaded
    store.record_policy_revision(
        at=T0, sha256=loaded.sha256, source=loaded.source, text=loaded.text, accepted=True
    )


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free port of 127.0.0.1 in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
