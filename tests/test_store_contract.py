"""The store contract: one suite, run against every backend (a SQLite file and a fresh PostgreSQL database)."""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from autoscaler.capacity import MAX_BLOCK, RESET_AFTER
from autoscaler.lifecycle import TRANSITIONS, IllegalTransition, InstanceState
from autoscaler.model import (
    Block,
    CapacityEvent,
    FailureKind,
    InstanceRecord,
    Market,
    Offering,
    OfferingKey,
    PoolControl,
    PoolDecision,
    Recommendation,
    ScalingState,
    Scope,
    Skipped,
)
from autoscaler.store import CapacityEventRow, DecisionRow, HistoryEntry, PolicyRevisionRow, PriceRow, Store

S = InstanceState
T0 = datetime(2024, 11, 27, 12, 0, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))  # a non-UTC offset: the store must hand back the same instant, in UTC
KEY_A = OfferingKey("aws", "us-east-1", "us-east-1a", "p5.48xlarge", Market.SPOT)
KEY_B = dataclasses.replace(KEY_A, zone="us-east-1b")
KEY_WEST = OfferingKey("aws", "us-west-2", "us-west-2a", "p5.48xlarge", Market.SPOT)
KEY_OTHER_TYPE = dataclasses.replace(KEY_A, instance_type="g6.xlarge")
KEY_ON_DEMAND = dataclasses.replace(KEY_A, market=Market.ON_DEMAND)

# A path through the lifecycle that takes every kind of edge, including the READY <-> UNHEALTHY loop.
PATH = [
    S.REQUESTED,
    S.PROVISIONING,
    S.RUNNING,
    S.READY,
    S.UNHEALTHY,
    S.READY,
    S.DRAINING,
    S.TERMINATING,
    S.TERMINATED,
]


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store.open(database_url)
    try:
        yield opened
    finally:
        opened.close()


def make_record(
    token: str = "tok-1",
    *,
    pool: str = "llm",
    state: InstanceState = S.PENDING,
    created_at: datetime = T0,
    key: OfferingKey = KEY_A,
) -> InstanceRecord:
    return InstanceRecord(
        token=token,
        pool=pool,
        offering=key,
        state=state,
        capacity_units=8.0,
        gpus=8,
        price_usd_per_hour=31.464,
        created_at=created_at,
        state_since=created_at,
        reason="scale up",
    )


def failure(key: OfferingKey = KEY_A, scope: Scope = Scope.ZONE, pool: str | None = "llm") -> CapacityEvent:
    return CapacityEvent(
        offering=key, scope=scope, kind=FailureKind.CAPACITY, message="InsufficientInstanceCapacity", pool=pool
    )


def decision(pool: str, desired: float, **extra: Any) -> PoolDecision:
    fields: dict[str, Any] = {
        "ready": 2.0,
        "booting": 1.0,
        "draining": 0.5,
        "spend_usd_per_hour": 62.928,
        "reasons": ("queue depth 40 > target 10", "panic window"),
    }
    return PoolDecision(pool=pool, desired=desired, **(fields | extra))


# ---- instances ----


def test_add_instance_round_trips_and_writes_the_first_history_row(store: Store) -> None:
    record = make_record()
    store.add_instance(record, "intent recorded", T0)

    assert store.get_instance("tok-1") == record
    assert store.get_instance("missing") is None
    assert store.history("tok-1") == [HistoryEntry(None, S.PENDING, T0, "intent recorded", "created")]


def test_add_instance_refuses_an_existing_token(store: Store) -> None:
    store.add_instance(make_record(), "first", T0)
    with pytest.raises(IntegrityError):
        store.add_instance(make_record(pool="other"), "second", T0 + timedelta(seconds=1))
    assert store.get_instance("tok-1") == make_record()
    assert len(store.history("tok-1")) == 1


