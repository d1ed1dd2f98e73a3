"""Edge cases of observe/reconcile/actuate found by review: each once leaked, stalled or over-launched."""

from __future__ import annotations

from pathlib import Path

from autoscaler.errors import TransientError
from autoscaler.lifecycle import InstanceState
from autoscaler.model import CloudInstance, FailureKind, Market, PoolControl
from autoscaler.policyfile import parse_policy
from tests.daemon_harness import Harness

S = InstanceState

WEB = """
daemon: {id: t, tick_seconds: 5}
clouds:
  simulated: {boot_seconds: 10}
pools:
  - name: web
    min_capacity: 3
    max_capacity: 10
    drain_seconds: 600
    candidates:
      - {cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}
      - {cloud: simulated, instance_type: sim.l4x1, market: on-demand, throughput: 1}
"""


def test_an_instance_missing_from_one_listing_is_not_taken_for_lost(tmp_path: Path) -> None:
    h = Harness.start(WEB, tmp_path)
    h.run(ticks=4)
    before = h.live_cloud_ids()
    hidden = sorted(before)[0]
    real = h.cloud.list_instances
    h.cloud.list_instances = lambda: [i for i in real() if i.cloud_id != hidden]  # type: ignore[method-assign]
    h.run(ticks=2)  # 10 s of a lagging listing: within launch_retry_seconds
    h.cloud.list_instances = real  # type: ignore[method-assign]
    h.run(ticks=4)
    assert h.live_cloud_ids() == before
    assert {r.cloud_id for r in h.live_records()} == before
    assert len(h.cloud.all_instances()) == 3, "nothing was launched to replace an instance that never left"
    assert not [e for e in h.store.capacity_events() if e.kind == FailureKind.PREEMPTION]


def test_an_instance_missing_for_longer_is_lost_and_replaced_once(tmp_path: Path) -> None:
    h = Harness.start(WEB, tmp_path)
    h.run(ticks=4)
    hidden = sorted(h.live_cloud_ids())[0]
    real = h.cloud.list_instances
    h.cloud.list_instances = lambda: [i for i in real() if i.cloud_id != hidden]  # type: ignore[method-assign]
    h.run(ticks=16)  # 80 s: past launch_retry_seconds (60 s)
    assert hidden not in {r.cloud_id for r in h.live_records()}
    assert len(h.ready_records()) == 3
    # it comes back after all (the listing was wrong): the pool has its 3 and does not need it, so it is held
    # (not adopted, not terminated) for untracked_grace_seconds (300 s), then terminated: never leaked
    h.cloud.list_instances = real  # type: ignore[method-assign]
    h.run(ticks=2)
    assert hidden in h.live_cloud_ids() and hidden not in {r.cloud_id for r in h.live_records()}
    h.run(ticks=62)
    assert hidden not in h.live_cloud_ids()
    assert {r.cloud_id for r in h.live_records()} == h.live_cloud_ids()
    assert len(h.ready_records()) == 3


def test_a_lost_adopted_instance_that_returns_is_put_back_on_the_books(tmp_path: Path) -> None:
    h = Harness.start(WEB, tmp_path)
    h.run(ticks=4)
    h.restart(fresh_database=True)
    h.run(ticks=2)
    hidden = sorted(h.live_cloud_ids())[0]
    real = h.cloud.list_instances
    h.cloud.list_instances = lambda: [i for i in real() if i.cloud_id != hidden]  # type: ignore[method-assign]
    h.run(ticks=16)
    h.cloud.list_instances = real  # type: ignore[method-assign]
    h.run(ticks=40, seconds=30)
    assert {r.cloud_id for r in h.live_records()} == h.live_cloud_ids(), "every running instance is on the books"
    plan = h.daemon.tick()
    assert plan.intents == (), "a settled fleet needs nothing every tick"


def test_draining_instances_of_a_removed_pool_are_terminated(tmp_path: Path) -> None:
    h = Harness.start(WEB, tmp_path)
    h.run(ticks=4)
    h.store.set_control("web", PoolControl(override_capacity=2))
    h.run(ticks=2)
    assert [r.state for r in h.live_records()].count(S.DRAINING) == 1
    h.loaded = parse_policy(WEB.replace("name: web", "name: api"), "p.yaml")
    h.restart()
    h.run(ticks=4)
    assert all(r.pool == "api" for r in h.live_records())
    assert {r.cloud_id for r in h.live_records()} == h.live_cloud_ids()


def test_fallback_round_does_not_relaunch_what_round_zero_launched_running(tmp_path: Path) -> None:
    """A launch answered RUNNING at once (boot 0) is not in the tick's listing: the fallback must not redo it."""
    h = Harness.start(WEB.replace("boot_seconds: 10", "boot_seconds: 0"), tmp_path)
    h.cloud.inject_fault("capacity", instance_type="sim.l4x1", market=Market.SPOT, zone="sim-east-a", times=1)
    h.daemon.tick()
    assert len(h.cloud.all_instances()) == 3
    h.run(ticks=3)
    assert len(h.cloud.all_instances()) == 3


