"""The daemon on Azure, end to end through the real azure-mgmt SDKs against the local HTTPS fake of Resource
Manager (tests/azure_fake.py): an allocation failure at the end of the operation (the failed VM, NIC and disk are
deleted, the pool falls back in the same tick, the offering is blocked), one VM listing per tick, an evicted spot
VM refilled, a crash after the PUT before its answer was recorded, a lost answer, and the README's role covering
every call the daemon makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autoscaler.clock import FakeClock
from autoscaler.config import AzureCloud, Policy
from autoscaler.daemon import Daemon
from autoscaler.interfaces import Provider
from autoscaler.lifecycle import InstanceState
from autoscaler.model import FailureKind, Launch, Market
from autoscaler.policyfile import parse_policy
from autoscaler.store import Store
from providers import candidate_types
from providers.azure import AzureProvider
from providers.azure_catalog import AzureCatalog
from tests.azure_fake import FakeARM, fresh_fake
from tests.harness_azure import SSH_KEY

ROOT = Path(__file__).resolve().parents[1]
A100 = "Standard_NC24ads_A100_v4"
# Every operation of the fake -> the Azure RBAC action it needs (operation polls need none).
ACTIONS = {
    "skus.list": "Microsoft.Compute/skus/read",
    "vms.list": "Microsoft.Compute/virtualMachines/read",
    "vms_all.list": "Microsoft.Compute/virtualMachines/read",
    "vm.get": "Microsoft.Compute/virtualMachines/read",
    "vm.put": "Microsoft.Compute/virtualMachines/write",
    "vm.delete": "Microsoft.Compute/virtualMachines/delete",
    "nic.put": "Microsoft.Network/networkInterfaces/write",
    "nic.get": "Microsoft.Network/networkInterfaces/read",
    "nics.list": "Microsoft.Network/networkInterfaces/read",
    "nic.delete": "Microsoft.Network/networkInterfaces/delete",
    "disk.delete": "Microsoft.Compute/disks/delete",
    "disk.get": "Microsoft.Compute/disks/read",
}


@pytest.fixture
def fake_arm(request: pytest.FixtureRequest) -> FakeARM:
    return fresh_fake(request.config)


def policy(fake: FakeARM, *, min_capacity: int = 1, eviction: str = "Delete") -> str:
    return f"""
daemon: {{id: azure-test, tick_seconds: 15}}
clouds:
  azure:
    regions: {{eastus: ["1", "2"]}}
    subscription_id: {fake.subscription}
    resource_group: {fake.resource_group}
    endpoint: {fake.url}
    ca_bundle: {fake.ca_path}
    polling_interval_seconds: 0
    retry_total: 0
    timeout_seconds: 5
    operation_timeout_seconds: 10
pools:
  - name: llm
    min_capacity: {min_capacity}
    max_capacity: 64
    launch_templates:
      azure:
        image: "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
        network: {fake.subnet_id("eastus")}
        user_data: "#!/bin/sh"
        disk_gb: 200
        tags: {{team: ml}}
        extra: {{ssh_public_key: "{SSH_KEY}", eviction_policy: {eviction}}}
    candidates:
      - {{cloud: azure, instance_type: {A100}, market: spot, zones: ["1"], throughput: 1}}
      - {{cloud: azure, instance_type: {A100}, market: on-demand, zones: ["1"], throughput: 1}}