def test_transition_updates_the_record_and_appends_history(store: Store) -> None:
    store.add_instance(make_record(), "intent", T0)
    t1, t2, t3 = (T0 + timedelta(seconds=s) for s in (1, 30, 90))

    requested = store.transition("tok-1", S.REQUESTED, "launching", t1)
    assert (requested.state, requested.state_since, requested.reason, requested.cloud_id) == (
        S.REQUESTED,
        t1,
        "launching",
        None,
    )
    provisioning = store.transition("tok-1", S.PROVISIONING, "listed", t2, cloud_id="i-0abc")
    assert provisioning.cloud_id == "i-0abc"
    # cloud_id=None means "unchanged", not "clear it"
    running = store.transition("tok-1", S.RUNNING, "cloud says running", t3)
    assert running.cloud_id == "i-0abc"
    assert running == store.get_instance("tok-1")
    assert running == dataclasses.replace(
        make_record(), state=S.RUNNING, state_since=t3, reason="cloud says running", cloud_id="i-0abc"
    )
    assert [(h.frm, h.to, h.at, h.reason, h.edge) for h in store.history("tok-1")[1:]] == [
        (S.PENDING, S.REQUESTED, t1, "launching", "decided"),
        (S.REQUESTED, S.PROVISIONING, t2, "listed", "observed"),
        (S.PROVISIONING, S.RUNNING, t3, "cloud says running", "observed"),
    ]


@pytest.mark.parametrize(
    ("path", "illegal"),
    [([], S.READY), ([S.REQUESTED, S.LAUNCH_FAILED], S.REQUESTED), ([S.CANCELLED], S.PENDING)],
)
def test_an_illegal_transition_raises_and_changes_nothing(
    store: Store, path: list[InstanceState], illegal: InstanceState
) -> None:
    store.add_instance(make_record(), "intent", T0)
    for i, to in enumerate(path, start=1):
        store.transition("tok-1", to, f"step {i}", T0 + timedelta(seconds=i))
    before, history_before = store.get_instance("tok-1"), store.history("tok-1")

    with pytest.raises(IllegalTransition):
        store.transition("tok-1", illegal, "bug", T0 + timedelta(hours=1), cloud_id="i-should-not-stick")

    assert store.get_instance("tok-1") == before
    assert store.history("tok-1") == history_before


def test_transition_of_an_unknown_token_raises_key_error(store: Store) -> None:
    with pytest.raises(KeyError):
        store.transition("nope", S.REQUESTED, "launching", T0)
    assert store.history("nope") == []


def test_history_is_in_applied_order_with_the_table_edges(store: Store) -> None:
    store.add_instance(make_record(), "intent", T0)
    # Two moves share a timestamp: the order they were applied in must still hold.
    ats = [T0 + timedelta(seconds=10 * i) for i in range(1, len(PATH) + 1)]
    ats[3] = ats[2]
    for to, at in zip(PATH, ats, strict=True):
        store.transition("tok-1", to, f"to {to}", at)

    history = store.history("tok-1")
    assert [h.to for h in history] == [S.PENDING, *PATH]
    frms = [None, S.PENDING, *PATH[:-1]]
    assert [h.frm for h in history] == frms
    assert [h.edge for h in history] == ["created"] + [
        str(TRANSITIONS[(frm, to)]) for frm, to in zip([S.PENDING, *PATH[:-1]], PATH, strict=True)
    ]
    assert [h.at for h in history] == [T0, *ats]
    assert store.get_instance("tok-1") is not None
    assert store.instances() == []  # terminated: no longer live


def test_instances_filter_by_liveness_and_pool_ordered_by_creation(store: Store) -> None:
    # Added out of order; "b" and "a" share a creation time, so the token breaks the tie.
    specs = [
        ("c", "llm", T0 + timedelta(minutes=2), S.PENDING),
        ("b", "llm", T0 + timedelta(minutes=1), S.PENDING),
        ("a", "llm", T0 + timedelta(minutes=1), S.PENDING),
        ("x", "embed", T0, S.PENDING),
        ("dead", "llm", T0, S.PENDING),
        ("failed", "llm", T0, S.PENDING),
    ]
    for token, pool, created, state in specs:
        store.add_instance(make_record(token, pool=pool, created_at=created, state=state), "intent", created)
    store.transition("dead", S.CANCELLED, "not needed", T0 + timedelta(minutes=3))
    store.transition("failed", S.REQUESTED, "launching", T0 + timedelta(minutes=3))
    store.transition("failed", S.LAUNCH_FAILED, "stockout", T0 + timedelta(minutes=4))

    assert [r.token for r in store.instances()] == ["x", "a", "b", "c"]
    assert [r.token for r in store.instances(pool="llm")] == ["a", "b", "c"]
    assert [r.token for r in store.instances(live_only=False)] == ["dead", "failed", "x", "a", "b", "c"]
    assert [r.token for r in store.instances(live_only=False, pool="llm")] == ["dead", "failed", "a", "b", "c"]
    assert store.instances(pool="nobody") == []


