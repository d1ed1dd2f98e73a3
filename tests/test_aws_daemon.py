"""The daemon on AWS, end to end through real boto3 against moto's EC2 server (tests/aws_fake.py): same-tick
fallback after a stockout, the block in capacity memory and /metrics, retry after the block expires, one
DescribeInstances per region per tick, preemption, a crash between the answer and its record, and the IAM policy
in the README covering every call the daemon makes."""

from __future__ import annotations

import json
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
from tests.aws_fake import FakeEC2

ROOT = Path(__file__).resolve().parents[1]


def policy(fake: FakeEC2, *, min_capacity: int = 1, extra_region: bool = True) -> str:
    regions = "us-east-1: [us-east-1a, us-east-1b]" + (", us-west-2: []" if extra_region else "")
    return f"""
daemon: {{id: aws-test, tick_seconds: 15}}
clouds:
  aws:
    regions: {{{regions}}}
    endpoint_url: {fake.endpoint_url}
pools:
  - name: llm
    min_capacity: {min_capacity}
    max_capacity: 64
    launch_templates:
      aws: {{image: {fake.ami("us-east-1")}, disk_gb: 200, user_data: "#!/bin/sh", tags: {{team: ml}}}}
    candidates:
      - {{cloud: aws, instance_type: p4d.24xlarge, market: spot, zones: [us-east-1a], throughput: 8}}
      - {{cloud: aws, instance_type: p4d.24xlarge, market: on-demand, zones: [us-east-1a], throughput: 8}}
"""


class AwsRig:
    def __init__(self, text: str, tmp_path: Path, clock: FakeClock | None = None, url: str | None = None) -> None:
        self.loaded = parse_policy(text, "policy.yaml")
        self.clock = clock or FakeClock()
        self.url = url or f"sqlite:///{tmp_path / 'state.db'}"
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


def run_instances(fake: FakeEC2) -> list[dict[str, str]]:
    return [c.params for c in fake.log if c.action == "RunInstances"]


def test_stockout_falls_back_in_the_same_tick_blocks_and_retries_after_expiry(
    fake_ec2: FakeEC2, tmp_path: Path
) -> None:
    fake_ec2.exhaust("p4d.24xlarge", "us-east-1a", "spot")
    rig = AwsRig(policy(fake_ec2), tmp_path)
    plan = rig.daemon.tick()

    sent = run_instances(fake_ec2)
    assert [p.get("InstanceMarketOptions.MarketType") for p in sent] == ["spot", None]
    assert all(p["Placement.AvailabilityZone"] == "us-east-1a" for p in sent)
    assert sent[0]["ClientToken"] != sent[1]["ClientToken"]
    assert any("fallback round 1" in c and "on-demand" in c for c in plan.decisions["llm"].chosen)
    records = rig.store.instances()
    assert [(r.offering.market, r.state) for r in records] == [(Market.ON_DEMAND, InstanceState.PROVISIONING)]
    blocks = rig.store.blocks(now=rig.clock.now())
    assert [(b.instance_type, b.zone, b.market, b.kind) for b in blocks] == [
        ("p4d.24xlarge", "us-east-1a", Market.SPOT, FailureKind.CAPACITY)
    ]
    metrics = rig.daemon.metrics.render()[0].decode()
    assert re.search(
        r'gpu_autoscaler_blocked_offerings\{[^}]*instance_type="p4d.24xlarge"[^}]*market="spot"', metrics
    )
    assert re.search(r'gpu_autoscaler_capacity_errors_total\{[^}]*kind="capacity"[^}]*\} 1\.0', metrics)

    # Blocked: more demand does not ask the stocked-out offering again while the block lasts.
    fake_ec2.restore()
    rig.loaded = parse_policy(policy(fake_ec2, min_capacity=16), "policy.yaml")
    rig.restart()
    rig.clock.advance(15)
    rig.daemon.tick()
    assert [p.get("InstanceMarketOptions.MarketType") for p in run_instances(fake_ec2)] == ["spot", None, None]

    # The block expires after 3 minutes: the preferred offering is tried again, and now it has capacity.
    rig.loaded = parse_policy(policy(fake_ec2, min_capacity=24), "policy.yaml")
    rig.restart()
    rig.clock.advance(181)
    rig.daemon.tick()
    assert [p.get("InstanceMarketOptions.MarketType") for p in run_instances(fake_ec2)] == [
        "spot",
        None,
        None,
        "spot",
    ]
    assert rig.store.blocks(now=rig.clock.now()) == [], "a success clears the offering's backoff"


def test_one_describe_instances_per_region_per_tick(fake_ec2: FakeEC2, tmp_path: Path) -> None:
    rig = AwsRig(policy(fake_ec2, min_capacity=16), tmp_path)
    ticks = 4
    for _ in range(ticks):
        rig.daemon.tick()
        rig.clock.advance(15)
    assert len(rig.store.instances()) == 2
    assert fake_ec2.count("DescribeInstances", "us-east-1") == ticks
    assert fake_ec2.count("DescribeInstances", "us-west-2") == ticks
    # offerings are cached: read once, not every tick
    assert fake_ec2.count("DescribeInstanceTypeOfferings", "us-east-1") == 1
    assert all(r.state == InstanceState.READY for r in rig.store.instances())


