"""Kill the actuation at every step, restart, and check that the store and the cloud agree: nothing launched
twice, nothing left unknown, the pool at its size."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import pytest

from autoscaler.lifecycle import InstanceState
from autoscaler.model import (
    TAG_DAEMON,
    TAG_INTENT,
    TAG_POOL,
    Adopt,
    CloudInstance,
    FailureKind,
    Launch,
    PoolControl,
    Terminate,
)
from tests.aws_fake import FakeEC2
from tests.azure_fake import FakeARM, fake_arm
from tests.daemon_harness import Harness
from tests.test_aws_daemon import AwsRig
from tests.test_aws_daemon import policy as aws_policy
from tests.test_azure_daemon import A100 as AZURE_A100
from tests.test_azure_daemon import AzureRig
from tests.test_azure_daemon import policy as azure_policy

__all__ = ["fake_arm"]  # a fixture used below

POLICY = """
daemon: {id: crash-test, tick_seconds: 5}
clouds:
  simulated:
    boot_seconds: 10
pools:
  - name: web
    min_capacity: 3
    max_capacity: 10
    candidates:
      - {cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}
"""


class Crash(BaseException):
    """A process death: not an Exception, so no handler in the daemon swallows it."""


def crash_once_at(point: str) -> object:
    fired = {"done": False}

    def hook(at: str, launch: Launch | CloudInstance) -> None:
        if at == point and not fired["done"]:
            fired["done"] = True
            raise Crash(point)

    return hook


def assert_store_and_cloud_agree(h: Harness, expected: int) -> None:
    listed = [i for i in h.cloud.list_instances() if i.state.value != "terminated"]
    records = h.live_records()
    by_cloud_id = {r.cloud_id: r for r in records}
    # nothing left unknown: every instance of ours in the cloud has a live record, and vice versa
    assert {i.cloud_id for i in listed} == set(by_cloud_id), (listed, records)
    # nothing launched twice: one instance per intent token, and no more instances than the pool needs
    tokens = [i.tags[TAG_INTENT] for i in listed]
    assert len(tokens) == len(set(tokens))
    assert len(listed) == expected
    assert all(r.state == InstanceState.READY for r in records)
    assert h.cloud.calls["launch"] >= expected
    assert len(h.cloud.all_instances()) == expected, "the cloud made more instances than were ever needed"


@pytest.mark.parametrize("point", ["before_intent", "after_intent", "after_requested", "after_answer"])
def test_crash_in_actuation_then_restart(tmp_path: Path, point: str) -> None:
    h = Harness.start(POLICY, tmp_path, crash_hook=crash_once_at(point))
    with pytest.raises(Crash):
        h.daemon.tick()
    h.restart()
    h.run(ticks=6)
    assert_store_and_cloud_agree(h, expected=3)


def test_crash_after_the_cloud_accepted_before_it_answered(tmp_path: Path) -> None:
    h = Harness.start(POLICY, tmp_path)

    def accepted(inst: CloudInstance) -> None:
        h.cloud.after_accept = None  # the process dies once
        raise Crash(f"after the cloud accepted {inst.cloud_id}")

    h.cloud.after_accept = accepted
    with pytest.raises(Crash):
        h.daemon.tick()
    made = h.cloud.all_instances()
    assert len(made) >= 1, "the cloud made the instance before the crash"
    h.restart()
    h.run(ticks=6)
    assert_store_and_cloud_agree(h, expected=3)
    # the instance made before the crash is one of the three: its record was found by its token
    assert made[0].cloud_id in {r.cloud_id for r in h.live_records()}


def test_every_point_in_one_run(tmp_path: Path) -> None:
    """Crash at each point in turn in the same deployment, restarting after each."""
    h = Harness.start(POLICY, tmp_path)
    for point in ["before_intent", "after_intent", "after_requested", "after_answer"]:
        h.restart(crash_hook=crash_once_at(point))
        # make room for new launches: terminate one ready instance by hand, the pool must refill it
        ready = h.ready_records()
        if ready:
            h.cloud.preempt(ready[0].cloud_id or "")
            h.clock.advance(1)
        with contextlib.suppress(Crash):
            h.run(ticks=3)
    h.restart()
    h.run(ticks=8)
    listed = [i for i in h.cloud.list_instances() if i.state.value != "terminated"]
    assert {i.cloud_id for i in listed} == {r.cloud_id for r in h.live_records()}
    assert len(listed) == 3


def test_lost_database_adopts_the_fleet(tmp_path: Path) -> None:
    h = Harness.start(POLICY, tmp_path)
    h.run(ticks=4)
    before = h.live_cloud_ids()
    assert len(before) == 3
    h.restart(fresh_database=True)
    h.run(ticks=3)
    # the same three instances, now on the books again; none launched, none terminated
    assert h.live_cloud_ids() == before
    assert {r.cloud_id for r in h.live_records()} == before
    assert len(h.cloud.all_instances()) == 3


def test_untracked_instance_of_unknown_pool_is_terminated(tmp_path: Path) -> None:
    h = Harness.start(POLICY, tmp_path)
    h.run(ticks=3)
    other = POLICY.replace("name: web", "name: api")
    from autoscaler.policyfile import parse_policy

    h.loaded = parse_policy(other, "p.yaml")
    h.restart(fresh_database=True)
    h.run(ticks=4, seconds=5)
    records = h.live_records()
    assert {r.pool for r in records} == {"api"}
    assert len(h.live_cloud_ids()) == 3
    assert {r.cloud_id for r in records} == h.live_cloud_ids()


# ---------------------------------------------------------------------------------------------- garbage collection

GC_POLICY = """
daemon: {id: gc-test, tick_seconds: 5, untracked_grace_seconds: 60, launch_retry_seconds: 30}
clouds:
  simulated:
    boot_seconds: 10