# ---- capacity memory ----


def test_repeated_failures_double_the_block_up_to_the_cap(store: Store) -> None:
    lengths, failures = [], []
    at = T0
    for _ in range(7):
        block = store.record_capacity_event(failure(), at)
        lengths.append(block.until - at)
        failures.append(block.failures)
        assert block.last_failure_at == at
        at += timedelta(minutes=1)

    assert lengths == [timedelta(minutes=m) for m in (3, 6, 12, 24, 30, 30, 30)]
    assert max(lengths) == MAX_BLOCK
    assert failures == [1, 2, 3, 4, 5, 6, 7]
    assert store.blocks() == [block]
    assert block == Block(
        cloud="aws",
        region="us-east-1",
        zone="us-east-1a",
        instance_type="p5.48xlarge",
        market=Market.SPOT,
        scope=Scope.ZONE,
        kind=FailureKind.CAPACITY,
        failures=7,
        until=T0 + timedelta(minutes=6 + 30),
        last_failure_at=T0 + timedelta(minutes=6),
        reason="InsufficientInstanceCapacity",
    )


def test_a_success_resets_the_backoff(store: Store) -> None:
    for minute in range(3):
        store.record_capacity_event(failure(), T0 + timedelta(minutes=minute))
    assert store.blocks()[0].failures == 3

    assert store.clear_blocks_covering(KEY_A) == 1
    assert store.blocks() == []
    assert store.clear_blocks_covering(KEY_A) == 0

    again = store.record_capacity_event(failure(), T0 + timedelta(minutes=10))
    assert (again.failures, again.until) == (1, T0 + timedelta(minutes=13))


def test_the_failure_count_is_forgotten_after_the_reset_window(store: Store) -> None:
    store.record_capacity_event(failure(), T0)
    store.record_capacity_event(failure(), T0 + timedelta(minutes=1))
    later = T0 + timedelta(minutes=1) + RESET_AFTER
    block = store.record_capacity_event(failure(), later)
    assert (block.failures, block.until) == (1, later + timedelta(minutes=3))


def test_a_region_scope_block_covers_every_zone_of_the_region(store: Store) -> None:
    block = store.record_capacity_event(failure(KEY_A, Scope.REGION), T0)
    assert (block.region, block.zone, block.scope) == ("us-east-1", "", Scope.REGION)
    assert [b.covers(KEY_B) for b in store.blocks()] == [True]
    assert not block.covers(KEY_WEST)

    assert store.clear_blocks_covering(KEY_WEST) == 0
    assert store.clear_blocks_covering(KEY_OTHER_TYPE) == 0
    assert store.clear_blocks_covering(KEY_ON_DEMAND) == 0
    assert store.clear_blocks_covering(KEY_B) == 1  # a success in another zone of the region clears it
    assert store.blocks() == []


def test_zone_and_cloud_scope_blocks_cover_what_their_scope_says(store: Store) -> None:
    store.record_capacity_event(failure(KEY_A, Scope.ZONE), T0)
    assert store.clear_blocks_covering(KEY_B) == 0  # other zone: not covered
    assert store.clear_blocks_covering(KEY_A) == 1

    cloud_block = store.record_capacity_event(failure(KEY_A, Scope.CLOUD), T0)
    assert (cloud_block.region, cloud_block.zone) == ("", "")
    assert store.clear_blocks_covering(KEY_OTHER_TYPE) == 0
    assert store.clear_blocks_covering(KEY_WEST) == 1  # any region of the cloud


def test_each_scope_has_its_own_block_and_backoff(store: Store) -> None:
    store.record_capacity_event(failure(KEY_A, Scope.ZONE), T0)
    store.record_capacity_event(failure(KEY_A, Scope.ZONE), T0 + timedelta(minutes=1))
    store.record_capacity_event(failure(KEY_B, Scope.REGION), T0 + timedelta(minutes=1))
    by_scope = {(b.zone, b.scope): b.failures for b in store.blocks()}
    assert by_scope == {("us-east-1a", Scope.ZONE): 2, ("", Scope.REGION): 1}


