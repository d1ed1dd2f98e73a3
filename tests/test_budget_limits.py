"""Table tests of the caps in reconcile: worst prices (spot max price, else on-demand), per-pool limits on top of
the global ones, booting instances counted, and the spare spot instance sized by the preemption history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from autoscaler.clock import FakeClock
from autoscaler.config import (
    Candidate,
    DaemonSettings,
    LaunchTemplateConfig,
    Limits,
    Policy,
    Pool,
    PoolLimits,
    Scaling,
    SyntheticSource,
    Targets,
)
from autoscaler.gather import Gatherer
from autoscaler.lifecycle import InstanceState
from autoscaler.model import (
    CapacityEvent,
    Demand,
    FailureKind,
    InstanceRecord,
    Launch,
    Market,
    Offering,
    OfferingKey,
    Preemption,
    Scope,
    Snapshot,
)
from autoscaler.reconcile import reconcile
from autoscaler.store import Store
from policies.limits import WorstPrices

NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
SPOT, OD = 10.0, 30.0


def key(market: Market, zone: str = "sim-east-a", itype: str = "sim.a100x8") -> OfferingKey:
    return OfferingKey("simulated", "sim-east", zone, itype, market)


OFFERINGS = tuple(
    Offering(key(m, z), SPOT if m == Market.SPOT else OD, 8)
    for z in ("sim-east-a", "sim-east-b")
    for m in (Market.SPOT, Market.ON_DEMAND)
)


NO_LIMITS = Limits()
NO_POOL_LIMITS = PoolLimits()


def policy(
    limits: Limits = NO_LIMITS, pool_limits: PoolLimits = NO_POOL_LIMITS, max_price: float | None = None, **sc: Any
) -> Policy:
    templates = {"simulated": LaunchTemplateConfig(extra={"spot_max_price": max_price})} if max_price else {}
    pool = Pool(
        name="chat",
        max_capacity=1000,
        metrics=[SyntheticSource(name="q", type="synthetic", kind="queue")],
        targets=Targets(queue_per_unit=1),
        scaling=Scaling(**sc),
        limits=pool_limits,
        launch_templates=templates,
        candidates=[
            Candidate(cloud="simulated", instance_type="sim.a100x8", market=Market.SPOT, throughput=8),
            Candidate(cloud="simulated", instance_type="sim.a100x8", market=Market.ON_DEMAND, throughput=8),
        ],
    )
    return Policy(daemon=DaemonSettings(limits=limits), pools=[pool])


def booting(token: str, market: Market = Market.SPOT) -> InstanceRecord:
    return InstanceRecord(
        token=token,
        pool="chat",
        offering=key(market),
        state=InstanceState.PROVISIONING,
        capacity_units=8,
        gpus=8,
        price_usd_per_hour=SPOT if market == Market.SPOT else OD,
        created_at=NOW - timedelta(seconds=10),
        state_since=NOW - timedelta(seconds=10),
        cloud_id=f"sim-{token}",
    )


def plan_launches(
    pol: Policy, queue: float, records: tuple[InstanceRecord, ...] = (), **snap: Any
) -> list[Launch]:
    snapshot = Snapshot(
        now=NOW,
        records=records,
        cloud_instances={},  # the listing failed: nothing observed, nothing inferred
        offerings=OFFERINGS,
        blocks=(),
        demand={"chat": Demand(queue, None)},
        scaling_state={},
        controls={},
        tick="t",
        **snap,
    )
    return reconcile(snapshot, pol).of_type(Launch)


@pytest.mark.parametrize(
    ("pol", "records", "expect_spot", "expect_od"),
    [
        # $100/h: spot counted at on-demand's $30 (no max price) -> 3 instances, all spot
        pytest.param(policy(Limits(max_usd_per_hour=100)), (), 3, 0, id="spot-at-on-demand-price"),
        # with a $12 max price: 8 spot instances fit ($96)
        pytest.param(policy(Limits(max_usd_per_hour=100), max_price=12), (), 8, 0, id="spot-at-max-price"),
        # a max price below the spot price counts the spot price
        pytest.param(policy(Limits(max_usd_per_hour=100), max_price=5), (), 10, 0, id="max-price-below-spot"),
        # two booting spot instances count at $30 each: $40 left -> one more
        pytest.param(
            policy(Limits(max_usd_per_hour=100)), (booting("a"), booting("b")), 1, 0, id="booting-counted"
        ),
        # the pool's own $/h cap is tighter than the global one
        pytest.param(
            policy(Limits(max_usd_per_hour=1000), PoolLimits(max_usd_per_hour=65)), (), 2, 0, id="pool-usd-cap"
        ),
        pytest.param(policy(Limits(), PoolLimits(max_instances=4)), (booting("a"),), 3, 0, id="pool-instance-cap"),
        pytest.param(policy(Limits(), PoolLimits(max_gpus=40)), (), 5, 0, id="pool-gpu-cap"),
        pytest.param(policy(Limits(max_gpus=24), PoolLimits(max_gpus=40)), (), 3, 0, id="global-tighter"),
    ],
)
def test_caps_count_booting_and_worst_prices(
    pol: Policy, records: tuple[InstanceRecord, ...], expect_spot: int, expect_od: int
) -> None:
    launches = plan_launches(pol, queue=800, records=records)  # wants 100 instances
    assert sum(lc.offering.market == Market.SPOT for lc in launches) == expect_spot
    assert sum(lc.offering.market == Market.ON_DEMAND for lc in launches) == expect_od


def test_worst_prices() -> None:
    worst = WorstPrices(policy(max_price=12), OFFERINGS)
    assert worst.of("chat", key(Market.SPOT), SPOT) == 12
    assert worst.of("chat", key(Market.ON_DEMAND), OD) == OD
    assert worst.of("other-pool", key(Market.SPOT), SPOT) == OD  # its own template sets no max price
    # a type whose on-demand offering is not listed in that zone: the highest on-demand price of the type
    assert worst.of(None, key(Market.SPOT, zone="sim-east-c"), SPOT) == OD
    assert worst.of(None, key(Market.SPOT, itype="sim.unknown"), 3.0) == 3.0  # nothing better known


@pytest.mark.parametrize(
    ("preempted_ago", "spare_after", "expect_extra"),
    [
        pytest.param((), 2, 0, id="no-preemption-no-spare"),
        pytest.param((60,), 2, 0, id="one-loss-no-spare"),
        pytest.param((60, 120), 2, 1, id="repeated-preemptions-one-spare"),
        pytest.param((60, 7200), 2, 0, id="old-preemption-forgotten"),
        pytest.param((60,), 1, 1, id="threshold-one"),
    ],
)
def test_spare_spot_instance_follows_the_preemption_history(
    preempted_ago: tuple[int, ...], spare_after: int, expect_extra: int
) -> None:
    pol = policy(spare_after_preemptions=spare_after, spare_memory_seconds=3600)
    events = tuple(Preemption(key(Market.SPOT, "sim-east-b"), NOW - timedelta(seconds=s)) for s in preempted_ago)
    launches = plan_launches(pol, queue=16, preemptions=events)  # needs 2 instances
    assert len(launches) == 2 + expect_extra
    assert all(lc.offering.market == Market.SPOT for lc in launches)


def ready(token: str, market: Market) -> InstanceRecord:
    rec = booting(token, market)
    return InstanceRecord(**{**rec.__dict__, "state": InstanceState.READY})


@pytest.mark.parametrize(
    ("records", "expect_launch", "expect_removed"),
    [
        # an on-demand fallback serving while spot is usable: one spot replacement is launched
        pytest.param((ready("od", Market.ON_DEMAND),), "spot", set(), id="launch-replacement"),
        # the replacement boots: the on-demand one keeps serving, nothing is removed, nothing more launched
        pytest.param((ready("od", Market.ON_DEMAND), booting("sp")), None, set(), id="keep-while-booting"),
        # the replacement is ready: the on-demand one (most expensive per unit) goes
        pytest.param((ready("od", Market.ON_DEMAND), ready("sp", Market.SPOT)), None, {"od"}, id="then-remove"),
        # already on the best rank: nothing to do
        pytest.param((ready("sp", Market.SPOT),), None, set(), id="nothing-to-rebalance"),
    ],
)
def test_rebalance_back_to_spot(
    records: tuple[InstanceRecord, ...], expect_launch: str | None, expect_removed: set[str]
) -> None:
    pol = policy()
    snapshot = Snapshot(NOW, records, {}, OFFERINGS, (), {"chat": Demand(8.0, None)}, {}, {}, tick="t")
    plan = reconcile(snapshot, pol)  # the queue asks for 8 units: one instance
    launches = plan.of_type(Launch)
    assert [str(lc.offering.market) for lc in launches] == ([expect_launch] if expect_launch else [])
    removed = {i.token for i in plan.intents if getattr(i, "to", None) == InstanceState.DRAINING}
    assert removed == expect_removed
    off = reconcile(snapshot, policy(rebalance=False)).of_type(Launch)
    assert off == []  # the rule can be turned off


def test_gather_learns_boot_times_and_reads_the_preemption_history(tmp_path: Path) -> None:
    """gather fills Snapshot.boot_times from the records it sees READY (state_since - created_at) and
    Snapshot.preemptions from capacity memory's preemption events within spare_memory_seconds."""
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        for token, boot in (("a", 100.0), ("b", 200.0)):
            rec = ready(token, Market.SPOT)
            store.add_instance(
                InstanceRecord(**{**rec.__dict__, "state_since": rec.created_at + timedelta(seconds=boot)}),
                "test",
                NOW,
            )
        old, recent = NOW - timedelta(hours=5), NOW - timedelta(minutes=5)
        for at in (old, recent):
            event = CapacityEvent(
                key(Market.SPOT, "sim-east-b"), Scope.ZONE, FailureKind.PREEMPTION, "gone", "chat"
            )
            store.record_capacity_event(event, at)
        store.record_capacity_event(
            CapacityEvent(key(Market.ON_DEMAND), Scope.ZONE, FailureKind.CAPACITY, "x"), NOW
        )
        snap = Gatherer(store, FakeClock(NOW)).gather(policy(), {}, {}, {}, {}, "t")
    finally:
        store.close()
    (stats,) = snap.boot_times.values()
    assert (stats.samples, stats.median_seconds) == (2, 150.0)
    assert [p.at for p in snap.preemptions] == [recent]  # the 5 h old one is past the hour of memory


@pytest.mark.parametrize(
    ("preempted_zone", "expect_zones"),
    [
        pytest.param(None, ["sim-east-a"], id="no-history-first-zone"),
        pytest.param("sim-east-a", ["sim-east-b"], id="away-from-the-preempting-zone"),
        pytest.param("sim-east-b", ["sim-east-a"], id="other-zone-preempting"),
    ],
)
def test_spot_spreads_away_from_zones_with_preemption_history(
    preempted_zone: str | None, expect_zones: list[str]
) -> None:
    events = (
        (Preemption(key(Market.SPOT, preempted_zone), NOW - timedelta(seconds=600)),) if preempted_zone else ()
    )
    launches = plan_launches(policy(), queue=8, preemptions=events)  # one instance
    assert [lc.offering.zone for lc in launches] == expect_zones
