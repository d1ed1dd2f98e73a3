"""One pool, three clouds, one tick: the AWS candidate answers a stockout, the GCP candidate a quota error, the
Azure candidate succeeds. Every SDK runs its own code against its local fake (moto's EC2 server, the Compute
Engine fake, the HTTPS Resource Manager fake); `gpu-autoscaler explain` tells the chain."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from autoscaler.api.app import create_app
from autoscaler.cli_client import explain
from autoscaler.clock import FakeClock
from autoscaler.config import AzureCloud, Policy
from autoscaler.daemon import Daemon
from autoscaler.interfaces import Provider
from autoscaler.lifecycle import InstanceState
from autoscaler.model import FailureKind, Market, Scope
from autoscaler.policyfile import parse_policy
from autoscaler.store import Store
from providers import build_providers, candidate_types
from providers.azure import AzureProvider
from providers.azure_catalog import AzureCatalog
from tests.api_support import serve
from tests.aws_fake import FakeEC2
from tests.azure_fake import FakeARM, fake_arm
from tests.gcp_fake import FakeGCE, fake_gce

__all__ = ["fake_arm", "fake_gce"]  # fixtures used by the tests below

A100 = "Standard_NC24ads_A100_v4"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOq9 ops@example"


def policy(ec2: FakeEC2, gce: FakeGCE, arm: FakeARM) -> str:
    return f"""
daemon: {{id: three-clouds, tick_seconds: 15, fallback_rounds: 3}}
clouds:
  aws:
    regions: {{us-east-1: [us-east-1a]}}
    endpoint_url: {ec2.endpoint_url}
  gcp:
    project: {gce.project}
    regions: {{us-central1: [us-central1-a]}}
    endpoint: {gce.endpoint}
    read_retry_seconds: 0
    operation_timeout_seconds: 5
  azure:
    regions: {{eastus: ["1"]}}
    subscription_id: {arm.subscription}
    resource_group: {arm.resource_group}
    endpoint: {arm.url}
    ca_bundle: {arm.ca_path}
    polling_interval_seconds: 0
    retry_total: 0
    timeout_seconds: 5
    operation_timeout_seconds: 10
pools:
  - name: llm
    min_capacity: 1
    max_capacity: 8
    launch_templates:
      aws: {{image: {ec2.ami("us-east-1")}}}
      gcp: {{image: projects/debian-cloud/global/images/family/debian-12}}
      azure:
        image: "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
        network: {arm.subnet_id("eastus")}
        extra: {{ssh_public_key: "{SSH_KEY}"}}
    candidates:
      - {{cloud: aws, instance_type: p4d.24xlarge, market: spot, throughput: 1}}
      - {{cloud: gcp, instance_type: g2-standard-8, market: spot, throughput: 1}}
      - {{cloud: azure, instance_type: {A100}, market: spot, throughput: 1}}
"""


def test_stockout_then_quota_then_success_across_three_clouds_in_one_tick(
    fake_ec2: FakeEC2, fake_gce: FakeGCE, fake_arm: FakeARM, tmp_path: Path
) -> None:
    clock = FakeClock()
    fake_arm.now = clock.now
    fake_ec2.exhaust("p4d.24xlarge", "us-east-1a", "spot")
    fake_gce.inject(
        "quotaExceeded",
        403,
        message="Quota 'PREEMPTIBLE_NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1.",
    )

    def providers(p: Policy) -> dict[str, Provider]:
        built = build_providers(p, clock)
        azure = p.clouds.azure
        assert isinstance(azure, AzureCloud)
        # Everything as the daemon builds it, but Azure's credential: the fake's token instead of Entra ID.
        catalog = AzureCatalog.load(None)
        built["azure"] = AzureProvider(
            azure, clock, p.daemon.id, candidate_types(p, "azure"), catalog, credential=fake_arm.credential
        )
        return built

    loaded = parse_policy(policy(fake_ec2, fake_gce, fake_arm), "policy.yaml")
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    daemon = Daemon(loaded, store=store, clock=clock, provider_factory=providers)
    plan = daemon.tick()

    # One tick: AWS refused (stockout), GCP refused (quota), Azure launched.
    assert fake_ec2.count("RunInstances") == 1
    assert fake_gce.count("instances.insert") == 1
    (record,) = store.instances()
    assert record.offering.cloud == "azure" and record.offering.market == Market.SPOT
    assert record.state in (InstanceState.PROVISIONING, InstanceState.RUNNING)

    # Capacity memory holds both blocks, each at its scope.
    blocks = {(b.cloud, b.kind, b.scope, b.zone, b.region) for b in store.blocks(now=clock.now())}
    assert blocks == {
        ("aws", FailureKind.CAPACITY, Scope.ZONE, "us-east-1a", "us-east-1"),
        ("gcp", FailureKind.QUOTA, Scope.REGION, "", "us-central1"),
    }
    chosen = plan.decisions["llm"].chosen
    assert [c.split(" ")[0] for c in chosen] == [
        "aws/us-east-1a/p4d.24xlarge/spot",
        "fallback",
        "fallback",
    ]
    assert "gcp/us-central1-a/g2-standard-8/spot" in chosen[1] and "azure/" in chosen[2]

    # `gpu-autoscaler explain` says the same in words.
    with serve(create_app(daemon, None)) as url:
        console = Console(record=True, width=250, color_system=None)
        assert explain(url, "llm", console) == 0
    text = console.export_text()
    for expected in ("aws/us-east-1a/p4d.24xlarge/spot", "gcp/us-central1-a/g2-standard-8/spot", "azure/"):
        assert expected in text
    assert "InsufficientInstanceCapacity" in text and "quota" in text.lower()

    # The next tick sees the Azure VM come up and launches nothing more anywhere.
    for _ in range(3):
        clock.advance(15)
        daemon.tick()
    assert [r.state for r in store.instances()] == [InstanceState.READY]
    assert fake_ec2.count("RunInstances") == 1 and fake_gce.count("instances.insert") == 1
    store.close()