def test_spot_interruption_is_a_preemption_and_the_pool_refills(fake_ec2: FakeEC2, tmp_path: Path) -> None:
    rig = AwsRig(policy(fake_ec2, min_capacity=1, extra_region=False), tmp_path)
    rig.daemon.tick()
    rig.clock.advance(15)
    rig.daemon.tick()
    (first,) = rig.store.instances()
    assert first.offering.market == Market.SPOT and first.state == InstanceState.READY
    fake_ec2.interrupt(first.cloud_id or "")
    rig.clock.advance(15)
    rig.daemon.tick()
    ended = rig.store.get_instance(first.token)
    assert ended is not None and ended.state == InstanceState.TERMINATED
    assert "Server.SpotInstanceTermination" in ended.reason
    events = rig.store.capacity_events()
    assert [(e.kind, e.offering.zone) for e in events] == [(FailureKind.PREEMPTION, "us-east-1a")]
    # refilled at once, on the next offering: the preempted zone's spot offering is blocked
    live = rig.store.instances()
    assert len(live) == 1 and live[0].offering.market == Market.ON_DEMAND


class Crash(BaseException):
    pass


def test_crash_after_run_instances_answered_before_it_was_recorded(fake_ec2: FakeEC2, tmp_path: Path) -> None:
    def crash(point: str, launch: Launch) -> None:
        if point == "after_answer":
            raise Crash(launch.token)

    rig = AwsRig(policy(fake_ec2, min_capacity=1, extra_region=False), tmp_path)
    rig.daemon = rig._daemon(crash_hook=crash)
    with pytest.raises(Crash):
        rig.daemon.tick()
    (record,) = rig.store.instances()
    assert record.state == InstanceState.REQUESTED and record.cloud_id is None
    rig.restart()
    for _ in range(3):
        rig.clock.advance(15)
        rig.daemon.tick()
    (after,) = rig.store.instances()
    assert after.token == record.token and after.cloud_id and after.state == InstanceState.READY
    assert fake_ec2.count("RunInstances") == 1, "found by its tag: nothing launched twice"


def test_lost_answer_is_retried_with_the_same_client_token(fake_ec2: FakeEC2, tmp_path: Path) -> None:
    fake_ec2.lose_next_answer("RunInstances")
    rig = AwsRig(policy(fake_ec2, min_capacity=1, extra_region=False), tmp_path)
    rig.daemon.tick()
    for _ in range(2):
        rig.clock.advance(15)
        rig.daemon.tick()
    (record,) = rig.store.instances()
    assert record.state == InstanceState.READY
    listed = fake_ec2.client("us-east-1").describe_instances()["Reservations"]
    assert sum(len(r["Instances"]) for r in listed) == 1


def test_bad_image_is_reported_and_the_loop_goes_on(fake_ec2: FakeEC2, tmp_path: Path) -> None:
    fake_ec2.inject("InvalidAMIID.NotFound", message="The image id '[ami-x]' does not exist", times=None)
    rig = AwsRig(policy(fake_ec2, min_capacity=1, extra_region=False), tmp_path)
    plan = rig.daemon.tick()
    rig.clock.advance(15)
    rig.daemon.tick()
    blocks = rig.store.blocks(now=rig.clock.now())
    assert {(b.kind, b.scope) for b in blocks} == {(FailureKind.CONFIG, "cloud")}
    assert any("could not be placed" in r for r in plan.decisions["llm"].reasons)
    assert rig.daemon.last_tick_error == ""
    failed = [r for r in rig.store.instances(live_only=False) if r.state == InstanceState.LAUNCH_FAILED]
    assert failed and "InvalidAMIID.NotFound" in failed[0].reason


def test_readme_iam_policy_covers_every_call_the_daemon_makes(fake_ec2: FakeEC2, tmp_path: Path) -> None:
    fake_ec2.exhaust("p4d.24xlarge", "us-east-1a", "spot")
    rig = AwsRig(policy(fake_ec2, min_capacity=1), tmp_path)
    rig.daemon.tick()
    rig.clock.advance(15)
    rig.daemon.tick()
    rig.loaded = parse_policy(policy(fake_ec2, min_capacity=0), "policy.yaml")
    rig.restart()
    for _ in range(30):  # scale in: drain, terminate
        rig.clock.advance(15)
        rig.daemon.tick()
    called = {f"ec2:{action}" for action, _ in fake_ec2.calls}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:DescribeInstances"} <= called
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```json\n(\{.*?\})\n```", readme, flags=re.DOTALL)
    assert block, "the README shows the IAM policy as a JSON block"
    allowed = {a for st in json.loads(block.group(1))["Statement"] for a in st["Action"]}
    assert called <= allowed, f"missing from the README's IAM policy: {sorted(called - allowed)}"


def test_role_arn_is_assumed_and_its_credentials_used(fake_ec2: FakeEC2, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoscaler import config
    from autoscaler.clock import FakeClock as Clock
    from providers.aws import AwsProvider
    from providers.aws_catalog import AwsCatalog

    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake_ec2.endpoint_url)
    cfg = config.AwsCloud(
        regions={"us-east-1": ["us-east-1a"]},
        endpoint_url=fake_ec2.endpoint_url,
        role_arn="arn:aws:iam::123456789012:role/gpu-autoscaler",
    )
    provider = AwsProvider(cfg, Clock(), "aws-test", frozenset({"g6.xlarge"}), AwsCatalog.load(None))
    assert provider.list_instances() == []
    assert fake_ec2.count("AssumeRole") == 1
    assert fake_ec2.count("DescribeInstances") == 1