pools:
  - name: web
    min_capacity: 3
    max_capacity: 10
    candidates:
      - {cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}
  - name: batch
    min_capacity: 1
    max_capacity: 4
    candidates:
      - {cloud: simulated, instance_type: sim.a100x8, market: on-demand, throughput: 1}
"""


def _fleet_then_lost_database(tmp_path: Path, web_capacity: float) -> tuple[Harness, set[str]]:
    """Three web instances and one batch instance running; then the database is lost and the new one says web
    needs `web_capacity` units (an operator override, so the need is exact)."""
    h = Harness.start(GC_POLICY, tmp_path)
    h.run(ticks=4)
    web = {r.cloud_id or "" for r in h.live_records() if r.pool == "web"}
    assert len(web) == 3 and len(h.live_cloud_ids()) == 4
    h.restart(fresh_database=True)
    h.store.set_control("web", PoolControl(override_capacity=web_capacity))
    return h, web


def test_untracked_instances_are_adopted_before_anything_is_launched(tmp_path: Path) -> None:
    h, web = _fleet_then_lost_database(tmp_path, web_capacity=5)
    launches_before = h.cloud.calls["launch"]
    plan = h.daemon.tick()
    adopted = {a.instance.cloud_id for a in plan.of_type(Adopt) if a.pool == "web"}
    assert adopted == web, "the three that exist fill the need first"
    assert len([launch for launch in plan.of_type(Launch) if launch.pool == "web"]) == 2, "only the rest is new"
    h.run(ticks=3)
    assert web <= {r.cloud_id for r in h.live_records()}
    assert h.live_cloud_ids() == {r.cloud_id for r in h.live_records()}
    assert h.cloud.calls["launch"] - launches_before == 2
    assert len(h.cloud.all_instances()) == 6  # 3 + 2 web, 1 batch: nothing was made twice


def test_untracked_instances_not_needed_are_held_then_terminated_after_the_grace_period(tmp_path: Path) -> None:
    h, web = _fleet_then_lost_database(tmp_path, web_capacity=1)
    plan = h.daemon.tick()
    (kept,) = [a.instance.cloud_id for a in plan.of_type(Adopt) if a.pool == "web"]
    held = web - {kept}
    assert not plan.of_type(Terminate), "within the grace period nothing is terminated"
    assert any(r.startswith("holding untracked") for r in plan.decisions["web"].reasons)
    h.clock.advance(5)
    h.run(ticks=10)  # 55 s since first seen: still inside the 60 s grace
    assert held <= h.live_cloud_ids()
    assert not held & {r.cloud_id for r in h.live_records()}, "held, not adopted: the pool does not need them"
    h.run(ticks=3)  # past 60 s
    assert not held & h.live_cloud_ids(), "terminated once the grace period was over"
    assert kept in h.live_cloud_ids()
    assert h.live_cloud_ids() == {r.cloud_id for r in h.live_records()}
    assert h.cloud.calls["launch"] == 4, "nothing was launched in their place"


def test_the_pool_needing_more_during_the_grace_period_adopts_a_held_instance(tmp_path: Path) -> None:
    h, web = _fleet_then_lost_database(tmp_path, web_capacity=1)
    h.run(ticks=2)
    h.store.set_control("web", PoolControl(override_capacity=3))
    h.run(ticks=2)
    assert {r.cloud_id for r in h.live_records() if r.pool == "web"} == web
    assert h.cloud.calls["launch"] == 4


def _vanish(h: Harness, cloud_id: str) -> None:
    """The cloud forgets the instance (a spot VM deleted on reclaim, a VM deleted by hand): no trace in listings."""
    del h.cloud._instances[cloud_id]


def test_a_recorded_instance_the_cloud_no_longer_has_is_marked_gone(tmp_path: Path) -> None:
    h = Harness.start(GC_POLICY, tmp_path)
    h.run(ticks=4)
    spot = next(r for r in h.live_records() if r.pool == "web")
    on_demand = next(r for r in h.live_records() if r.pool == "batch")
    _vanish(h, spot.cloud_id or "")
    _vanish(h, on_demand.cloud_id or "")
    h.run(ticks=4)  # 20 s: a listing may lag, nothing is concluded yet (launch_retry_seconds 30)
    live = {r.token for r in h.live_records()}
    assert {spot.token, on_demand.token} <= live
    h.run(ticks=4)
    for gone in (spot, on_demand):
        rec = h.store.get_instance(gone.token)
        assert rec is not None and rec.state == InstanceState.TERMINATED
        assert "missing from the cloud listing" in rec.reason
    preemptions = [e for e in h.store.capacity_events() if e.kind == FailureKind.PREEMPTION]
    assert [e.offering for e in preemptions] == [spot.offering], "the spot loss is a preemption, on-demand not"
    assert (
        h.daemon.metrics.registry.get_sample_value(
            "gpu_autoscaler_capacity_errors_total", {**spot.offering.as_labels(), "kind": "preemption"}
        )
        == 1.0
    )
    h.run(ticks=4)
    assert len([r for r in h.live_records() if r.pool == "web"]) == 3, "the pools refill"
    assert len([r for r in h.live_records() if r.pool == "batch"]) == 1


# ---------------------------------------------------------------------------------------------- Azure leftovers


def test_azure_failed_vm_leftovers_disk_and_nic_are_cleaned(fake_arm: FakeARM, tmp_path: Path) -> None:
    """A spot VM whose creation fails at the end of its operation while the answer is lost: the next listing shows
    it Failed and deletes it, but (as a failed creation can) its NIC and OS disk stay behind. The provider's sweep
    finds our tagged NIC with no VM and deletes the disk and the NIC once the grace period (600 s) has passed;
    the live VM's NIC and disk, and a NIC that is not ours, are left alone."""
    fake_arm.leave_leftovers = True
    fake_arm.inject("ZonalAllocationFailed", size=AZURE_A100, zone="1", priority="Spot", at_end=True)
    fake_arm.lose_next_answer("vm.put")
    foreign = "gpua-00000000000000000000-nic"  # a NIC with no VM, tagged by another daemon: not ours to delete
    fake_arm.nics[foreign] = {"id": f"/subscriptions/x/{foreign}", "name": foreign, "location": "eastus",
                              "tags": {TAG_DAEMON: "another"},
                              "properties": {"ipConfigurations": [], "provisioningState": "Succeeded"}}  # fmt: skip
    rig = AzureRig(fake_arm, azure_policy(fake_arm), tmp_path)
    rig.daemon.tick()  # the PUT took effect, its answer was lost: the record waits for the listing
    (failed,) = fake_arm.vms
    rig.ticks(4)  # its operation ends Failed, listings show it, it is deleted; its NIC and disk stay
    assert failed not in fake_arm.vms
    orphans = fake_arm.orphans()
    assert orphans["nics"] == sorted([f"{failed}-nic", foreign])
    assert orphans["disks"] == [f"{failed}-osdisk"]
    assert not orphans["failed_vms"]
    rig.ticks(10, seconds=60)  # within the grace period of the first sighting: nothing deleted yet
    assert f"{failed}-nic" in fake_arm.nics
    rig.ticks(8, seconds=60)
    assert fake_arm.orphans() == {"failed_vms": [], "nics": [foreign], "disks": []}
    (live,) = fake_arm.vms
    assert f"{live}-nic" in fake_arm.nics and f"{live}-osdisk" in fake_arm.disks, "the live VM keeps its own"
    assert [r.cloud_id for r in rig.store.instances(live_only=True)] == [live]


