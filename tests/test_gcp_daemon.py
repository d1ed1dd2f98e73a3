"""The daemon on GCP, end to end through real google-cloud-compute against the fake Compute Engine
(tests/gcp_fake.py), built by `build_providers` as in production: a stockout inside the insert's operation falls
back in the same tick and blocks the offering, one aggregated list per tick, preemption (stopped or deleted spot
VMs) refilled, and a crash or a lost answer between the insert and its record launches nothing twice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoscaler.clock import FakeClock
from autoscaler.daemon import Daemon
from autoscaler.lifecycle import InstanceState
from autoscaler.model import FailureKind, Launch, Market
from autoscaler.policyfile import parse_policy
from autoscaler.store import Store
from providers import build_providers
from tests import gcp_fake
from tests.gcp_fake import PROJECT, FakeGCE

fake_gce = gcp_fake.fake_gce  # the fixture
ZONE = "us-central1-a"


def policy(fake: FakeGCE, *, min_capacity: int = 1, action: str = "DELETE") -> str:
    return f"""
daemon: {{id: gcp-test, tick_seconds: 15}}
clouds:
  gcp:
    project: {PROJECT}
    regions: {{us-central1: [us-central1-a, us-central1-b], europe-west4: []}}
    endpoint: {fake.endpoint}
    read_retry_seconds: 0
    operation_timeout_seconds: 5
pools:
  - name: llm
    min_capacity: {min_capacity}
    max_capacity: 64
    launch_templates:
      gcp:
        image: projects/debian-cloud/global/images/family/debian-12
        disk_gb: 200
        user_data: "#!/bin/sh"
        tags: {{team: ml}}
        extra: {{spot_termination_action: {action}}}
    candidates:
      - {{cloud: gcp, instance_type: g2-standard-8, market: spot, zones: [{ZONE}], throughput: 1}}
      - {{cloud: gcp, instance_type: g2-standard-8, market: on-demand, zones: [{ZONE}], throughput: 1}}