def test_blocks_with_now_returns_only_active_ones(store: Store) -> None:
    short = store.record_capacity_event(failure(KEY_A), T0)  # until T0+3m
    store.record_capacity_event(failure(KEY_WEST), T0)
    long = store.record_capacity_event(failure(KEY_WEST), T0 + timedelta(minutes=1))  # until T0+7m

    assert len(store.blocks()) == 2
    assert store.blocks(now=T0 + timedelta(minutes=2)) == [short, long]
    assert store.blocks(now=short.until) == [long]  # until is exclusive
    assert store.blocks(now=T0 + timedelta(hours=1)) == []
    assert len(store.blocks()) == 2  # expired blocks stay: their failure count still matters


def test_unblock_deletes_matching_blocks(store: Store) -> None:
    store.record_capacity_event(failure(KEY_A, Scope.ZONE), T0)
    store.record_capacity_event(failure(KEY_B, Scope.ZONE), T0)
    store.record_capacity_event(failure(KEY_A, Scope.REGION), T0)
    store.record_capacity_event(failure(KEY_WEST, Scope.ZONE), T0)
    store.record_capacity_event(failure(KEY_OTHER_TYPE, Scope.ZONE), T0)
    store.record_capacity_event(failure(KEY_ON_DEMAND, Scope.ZONE), T0)

    assert store.unblock("aws", "p5.48xlarge", Market.SPOT, region="us-east-1", zone="us-east-1a") == 1
    assert store.unblock("aws", "p5.48xlarge", Market.SPOT, region="us-east-1", zone="us-east-1a") == 0
    assert store.unblock("aws", "p5.48xlarge", Market.SPOT, region="us-east-1") == 2  # zone b + region block
    assert store.unblock("gcp", "p5.48xlarge", Market.SPOT) == 0
    assert store.unblock("aws", "p5.48xlarge", Market.SPOT) == 1  # us-west-2a
    remaining = {(b.instance_type, b.market) for b in store.blocks()}
    assert remaining == {("g6.xlarge", Market.SPOT), ("p5.48xlarge", Market.ON_DEMAND)}


def test_capacity_events_are_listed_newest_first(store: Store) -> None:
    store.record_capacity_event(failure(KEY_A, Scope.ZONE, pool="llm"), T0)
    quota = CapacityEvent(KEY_WEST, Scope.REGION, FailureKind.QUOTA, "VcpuLimitExceeded", pool=None)
    store.record_capacity_event(quota, T0 + timedelta(minutes=1))
    store.record_capacity_event(failure(KEY_B, Scope.ZONE, pool="embed"), T0 + timedelta(minutes=1))

    events = store.capacity_events()
    assert events == [
        CapacityEventRow(
            KEY_B, Scope.ZONE, FailureKind.CAPACITY, T0 + timedelta(minutes=1), failure().message, "embed"
        ),
        CapacityEventRow(
            KEY_WEST, Scope.REGION, FailureKind.QUOTA, T0 + timedelta(minutes=1), "VcpuLimitExceeded", None
        ),
        CapacityEventRow(KEY_A, Scope.ZONE, FailureKind.CAPACITY, T0, failure().message, "llm"),
    ]
    assert store.capacity_events(limit=2) == events[:2]
    assert store.capacity_events(kind=FailureKind.QUOTA) == [events[1]]
    assert store.capacity_events(since=T0 + timedelta(seconds=30)) == events[:2]
    assert store.capacity_events(kind=FailureKind.CAPACITY, since=T0 + timedelta(seconds=30)) == [events[0]]
    assert store.capacity_events(kind=FailureKind.PREEMPTION) == []


def test_capacity_memory_and_instances_survive_a_restart(database_url: str) -> None:
    first = Store.open(database_url)
    first.add_instance(make_record(), "intent", T0)
    first.transition("tok-1", S.REQUESTED, "launching", T0 + timedelta(seconds=1))
    first.record_capacity_event(failure(KEY_A, Scope.ZONE), T0)
    first.record_capacity_event(failure(KEY_A, Scope.ZONE), T0 + timedelta(minutes=1))
    first.record_capacity_event(failure(KEY_WEST, Scope.REGION), T0)
    blocks, history = first.blocks(), first.history("tok-1")
    first.close()

    second = Store.open(database_url)  # a restarted daemon: migrations are already at head
    try:
        assert second.blocks() == blocks
        assert second.history("tok-1") == history
        # The backoff continues where it stopped instead of starting over.
        third = second.record_capacity_event(failure(KEY_A, Scope.ZONE), T0 + timedelta(minutes=2))
        assert (third.failures, third.until - third.last_failure_at) == (3, timedelta(minutes=12))
        assert len(second.capacity_events()) == 4
    finally:
        second.close()