def test_a_launch_that_keeps_failing_transiently_is_given_up_and_the_next_offering_used(tmp_path: Path) -> None:
    h = Harness.start(WEB, tmp_path)
    h.cloud.inject_fault("transient", market=Market.SPOT, times=10_000)
    h.run(ticks=20)  # 100 s
    ready = h.ready_records()
    assert len(ready) == 3 and {r.offering.market for r in ready} == {Market.ON_DEMAND}
    kinds = {(str(b.kind), str(b.market)) for b in h.store.blocks(now=h.clock.now())}
    assert ("unresponsive", "spot") in kinds
    cancelled = [r for r in h.store.instances(live_only=False) if r.state == S.CANCELLED]
    assert cancelled and all("did not make it" in r.reason for r in cancelled)


def test_a_lost_answer_then_a_preemption_refills_at_once(tmp_path: Path) -> None:
    h = Harness.start(WEB.replace("min_capacity: 3", "min_capacity: 1"), tmp_path)

    def lost_answer(inst: CloudInstance) -> None:
        h.cloud.after_accept = None
        raise TransientError("read timeout")

    h.cloud.after_accept = lost_answer
    h.daemon.tick()
    first = h.cloud.all_instances()[0].cloud_id
    h.cloud.preempt(first)
    h.clock.advance(5)
    h.daemon.tick()
    record = next(r for r in h.store.instances(live_only=False) if r.cloud_id == first)
    assert record.state == S.TERMINATED
    h.run(ticks=4)
    assert len(h.ready_records()) == 1


def test_requested_records_of_a_removed_pool_are_cancelled_not_relaunched(tmp_path: Path) -> None:
    h = Harness.start(WEB, tmp_path)
    h.cloud.inject_fault("transient", times=3)
    h.daemon.tick()
    assert [r.state for r in h.live_records()] == [S.REQUESTED] * 3
    h.loaded = parse_policy(
        WEB.replace("name: web", "name: api").replace("min_capacity: 3", "min_capacity: 0"), "p"
    )
    h.restart()
    h.run(ticks=2)
    assert h.cloud.all_instances() == []
    assert {r.state for r in h.store.instances(live_only=False)} == {S.CANCELLED}


def test_simultaneous_refusals_are_one_failure_of_the_offering(tmp_path: Path) -> None:
    h = Harness.start(WEB.replace("min_capacity: 3", "min_capacity: 6"), tmp_path)
    h.cloud.inject_fault("capacity", market=Market.SPOT, times=100)
    h.daemon.tick()
    spot = [b for b in h.store.blocks(now=h.clock.now()) if b.market == Market.SPOT]
    assert spot and all(b.failures == 1 for b in spot)
    assert all((b.until - h.clock.now()).total_seconds() <= 180 for b in spot)


def test_reload_that_drops_a_cloud_with_live_instances_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(WEB)
    h = Harness.start(WEB, tmp_path, policy_path=path)
    h.run(ticks=3)
    path.write_text("clouds: {}\npools: []\n")
    accepted, message = h.daemon.reload_policy()
    assert not accepted
    assert "simulated (3 live)" in message
    assert h.daemon.policy().policy.pools[0].name == "web"


def test_a_paused_pool_is_observed_but_not_acted_on(tmp_path: Path) -> None:
    h = Harness.start(WEB, tmp_path)
    h.run(ticks=4)
    h.store.set_control("web", PoolControl(paused=True, override_capacity=1))
    h.run(ticks=4)
    assert len(h.ready_records()) == 3, "paused: no removals"
    victim = h.ready_records()[0]
    h.cloud.preempt(victim.cloud_id or "")
    h.run(ticks=2)
    assert len(h.live_records()) == 2, "the loss is observed, but paused means no replacement either"
    h.store.set_control("web", PoolControl())
    h.run(ticks=4)
    assert len(h.ready_records()) == 3


def test_an_untracked_instance_that_ended_but_still_exists_is_deleted() -> None:
    """A stopped VM (GCE keeps it, and its disk bills) with no live record is terminated, not ignored."""
    from datetime import UTC, datetime

    from autoscaler.model import TAG_DAEMON, TAG_INTENT, TAG_POOL, CloudState, OfferingKey, Snapshot, Terminate
    from autoscaler.reconcile import reconcile

    now = datetime(2026, 1, 1, tzinfo=UTC)
    key = OfferingKey("simulated", "sim-east", "sim-east-a", "sim.l4x1", Market.SPOT)
    tags = {TAG_DAEMON: "t", TAG_POOL: "web", TAG_INTENT: "tok"}
    stopped = CloudInstance("vm-1", key, CloudState.STOPPING, now, tags, "preempted")
    gone = CloudInstance("vm-2", key, CloudState.TERMINATED, now, tags, "preempted")
    policy = parse_policy(WEB, "p.yaml").policy
    snap = Snapshot(now, (), {"simulated": (stopped, gone)}, (), (), {}, {}, {}, tick="t")
    plan = reconcile(snap, policy)
    terminated = [i.cloud_id for i in plan.intents if isinstance(i, Terminate)]
    assert terminated == ["vm-1"]