# ---------------------------------------------------------------------------------------------- AWS untracked


def test_aws_untracked_instances_held_then_terminated_or_adopted_when_needed(
    fake_ec2: FakeEC2, tmp_path: Path
) -> None:
    """Through real boto3 against moto's EC2 server: instances carrying our tags that the store has no record of
    (made here by hand, as a lost database or a lost intent leaves them). One the pool does not need is held for
    untracked_grace_seconds (default 300 s) and then terminated; one made while the pool needs more is adopted,
    and nothing new is launched for that need."""
    rig = AwsRig(aws_policy(fake_ec2, extra_region=False), tmp_path)
    rig.daemon.tick()
    assert fake_ec2.count("RunInstances") == 1

    def leak() -> str:
        tags = [{"Key": k, "Value": v} for k, v in
                {TAG_DAEMON: "aws-test", TAG_POOL: "llm", TAG_INTENT: f"lost-{uuid.uuid4()}"}.items()]  # fmt: skip
        made = fake_ec2.client().run_instances(
            ImageId=fake_ec2.ami("us-east-1"), InstanceType="p4d.24xlarge", MinCount=1, MaxCount=1,
            Placement={"AvailabilityZone": "us-east-1a"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )  # fmt: skip
        return str(made["Instances"][0]["InstanceId"])

    def state(instance_id: str) -> str:
        (reservation,) = fake_ec2.client().describe_instances(InstanceIds=[instance_id])["Reservations"]
        return str(reservation["Instances"][0]["State"]["Name"])

    extra = leak()
    for seconds in (15, 285):  # first seen, then 285 s later: within the grace period
        rig.clock.advance(seconds)
        rig.daemon.tick()
    assert state(extra) == "running"
    assert extra not in {r.cloud_id for r in rig.store.instances()}
    rig.clock.advance(15)
    rig.daemon.tick()
    assert state(extra) == "terminated"
    assert extra not in {r.cloud_id for r in rig.store.instances()}, "terminated untracked: never on the books"

    wanted = leak()
    sent = fake_ec2.count("RunInstances")  # the daemon's one and the two made by hand
    rig.store.set_control("llm", PoolControl(override_capacity=16))  # two p4d (throughput 8 each)
    rig.clock.advance(15)
    plan = rig.daemon.tick()
    assert [a.instance.cloud_id for a in plan.of_type(Adopt)] == [wanted]
    assert not plan.of_type(Launch)
    assert fake_ec2.count("RunInstances") == sent, "the need was met by adoption: the daemon launched nothing"
    live = {r.cloud_id for r in rig.store.instances(live_only=True)}
    assert wanted in live and len(live) == 2
