"""The leader lease and its fencing token in the store (PostgreSQL; the database's clock), the elector's local
belief, and the store refusing a stale leader's writes before anything is written."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from autoscaler.config import HaSettings
from autoscaler.leader import LeaderElector
from autoscaler.lifecycle import InstanceState
from autoscaler.model import InstanceRecord, Market, OfferingKey
from autoscaler.store import Fence, StaleLeader, Store
from autoscaler.store import lease as lease_sql

KEY = OfferingKey("aws", "us-east-1", "us-east-1a", "g5.xlarge", Market.ON_DEMAND)
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    with Store.open(postgres_url) as opened:
        yield opened


def record(token: str) -> InstanceRecord:
    return InstanceRecord(
        token=token, pool="llm", offering=KEY, state=InstanceState.PENDING, capacity_units=1, gpus=1,
        price_usd_per_hour=1.0, created_at=NOW, state_since=NOW, reason="test",
    )  # fmt: skip


def test_lease_is_taken_renewed_and_taken_over_only_after_it_expires(store: Store) -> None:
    a = store.acquire_lease("a", 0.6)
    assert a is not None and a.mine and a.holder == "a" and a.token == 1
    b = store.acquire_lease("b", 0.6)
    assert b is not None and not b.mine and b.holder == "a" and b.token == 1
    renewed = store.acquire_lease("a", 0.6)
    assert renewed is not None and renewed.mine and renewed.token == 1  # a renewal keeps the token
    assert renewed.expires_at > a.expires_at
    time.sleep(0.7)
    b = store.acquire_lease("b", 0.6)
    assert b is not None and b.mine and b.token == 2  # a new holder bumps the token
    again = store.acquire_lease("a", 0.6)
    assert again is not None and not again.mine and again.holder == "b"


def test_a_lapsed_holding_gets_a_new_token_even_for_the_same_holder(store: Store) -> None:
    first = store.acquire_lease("a", 0.3)
    time.sleep(0.4)
    second = store.acquire_lease("a", 0.3)
    assert first is not None and second is not None and second.mine
    assert second.token == first.token + 1
    with pytest.raises(StaleLeader, match="is stale"):
        store.check_fence(first.fence)  # what the old holding started is refused
    store.check_fence(second.fence)


def test_stale_fence_writes_nothing_and_the_current_one_writes(store: Store) -> None:
    old = store.acquire_lease("a", 0.3)
    assert old is not None
    store.add_instance(record("t1"), "decided", NOW, fence=old.fence)
    time.sleep(0.4)
    new = store.acquire_lease("b", 5)
    assert new is not None and new.mine
    with pytest.raises(StaleLeader, match="b holds the lease with token 2"):
        store.add_instance(record("t2"), "decided", NOW, fence=old.fence)
    with pytest.raises(StaleLeader):
        store.transition("t1", InstanceState.REQUESTED, "calling the cloud", NOW, fence=old.fence)
    assert store.get_instance("t2") is None
    assert store.get_instance("t1").state == InstanceState.PENDING  # type: ignore[union-attr]
    assert [h.to for h in store.history("t1")] == [InstanceState.PENDING]
    store.transition("t1", InstanceState.REQUESTED, "calling the cloud", NOW, fence=new.fence)
    assert store.get_instance("t1").state == InstanceState.REQUESTED  # type: ignore[union-attr]


def test_an_expired_lease_refuses_its_holder_until_renewed(store: Store) -> None:
    with pytest.raises(StaleLeader, match="never taken"):
        store.check_fence(Fence("a", 1))
    held = store.acquire_lease("a", 0.3)
    assert held is not None
    store.check_fence(held.fence)
    time.sleep(0.4)
    with pytest.raises(StaleLeader, match="expired"):
        store.check_fence(held.fence)


def test_release_hands_over_at_once(store: Store) -> None:
    a = store.acquire_lease("a", 30)
    assert a is not None and a.mine
    assert store.release_lease(a.fence)
    b = store.acquire_lease("b", 30)
    assert b is not None and b.mine and b.token == a.token + 1
    assert not store.release_lease(a.fence)  # not a's to release any more


def test_a_takeover_waits_for_a_fenced_write_in_flight(store: Store, postgres_url: str) -> None:
    """The fence check share-locks the lease row: the new holder's UPDATE commits only after the old holder's
    intent did, so the new leader's first read sees that intent (and retries its launch with the same token)."""
    a = store.acquire_lease("a", 0.3)
    assert a is not None
    took: list[float] = []
    with store._writer.begin() as session:  # a transaction held open on purpose
        lease_sql.check(session, a.fence)
        time.sleep(0.4)  # the lease expires while the fenced transaction is open

        def take() -> None:
            with Store.open(postgres_url) as other:
                state = other.acquire_lease("b", 5)
                assert state is not None and state.mine
                took.append(time.monotonic())

        thread = threading.Thread(target=take)
        thread.start()
        time.sleep(0.5)
        assert not took  # blocked on the share lock
        committed = time.monotonic()
    thread.join(timeout=10)
    assert took and took[0] >= committed


def test_elector_believes_only_until_its_deadline_and_reports_each_change(store: Store) -> None:
    changes: list[tuple[bool, bool, int | None]] = []
    clock = [100.0]
    settings = HaSettings(lease_seconds=2, renew_seconds=1)
    elector = LeaderElector(store, "a", lambda: settings, lambda *c: changes.append(c), lambda: clock[0])
    assert elector.poll().role == "leader"
    assert changes == [(False, True, 1)]
    clock[0] += 1.9
    assert elector.current().role == "leader"
    clock[0] += 0.2  # past the deadline with no renewal (a pause, a cut): no longer believes it leads
    assert elector.current().role == "follower"
    assert changes == [(False, True, 1), (True, False, 1)]
    follower = LeaderElector(store, "b", lambda: settings, lambda *c: None)
    seen = follower.poll()
    assert seen.role == "follower" and seen.leader == "a" and seen.token == 1


def test_a_leader_paused_inside_a_transaction_does_not_block_the_takeover(postgres_url: str) -> None:
    """A daemon stopped (SIGSTOP) between two statements of a transaction keeps its locks, the lease row's share
    lock included, until the server ends its idle session: the store sets idle_in_transaction_session_timeout
    (5 s by default; here 0.3 s through the URL, which wins)."""
    with Store.open(postgres_url) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() == "5s"
    short = f"{postgres_url}?options=-c%20idle_in_transaction_session_timeout%3D300"
    with Store.open(short) as paused, Store.open(postgres_url) as other:
        held = paused.acquire_lease("a", 0.2)
        assert held is not None
        session = paused._writer()  # a transaction left open, as a paused process leaves it
        lease_sql.check(session, held.fence)  # the lease row is share-locked from here
        time.sleep(0.3)  # the lease expires; the session idles in its transaction
        started = time.monotonic()
        took = other.acquire_lease("b", 5)
        assert took is not None and took.mine and took.token == 2
        assert time.monotonic() - started < 2
        with pytest.raises(Exception, match=r"idle-in-transaction|terminat|closed"):
            session.commit()  # the paused one's transaction is gone: nothing it wrote would be kept
        session.close()