"""


class AzureRig:
    def __init__(self, fake: FakeARM, text: str, tmp_path: Path) -> None:
        self.fake = fake
        self.loaded = parse_policy(text, "policy.yaml")
        self.clock = FakeClock()
        fake.now = self.clock.now
        self.url = f"sqlite:///{tmp_path / 'state.db'}"
        self.store = Store.open(self.url)
        self.daemon = self._daemon()

    def providers(self, policy: Policy) -> dict[str, Provider]:
        cfg = policy.clouds.azure
        assert isinstance(cfg, AzureCloud)
        types = candidate_types(policy, "azure")
        catalog = AzureCatalog.load(None)
        return {
            "azure": AzureProvider(
                cfg, self.clock, policy.daemon.id, types, catalog, credential=self.fake.credential
            )
        }

    def _daemon(self, **kwargs: object) -> Daemon:
        return Daemon(self.loaded, store=self.store, clock=self.clock, provider_factory=self.providers, **kwargs)  # type: ignore[arg-type]

    def restart(self, text: str | None = None, **kwargs: object) -> None:
        if text is not None:
            self.loaded = parse_policy(text, "policy.yaml")
        self.store.close()
        self.store = Store.open(self.url)
        self.daemon = self._daemon(**kwargs)

    def ticks(self, n: int, seconds: float = 15) -> None:
        for _ in range(n):
            self.clock.advance(seconds)
            self.daemon.tick()


def spot_of(fake: FakeARM) -> list[str | None]:
    return [fake.vms[name]["properties"].get("priority") for name in sorted(fake.vms)]


def test_allocation_failure_at_the_end_cleans_up_falls_back_and_blocks(fake_arm: FakeARM, tmp_path: Path) -> None:
    fake_arm.exhaust(A100, "1", "Spot", code="ZonalAllocationFailed")
    rig = AzureRig(fake_arm, policy(fake_arm), tmp_path)
    plan = rig.daemon.tick()

    assert fake_arm.count("vm.put") == 2, "spot (failed at the end of its operation), then on-demand"
    (vm,) = fake_arm.vms.values()
    assert vm["properties"].get("priority") is None and vm["zones"] == ["1"]
    left = fake_arm.leftovers()
    assert left["nics"] == [f"{vm['name']}-nic"] and left["disks"] == [f"{vm['name']}-osdisk"], (
        "the failed spot VM's NIC and disk are gone"
    )
    assert any("fallback round 1" in c and "on-demand" in c for c in plan.decisions["llm"].chosen)
    records = rig.store.instances()
    assert [(r.offering.market, r.state) for r in records] == [(Market.ON_DEMAND, InstanceState.RUNNING)]
    blocks = rig.store.blocks(now=rig.clock.now())
    assert [(b.instance_type, b.zone, b.market, b.kind) for b in blocks] == [
        (A100, "1", Market.SPOT, FailureKind.CAPACITY)
    ]
    failed = [r for r in rig.store.instances(live_only=False) if r.state == InstanceState.LAUNCH_FAILED]
    assert failed and "ZonalAllocationFailed" in failed[0].reason
    metrics = rig.daemon.metrics.render()[0].decode()
    assert re.search(r'gpu_autoscaler_capacity_errors_total\{[^}]*kind="capacity"[^}]*\} 1\.0', metrics)


def test_one_vm_listing_per_tick(fake_arm: FakeARM, tmp_path: Path) -> None:
    rig = AzureRig(fake_arm, policy(fake_arm, min_capacity=3), tmp_path)
    rig.daemon.tick()
    rig.ticks(3)
    assert len(rig.store.instances()) == 3
    assert all(r.state == InstanceState.READY for r in rig.store.instances())
    assert fake_arm.count("vms.list") == 4
    assert fake_arm.count("skus.list") == 1, "resource SKUs are cached"
    assert fake_arm.count("vms_all.list") == 0 and fake_arm.count("nics.list") == 0
    assert fake_arm.count("vm.put") == 3


@pytest.mark.parametrize("eviction", ["Delete", "Deallocate"])
def test_evicted_spot_vm_is_a_preemption_and_the_pool_refills(
    fake_arm: FakeARM,
    tmp_path: Path,
    eviction: str,
) -> None:
    rig = AzureRig(fake_arm, policy(fake_arm, eviction=eviction), tmp_path)
    rig.daemon.tick()
    rig.ticks(1)
    (first,) = rig.store.instances()
    assert first.offering.market == Market.SPOT and first.state == InstanceState.READY
    fake_arm.evict(first.cloud_id or "", deallocate=eviction == "Deallocate")
    rig.ticks(1 if eviction == "Deallocate" else 6)  # a vanished VM is taken for lost after a grace period
    ended = rig.store.get_instance(first.token)
    assert ended is not None and ended.state == InstanceState.TERMINATED
    events = rig.store.capacity_events()
    assert [(e.kind, e.offering.zone) for e in events] == [(FailureKind.PREEMPTION, "1")]
    live = rig.store.instances()
    assert len(live) == 1 and live[0].offering.market == Market.ON_DEMAND, "refilled on the next offering"
    rig.ticks(2)  # deleted from the second listing that shows it ended on (the first one's tick records it)
    assert first.cloud_id not in fake_arm.vms, "an evicted VM is deleted, nothing of it left to bill"
    assert fake_arm.leftovers()["disks"] == [f"{live[0].cloud_id}-osdisk"]


class Crash(BaseException):
    pass


def test_crash_after_the_put_before_the_answer_was_recorded(fake_arm: FakeARM, tmp_path: Path) -> None:
    def crash(point: str, launch: Launch) -> None:
        if point == "after_answer":
            raise Crash(launch.token)

    rig = AzureRig(fake_arm, policy(fake_arm), tmp_path)
    rig.daemon = rig._daemon(crash_hook=crash)
    with pytest.raises(Crash):
        rig.daemon.tick()
    (record,) = rig.store.instances()
    assert record.state == InstanceState.REQUESTED and record.cloud_id is None
    rig.restart()
    rig.ticks(3)
    (after,) = rig.store.instances()
    assert after.token == record.token and after.cloud_id and after.state == InstanceState.READY
    assert fake_arm.count("vm.put") == 1, "found by its name and tags: nothing launched twice"
    assert len(fake_arm.vms) == 1


def test_lost_answer_is_retried_with_the_same_vm_name(fake_arm: FakeARM, tmp_path: Path) -> None:
    fake_arm.lose_next_answer("vm.put")
    rig = AzureRig(fake_arm, policy(fake_arm), tmp_path)
    rig.daemon.tick()
    rig.ticks(2)
    (record,) = rig.store.instances()
    assert record.state == InstanceState.READY
    assert fake_arm.count("vm.put") == 1 and len(fake_arm.vms) == 1


def role_actions(readme: str) -> set[str] | None:
    """The actions of every Azure role definition (a JSON block naming Microsoft.Compute/...) in the README."""
    blocks = [b for b in re.findall(r"```json\n(.*?)\n```", readme, flags=re.DOTALL) if '"Microsoft.Compute/' in b]
    if not blocks:
        return None
    actions: set[str] = set()
    for block in blocks:
        role = json.loads(block)
        actions |= set(role.get("Actions") or role.get("actions") or [])
        for permission in role.get("permissions") or []:
            actions |= set(permission.get("actions") or [])
    return actions


def test_readme_role_covers_every_call_the_daemon_makes(fake_arm: FakeARM, tmp_path: Path) -> None:
    allowed = role_actions((ROOT / "README.md").read_text())
    assert allowed is not None, "the README shows the Azure role definitions as JSON blocks"
    fake_arm.exhaust(A100, "1", "Spot")
    rig = AzureRig(fake_arm, policy(fake_arm, eviction="Deallocate"), tmp_path)
    rig.daemon.tick()
    rig.restart(policy(fake_arm, min_capacity=0, eviction="Deallocate"))
    rig.ticks(30)  # scale in: drain, terminate
    called = {ACTIONS[op] for op in fake_arm.calls if op in ACTIONS}
    assert {"Microsoft.Compute/virtualMachines/write", "Microsoft.Compute/virtualMachines/delete"} <= called
    assert called <= allowed, f"missing from the README's Azure role: {sorted(called - allowed)}"
