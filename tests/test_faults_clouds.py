"""Faults from the clouds, end to end: the daemon on a fake clock, the three real SDKs, each talking to its local fake
through tests/fault_proxy.py, which throttles (in each cloud's own shape), answers 5xx, holds connections past
the client's timeout, answers slowly, and answers garbage or half an answer.

- Per cloud: 30% of calls fault for a window of ticks while the pool scales up and down. No exception escapes a
  tick, and once the faults end the fleet converges within two ticks.
- A cloud that fails every call: its breaker opens after `failures_to_open` failed listings, no call reaches it
  while open, the pool's new capacity is placed on the other clouds (the decision says why), one probe goes out
  per cool-down, and after the faults end the breaker closes and the fleet converges within two ticks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autoscaler.api.app import create_app
from autoscaler.breaker import BreakerProvider, BreakerState
from autoscaler.clock import FakeClock
from autoscaler.config import AzureCloud, Policy
from autoscaler.daemon import Daemon
from autoscaler.interfaces import Provider
from autoscaler.lifecycle import InstanceState
from autoscaler.model import CloudState, PoolControl
from autoscaler.policyfile import parse_policy
from autoscaler.store import Store
from providers import build_providers, candidate_types
from providers.azure import AzureProvider
from providers.azure_catalog import AzureCatalog
from tests.aws_fake import FakeEC2
from tests.azure_fake import FakeARM, fake_arm
from tests.fault_proxy import FaultProxy
from tests.gcp_fake import FakeGCE, fake_gce

__all__ = ["fake_arm", "fake_gce"]  # fixtures used by the tests below

A100 = "Standard_NC24ads_A100_v4"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOq9 ops@example"
TICK = 15.0
CLIENT_TIMEOUT = 1.0  # every SDK call's timeout here; a held connection outlives it
CANDIDATES = {
    "aws": "{cloud: aws, instance_type: p4d.24xlarge, market: spot, throughput: 1}",
    "gcp": "{cloud: gcp, instance_type: g2-standard-8, market: spot, throughput: 1}",
    "azure": f"{{cloud: azure, instance_type: {A100}, market: spot, throughput: 1}}",
}


@dataclass
class Clouds:
    ec2: FakeEC2
    gce: FakeGCE
    arm: FakeARM
    proxies: dict[str, FaultProxy]


@pytest.fixture
def clouds(fake_ec2: FakeEC2, fake_gce: FakeGCE, fake_arm: FakeARM) -> Iterator[Clouds]:
    proxies = {
        "aws": FaultProxy(fake_ec2.endpoint_url, "aws", seed=1, hold_seconds=CLIENT_TIMEOUT + 0.3),
        "gcp": FaultProxy(fake_gce.endpoint, "gcp", seed=2, hold_seconds=CLIENT_TIMEOUT + 0.3),
        "azure": FaultProxy(
            fake_arm.url, "azure", seed=3, upstream_ca=fake_arm.ca_path, hold_seconds=CLIENT_TIMEOUT + 0.3
        ),
    }
    for proxy in proxies.values():
        proxy.start()
    try:
        yield Clouds(fake_ec2, fake_gce, fake_arm, proxies)
    finally:
        for proxy in proxies.values():
            proxy.stop()


def policy_text(c: Clouds, order: list[str], breaker: str) -> str:
    p = c.proxies
    candidates = "\n".join(f"      - {CANDIDATES[cloud]}" for cloud in order)
    return f"""
daemon:
  id: faults
  tick_seconds: {TICK}
  fallback_rounds: 3
  circuit_breaker: {breaker}