# ---- decisions, scaling state, controls ----


def test_decisions_round_trip_newest_first(store: Store) -> None:
    skipped = (Skipped("aws/us-east-1a/p5.48xlarge/spot", "blocked until 12:03"), Skipped("gcp/a3", "over budget"))
    first = {
        "llm": decision("llm", 4.0, chosen=("aws/us-east-1b/p5.48xlarge/spot",), skipped=skipped, signal="queue"),
        "embed": decision("embed", 1.0),
    }
    second = {"llm": decision("llm", 5.5, signal="latency"), "embed": decision("embed", 0.0, reasons=())}
    store.record_decisions(T0, first)
    store.record_decisions(T0 + timedelta(seconds=15), second)

    t1 = T0 + timedelta(seconds=15)
    assert store.decisions() == [
        DecisionRow(t1, second["embed"]),
        DecisionRow(t1, second["llm"]),
        DecisionRow(T0, first["embed"]),
        DecisionRow(T0, first["llm"]),
    ]
    assert store.decisions(pool="llm") == [DecisionRow(t1, second["llm"]), DecisionRow(T0, first["llm"])]
    assert store.decisions(pool="llm", limit=1) == [DecisionRow(t1, second["llm"])]
    assert store.decisions(limit=3)[-1] == DecisionRow(T0, first["embed"])
    assert store.decisions(pool="none") == []
    # the round trip keeps tuple types, so rows compare equal to the Plan's decisions
    assert store.decisions(pool="llm")[1].decision.skipped == skipped


def test_record_decisions_refuses_a_decision_filed_under_another_pool(store: Store) -> None:
    with pytest.raises(ValueError, match="filed under"):
        store.record_decisions(T0, {"llm": decision("embed", 1.0)})
    assert store.decisions() == []


def test_scaling_state_round_trips(store: Store) -> None:
    assert store.load_scaling_state() == {}
    llm = ScalingState(
        recommendations=(
            Recommendation(T0, 2.0),
            Recommendation((T0 + timedelta(seconds=15)).astimezone(PLUS2), 3.25),
        ),
        panic_until=T0 + timedelta(minutes=1),
        last_desired=3.25,
    )
    store.save_scaling_state({"llm": llm, "embed": ScalingState()})
    loaded = store.load_scaling_state()
    assert loaded == {"llm": llm, "embed": ScalingState()}
    assert all(r.at.tzinfo == UTC for r in loaded["llm"].recommendations)

    calmer = ScalingState(recommendations=(Recommendation(T0 + timedelta(minutes=5), 1.0),), last_desired=1.0)
    store.save_scaling_state({"llm": calmer})
    store.save_scaling_state({})
    assert store.load_scaling_state() == {"llm": calmer, "embed": ScalingState()}


def test_controls_are_set_and_overwritten(store: Store) -> None:
    assert store.controls() == {}
    store.set_control("llm", PoolControl(paused=True))
    store.set_control("embed", PoolControl(override_capacity=4.0, override_until=T0 + timedelta(hours=2)))
    assert store.controls() == {
        "llm": PoolControl(paused=True),
        "embed": PoolControl(override_capacity=4.0, override_until=T0 + timedelta(hours=2)),
    }
    store.set_control("llm", PoolControl())
    assert store.controls()["llm"] == PoolControl()
    assert len(store.controls()) == 2


# ---- prices and policy revisions ----


def test_prices_are_upserted_per_offering_key(store: Store) -> None:
    observed = T0 - timedelta(hours=6)
    store.record_prices(
        [
            Offering(KEY_A, 12.5, 8, price_observed_at=observed, price_source="spot-history"),
            Offering(KEY_WEST, 13.0, 8),
        ],
        T0,
    )
    assert store.prices() == [
        PriceRow(KEY_A, 12.5, 8, observed, "spot-history"),
        PriceRow(KEY_WEST, 13.0, 8, T0, "catalog"),
    ]

    later = T0 + timedelta(minutes=10)
    store.record_prices([Offering(KEY_A, 99.0, 8), Offering(KEY_A, 11.0, 8, price_source="api")], later)
    store.record_prices([], later)
    assert store.prices() == [PriceRow(KEY_A, 11.0, 8, later, "api"), PriceRow(KEY_WEST, 13.0, 8, T0, "catalog")]