"""


class GcpRig:
    def __init__(self, text: str, tmp_path: Path) -> None:
        self.loaded = parse_policy(text, "policy.yaml")
        self.clock = FakeClock()
        self.url = f"sqlite:///{tmp_path / 'state.db'}"
        self.store = Store.open(self.url)
        self.daemon = self._daemon()

    def _daemon(self, **kwargs: object) -> Daemon:
        return Daemon(
            self.loaded,
            store=self.store,
            clock=self.clock,
            provider_factory=lambda p: build_providers(p, self.clock),
            **kwargs,  # type: ignore[arg-type]
        )

    def restart(self, **kwargs: object) -> None:
        self.store.close()
        self.store = Store.open(self.url)
        self.daemon = self._daemon(**kwargs)

    def ticks(self, n: int, seconds: float = 15) -> None:
        for _ in range(n):
            self.clock.advance(seconds)
            self.daemon.tick()


def markets(fake: FakeGCE) -> list[str]:
    return [(body.get("scheduling") or {}).get("provisioningModel", "STANDARD") for body in fake.inserted()]


def test_stockout_in_the_operation_falls_back_in_the_same_tick_and_blocks(
    fake_gce: FakeGCE, tmp_path: Path
) -> None:
    fake_gce.exhaust("g2-standard-8", ZONE, "spot")
    rig = GcpRig(policy(fake_gce), tmp_path)
    plan = rig.daemon.tick()

    assert markets(fake_gce) == ["SPOT", "STANDARD"]
    first, second = fake_gce.inserted()
    assert first["name"] != second["name"], "a new token, a new instance name"
    assert any("fallback round 1" in c and "on-demand" in c for c in plan.decisions["llm"].chosen)
    (record,) = rig.store.instances()
    assert (record.offering.market, record.state) == (Market.ON_DEMAND, InstanceState.RUNNING)
    (failed,) = [r for r in rig.store.instances(live_only=False) if r.state == InstanceState.LAUNCH_FAILED]
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in failed.reason
    blocks = rig.store.blocks(now=rig.clock.now())
    assert [(b.instance_type, b.zone, b.market, b.kind) for b in blocks] == [
        ("g2-standard-8", ZONE, Market.SPOT, FailureKind.CAPACITY)
    ]
    metrics = rig.daemon.metrics.render()[0].decode()
    assert re.search(r'gpu_autoscaler_capacity_errors_total\{[^}]*kind="capacity"[^}]*\} 1\.0', metrics)

    # The block expires after 3 minutes: the preferred offering is tried again, and now it has capacity.
    fake_gce.restore()
    rig.loaded = parse_policy(policy(fake_gce, min_capacity=2), "policy.yaml")
    rig.restart()
    rig.ticks(1, seconds=181)
    assert markets(fake_gce) == ["SPOT", "STANDARD", "SPOT"]
    assert rig.store.blocks(now=rig.clock.now()) == [], "a success clears the offering's backoff"


def test_one_aggregated_list_per_tick(fake_gce: FakeGCE, tmp_path: Path) -> None:
    rig = GcpRig(policy(fake_gce, min_capacity=3), tmp_path)
    rig.daemon.tick()
    rig.ticks(3)
    assert fake_gce.count("instances.aggregatedList") == 4
    assert fake_gce.count("instances.get") == 3, "one per launch, never one per instance per tick"
    assert fake_gce.count("machineTypes.aggregatedList") == 1, "offerings are cached"
    assert [r.state for r in rig.store.instances()] == [InstanceState.READY] * 3


@pytest.mark.parametrize("seen", ["terminated", "gone"])
def test_a_preempted_spot_vm_is_replaced_and_its_zone_blocked(
    fake_gce: FakeGCE, tmp_path: Path, seen: str
) -> None:
    rig = GcpRig(policy(fake_gce), tmp_path)
    rig.daemon.tick()
    rig.ticks(1)
    (first,) = rig.store.instances()
    assert first.offering.market == Market.SPOT and first.state == InstanceState.READY
    zone, name = (first.cloud_id or "").split("/")
    # Seen TERMINATED on its way to deletion: preempted at once. Already gone: lost after the missing grace (60 s).
    fake_gce.preempt(zone, name, delete=seen == "gone")
    rig.ticks(1 if seen == "terminated" else 5)
    ended = rig.store.get_instance(first.token)
    assert ended is not None and ended.state == InstanceState.TERMINATED
    assert ("preempted" if seen == "terminated" else "missing") in ended.reason
    events = rig.store.capacity_events()
    assert [(e.kind, e.offering.zone) for e in events] == [(FailureKind.PREEMPTION, ZONE)]
    live = rig.store.instances()
    assert len(live) == 1 and live[0].offering.market == Market.ON_DEMAND, "refilled on the next offering"


class Crash(BaseException):
    pass


def test_crash_after_the_insert_before_its_answer_was_recorded(fake_gce: FakeGCE, tmp_path: Path) -> None:
    def crash(point: str, launch: Launch) -> None:
        if point == "after_answer":
            raise Crash(launch.token)

    rig = GcpRig(policy(fake_gce), tmp_path)
    rig.daemon = rig._daemon(crash_hook=crash)
    with pytest.raises(Crash):
        rig.daemon.tick()
    (record,) = rig.store.instances()
    assert record.state == InstanceState.REQUESTED and record.cloud_id is None
    rig.restart()
    rig.ticks(3)
    (after,) = rig.store.instances()
    assert after.token == record.token and after.cloud_id and after.state == InstanceState.READY
    assert fake_gce.count("instances.insert") == 1, "found by its labels: nothing launched twice"
    assert len(fake_gce.instances) == 1


def test_a_lost_insert_answer_launches_nothing_twice(fake_gce: FakeGCE, tmp_path: Path) -> None:
    fake_gce.lose_next_answer("instances.insert")
    rig = GcpRig(policy(fake_gce), tmp_path)
    rig.daemon.tick()
    (record,) = rig.store.instances()
    assert record.state == InstanceState.REQUESTED, "a 503 is transient: the record waits for the cloud"
    rig.ticks(2)
    (after,) = rig.store.instances()
    assert after.token == record.token and after.state == InstanceState.READY
    assert len(fake_gce.instances) == 1 and fake_gce.count("instances.insert") == 1