clouds:
  aws:
    regions: {{us-east-1: [us-east-1a]}}
    endpoint_url: {p["aws"].url}
    max_attempts: 1
    connect_timeout_seconds: {CLIENT_TIMEOUT}
    read_timeout_seconds: {CLIENT_TIMEOUT}
  gcp:
    project: {c.gce.project}
    regions: {{us-central1: [us-central1-a]}}
    endpoint: {p["gcp"].url}
    read_retry_seconds: 0
    timeout_seconds: {CLIENT_TIMEOUT}
    operation_timeout_seconds: 3
  azure:
    regions: {{eastus: ["1"]}}
    subscription_id: {c.arm.subscription}
    resource_group: {c.arm.resource_group}
    endpoint: {p["azure"].url}
    ca_bundle: {p["azure"].ca_path}
    polling_interval_seconds: 0
    retry_total: 0
    timeout_seconds: {CLIENT_TIMEOUT}
    operation_timeout_seconds: 3
pools:
  - name: llm
    min_capacity: 1
    max_capacity: 8
    drain_seconds: 0
    launch_templates:
      aws: {{image: {c.ec2.ami("us-east-1")}}}
      gcp: {{image: projects/debian-cloud/global/images/family/debian-12}}
      azure:
        image: "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
        network: {c.arm.subnet_id("eastus")}
        extra: {{ssh_public_key: "{SSH_KEY}"}}
    candidates:
{candidates}
"""


@dataclass
class Run:
    daemon: Daemon
    store: Store
    clock: FakeClock
    raw: dict[str, Provider]  # the providers as built, before the daemon wraps them in breakers

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.daemon.tick()  # raises if anything escapes a tick: that is the test
            self.clock.advance(TICK)

    def want(self, units: float) -> None:
        self.store.set_control("llm", PoolControl(override_capacity=units))

    def converged(self) -> bool:
        """Every live record ready, as many units as desired, and the clouds list exactly the recorded instances."""
        plan = self.daemon.last_plan
        assert plan is not None
        live = self.store.instances(live_only=True)
        if any(r.state != InstanceState.READY for r in live):
            return False
        if sum(r.capacity_units for r in live) != plan.decisions["llm"].desired:
            return False
        listed = {
            (cloud, i.cloud_id)
            for cloud, p in self.raw.items()
            for i in p.list_instances()
            if i.state in (CloudState.PENDING, CloudState.RUNNING)
        }
        return listed == {(r.offering.cloud, r.cloud_id) for r in live}

    def ticks_to_converge(self, limit: int) -> int | None:
        for n in range(1, limit + 1):
            self.tick()
            if self.converged():
                return n
        return None


def start(c: Clouds, tmp_path: Path, order: list[str], breaker: str = "{}") -> Run:
    clock = FakeClock()
    c.arm.now = clock.now
    raw: dict[str, Provider] = {}

    def providers(p: Policy) -> dict[str, Provider]:
        built = build_providers(p, clock)
        azure = p.clouds.azure
        assert isinstance(azure, AzureCloud)
        built["azure"] = AzureProvider(
            azure, clock, p.daemon.id, candidate_types(p, "azure"), AzureCatalog.load(None),
            credential=c.arm.credential,
        )  # fmt: skip
        raw.clear()
        raw.update(built)
        return built

    loaded = parse_policy(policy_text(c, order, breaker), str(tmp_path / "policy.yaml"))
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    return Run(Daemon(loaded, store=store, clock=clock, provider_factory=providers), store, clock, raw)


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_thirty_percent_faults_never_stop_the_loop_and_the_fleet_converges_after(
    clouds: Clouds, tmp_path: Path, cloud: str
) -> None:
    # The pool may fall back to the next cloud (no faults there): a launch given up on the faulty cloud, or an
    # offering it blocked, must not keep the pool short.
    fallback = {"aws": "gcp", "gcp": "azure", "azure": "aws"}[cloud]
    run = start(clouds, tmp_path, [cloud, fallback])
    proxy = clouds.proxies[cloud]
    run.tick()  # offerings and the first instance, without faults
    proxy.faults(0.3)
    # Scale up and down through the window (lists, launches, terminations), until every kind of fault was met.
    plan = (3, 3, 3, 2, 2, 1, 1, 2)
    ticks = 0
    while ticks < len(plan) or (sum(proxy.injected.values()) < 6 and ticks < 24):
        run.want(plan[ticks % len(plan)])
        run.tick()
        ticks += 1
    injected = sum(proxy.injected.values())
    proxy.clear()
    met = {k.split("-")[0] for k in proxy.injected} | {"malformed"} & {
        "malformed" for k in proxy.injected if k in ("garbage", "truncated")
    }
    assert injected >= 5 and {"throttle", "5xx", "timeout", "slow", "malformed"} <= met, proxy.injected
    # After the window: the breaker (if the faults opened it) probes after its cool-down, then all is well.
    run.clock.advance(60)
    run.want(2)
    ticks = run.ticks_to_converge(limit=4)
    assert ticks is not None and ticks <= 2, (ticks, run.daemon.last_plan)
    assert run.daemon.last_tick_error == ""
    run.store.close()


def test_a_dark_cloud_is_opened_skipped_probed_and_closed(clouds: Clouds, tmp_path: Path) -> None:
    run = start(clouds, tmp_path, ["aws", "gcp", "azure"], "{failures_to_open: 3, cooldown_seconds: 60}")
    aws = clouds.proxies["aws"]
    assert run.ticks_to_converge(limit=4) is not None
    (first,) = run.store.instances(live_only=True)
    assert first.offering.cloud == "aws"

    # AWS answers nothing but errors: 5xx and throttling, in EC2's shapes.
    aws.faults(1.0, ["5xx", "throttle"])
    wrapped = run.daemon.providers["aws"]
    assert isinstance(wrapped, BreakerProvider)
    run.tick(3)  # three failed listings
    assert wrapped.breaker.state() == BreakerState.OPEN
    metrics = run.daemon.metrics.render()[0].decode()
    assert 'gpu_autoscaler_provider_breaker_state{cloud="aws"} 2.0' in metrics
    assert 'gpu_autoscaler_provider_breaker_state{cloud="gcp"} 0.0' in metrics
    answer = TestClient(create_app(run.daemon, None)).get("/v1/providers").json()
    assert {b["cloud"]: b["state"] for b in answer} == {"aws": "open", "gcp": "closed", "azure": "closed"}
    assert "RequestLimitExceeded" in answer[0]["last_error"] or "InternalError" in answer[0]["last_error"]

    # The pool grows while AWS is dark: the new capacity goes to GCP, and AWS is not called at all.
    calls = aws.requests
    run.want(3)
    run.tick()
    assert aws.requests == calls
    live = run.store.instances(live_only=True)
    assert sorted(r.offering.cloud for r in live) == ["aws", "gcp", "gcp"]
    decision = run.daemon.last_plan.decisions["llm"] if run.daemon.last_plan else None
    assert decision is not None
    assert any("circuit breaker open" in s.reason and s.offering.startswith("aws/") for s in decision.skipped)

    # After the cool-down one probe goes out; it fails, so the breaker opens again for another cool-down.
    run.clock.advance(60)
    run.tick()
    assert aws.requests == calls + 1
    assert wrapped.breaker.state() == BreakerState.OPEN and wrapped.breaker.status().times_opened == 2
    run.tick()
    assert aws.requests == calls + 1

    # The faults end: the next probe closes the breaker and the fleet converges within two ticks, the AWS
    # instance it could not see meanwhile still counted and found again.
    aws.clear()
    run.clock.advance(60)
    ticks = run.ticks_to_converge(limit=4)
    assert ticks is not None and ticks <= 2
    assert wrapped.breaker.state() == BreakerState.CLOSED
    live = run.store.instances(live_only=True)
    assert sorted(r.offering.cloud for r in live) == ["aws", "gcp", "gcp"]
    assert first.token in {r.token for r in live}
    assert clouds.ec2.count("RunInstances") == 1  # nothing launched twice
    metrics = run.daemon.metrics.render()[0].decode()
    assert 'gpu_autoscaler_provider_breaker_state{cloud="aws"} 0.0' in metrics
    assert 'gpu_autoscaler_provider_breaker_opened_total{cloud="aws"} 2.0' in metrics
    run.store.close()