def test_prices_in_bulk(store: Store) -> None:
    offerings = [
        Offering(OfferingKey("gcp", "us-central1", f"us-central1-{i}", "a3-highgpu-8g", Market.SPOT), 20.0 + i, 8)
        for i in range(1200)  # more than one statement's worth
    ]
    store.record_prices(offerings, T0)
    assert len(store.prices()) == 1200
    assert {p.usd_per_hour for p in store.prices()} == {20.0 + i for i in range(1200)}


def test_policy_revisions_newest_first(store: Store) -> None:
    store.record_policy_revision(at=T0, sha256="a" * 64, source="/etc/p.yaml", text="pools: {}", accepted=True)
    store.record_policy_revision(
        at=T0 + timedelta(minutes=1), sha256="b" * 64, source="/etc/p.yaml", text="pools: [", accepted=False,
        error="/etc/p.yaml:1:8: expected a mapping",
    )  # fmt: skip
    revisions = store.policy_revisions()
    assert revisions == [
        PolicyRevisionRow(
            T0 + timedelta(minutes=1),
            "b" * 64,
            "/etc/p.yaml",
            "pools: [",
            False,
            "/etc/p.yaml:1:8: expected a mapping",
        ),
        PolicyRevisionRow(T0, "a" * 64, "/etc/p.yaml", "pools: {}", True, ""),
    ]
    assert store.policy_revisions(limit=1) == revisions[:1]


# ---- time ----


def _datetimes(value: object) -> Iterator[datetime]:
    if isinstance(value, datetime):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _datetimes(getattr(value, f.name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _datetimes(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _datetimes(item)


def test_every_returned_datetime_is_timezone_aware_utc(store: Store) -> None:
    at = T0.astimezone(PLUS2)  # the same instant, written with another offset
    record = dataclasses.replace(make_record(), created_at=at, state_since=at)
    store.add_instance(record, "intent", at)
    store.transition("tok-1", S.REQUESTED, "launching", at + timedelta(seconds=1))
    store.record_capacity_event(failure(), at)
    store.record_decisions(at, {"llm": decision("llm", 1.0)})
    store.save_scaling_state({"llm": ScalingState((Recommendation(at, 1.0),), panic_until=at)})
    store.set_control("llm", PoolControl(override_capacity=1.0, override_until=at))
    store.record_prices([Offering(KEY_A, 1.0, 1, price_observed_at=at), Offering(KEY_B, 1.0, 1)], at)
    store.record_policy_revision(at=at, sha256="c" * 64, source="x", text="", accepted=True)

    readers: dict[str, Callable[[], object]] = {
        "get_instance": lambda: store.get_instance("tok-1"),
        "instances": store.instances,
        "history": lambda: store.history("tok-1"),
        "blocks": store.blocks,
        "capacity_events": store.capacity_events,
        "decisions": store.decisions,
        "load_scaling_state": store.load_scaling_state,
        "controls": store.controls,
        "prices": store.prices,
        "policy_revisions": store.policy_revisions,
    }
    for name, read in readers.items():
        found = list(_datetimes(read()))
        assert found, name
        for value in found:
            assert value.tzinfo is UTC, (name, value)
            assert T0 <= value <= T0 + timedelta(minutes=3), (name, value)
    assert store.get_instance("tok-1") == dataclasses.replace(
        record, created_at=T0, state_since=T0 + timedelta(seconds=1), state=S.REQUESTED, reason="launching"
    )


def test_naive_datetimes_are_refused(store: Store) -> None:
    naive = datetime(2024, 11, 27, 12, 0)
    with pytest.raises(ValueError, match="naive"):
        store.add_instance(make_record(), "intent", naive)
    store.add_instance(make_record(), "intent", T0)
    with pytest.raises(ValueError, match="naive"):
        store.transition("tok-1", S.REQUESTED, "launching", naive)
    with pytest.raises(ValueError, match="naive"):
        store.record_capacity_event(failure(), naive)
    with pytest.raises(ValueError, match="naive"):
        store.save_scaling_state({"llm": ScalingState(panic_until=naive)})
    assert store.history("tok-1") == [HistoryEntry(None, S.PENDING, T0, "intent", "created")]
    assert store.blocks() == [] and store.capacity_events() == [] and store.load_scaling_state() == {}


# ---- concurrency ----


def _race(workers: int, attempt: Callable[[int], bool]) -> list[bool]:
    """Run attempt(i) on `workers` threads released together; returns who succeeded."""
    barrier = threading.Barrier(workers)
    results: list[bool | BaseException] = [False] * workers

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(i)
        except BaseException as exc:  # reported below, so a crash in a thread fails the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return [r is True for r in results]


def test_concurrent_transitions_on_one_token_have_one_winner_per_edge(store: Store) -> None:
    store.add_instance(make_record(), "intent", T0)
    for step, to in enumerate(PATH, start=1):
        at = T0 + timedelta(seconds=step)

        def attempt(i: int, to: InstanceState = to, at: datetime = at) -> bool:
            try:
                store.transition("tok-1", to, f"worker {i}", at)
            except IllegalTransition:
                return False
            return True

        assert sum(_race(8, attempt)) == 1, to

    history = store.history("tok-1")
    assert [h.to for h in history] == [S.PENDING, *PATH]
    assert all(h.frm == prev.to for prev, h in itertools.pairwise(history))


def test_concurrent_flapping_loses_no_history(store: Store) -> None:
    store.add_instance(make_record(state=S.READY), "adopted", T0)
    flip = {S.READY: S.UNHEALTHY, S.UNHEALTHY: S.READY}
    rounds = 15

    def attempt(i: int) -> bool:
        moved = 0
        for n in range(rounds):
            current = store.get_instance("tok-1")
            assert current is not None
            try:
                store.transition("tok-1", flip[current.state], f"worker {i} round {n}", T0 + timedelta(seconds=n))
            except IllegalTransition:
                continue  # another worker flipped it between our read and our write
            moved += 1
        counts[i] = moved
        return True

    counts = [0] * 6
    assert all(_race(6, attempt))
    history = store.history("tok-1")
    assert len(history) == 1 + sum(counts)
    assert sum(counts) >= rounds
    assert all(h.frm == prev.to for prev, h in itertools.pairwise(history))
    final = store.get_instance("tok-1")
    assert final is not None and final.state == history[-1].to


def test_concurrent_failures_on_one_scope_are_all_counted(store: Store) -> None:
    workers = 8
    assert all(_race(workers, lambda i: store.record_capacity_event(failure(pool=f"p{i}"), T0) is not None))
    (block,) = store.blocks()
    assert block.failures == workers
    assert len(store.capacity_events()) == workers


# ---- SQLite specifics ----


def test_sqlite_file_store_creates_its_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "state.db"
    with Store.open(f"sqlite:///{path}") as opened:
        opened.add_instance(make_record(), "intent", T0)
        with opened.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    assert path.exists()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent in the file


# ---- retention ----


def test_prune_drops_old_history_and_keeps_what_still_matters(store: Store) -> None:
    old, recent = T0, T0 + timedelta(days=30)
    store.add_instance(make_record("ended-old", state=S.TERMINATED, created_at=old), "gone", old)
    store.add_instance(make_record("live-old", state=S.READY, created_at=old), "serving", old)
    store.add_instance(make_record("ended-new", state=S.TERMINATED, created_at=recent), "gone", recent)
    store.record_capacity_event(failure(), old)
    store.record_capacity_event(failure(KEY_B), recent)
    store.record_decisions(old, {"llm": decision("llm", 1.0)})
    store.record_decisions(recent, {"llm": decision("llm", 2.0)})
    store.record_policy_revision(at=old, sha256="a" * 64, source="p", text="1", accepted=True)
    store.record_policy_revision(at=old, sha256="b" * 64, source="p", text="2", accepted=True)
    store.record_policy_revision(at=old, sha256="", source="p", text="3", accepted=False, error="bad")

    counts = store.prune(recent - timedelta(days=1))

    assert counts == {"decisions": 1, "capacity_events": 1, "instances": 1, "policy_revisions": 1}
    assert store.get_instance("ended-old") is None and store.history("ended-old") == []
    assert store.get_instance("live-old") is not None, "a live instance is never pruned, however old"
    assert store.get_instance("ended-new") is not None
    assert [e.offering for e in store.capacity_events()] == [KEY_B]
    assert len(store.blocks()) == 2, "blocks keep their failure counts"
    assert [d.decision.desired for d in store.decisions()] == [2.0]
    # the revision in force (newest accepted) and the rejected one after it stay
    assert [r.text for r in store.policy_revisions()] == ["3", "2"]
    assert store.prune(recent - timedelta(days=1)) == dict.fromkeys(counts, 0)
