"""The Azure provider beyond the contract suite: offerings from resource SKUs and the catalog, the request it
sends, failures at the end of an operation, retries after a crash, timeouts, cleanup of what could bill."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from autoscaler import config
from autoscaler.clock import FakeClock
from autoscaler.errors import AuthError, CapacityError, ConfigError, TransientError
from autoscaler.model import (
    TAG_DAEMON,
    TAG_INTENT,
    TAG_POOL,
    CloudState,
    LaunchRequest,
    LaunchTemplate,
    Market,
    OfferingKey,
)
from providers import BuildContext
from providers.azure import AzureProvider, build, image_reference, vm_name
from providers.azure_catalog import AzureCatalog
from tests.azure_fake import FakeARM, fresh_fake
from tests.harness_azure import SSH_KEY
from tests.provider_harness import START

T4, A100, H100 = "Standard_NC4as_T4_v3", "Standard_NC24ads_A100_v4", "Standard_NC40ads_H100_v5"
DAEMON = "unit"


@pytest.fixture
def fake_arm(request: pytest.FixtureRequest) -> FakeARM:
    return fresh_fake(request.config)


def provider(fake: FakeARM, clock: FakeClock | None = None, regions: dict[str, list[str]] | None = None,
             **overrides: Any) -> AzureProvider:  # fmt: skip
    cfg = fake.cloud_config(regions or {"eastus": ["1", "2", "3"]}, **overrides)
    types = frozenset({T4, A100, H100})
    return AzureProvider(cfg, clock or FakeClock(START), DAEMON, types, AzureCatalog.load(None),
                         credential=fake.credential)  # fmt: skip


def request(fake: FakeARM, token: str, key: OfferingKey | None = None, **extra: Any) -> LaunchRequest:
    key = key or OfferingKey("azure", "eastus", "1", T4, Market.ON_DEMAND)
    template = LaunchTemplate(
        image="Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest",
        network=fake.subnet_id(key.region),
        user_data="#cloud-config\nruncmd: [echo hi]\n",
        disk_gb=200,
        tags={"team": "ml"},
        extra={"ssh_public_key": SSH_KEY, **extra},
    )
    return LaunchRequest(token, "p1", key, template, {TAG_DAEMON: DAEMON, TAG_POOL: "p1", TAG_INTENT: token})


def test_offerings_follow_resource_skus_restrictions_and_the_catalog(fake_arm: FakeARM) -> None:
    fake_arm.restrict(T4, "eastus", zones=["3"])
    fake_arm.restrict(A100, "eastus2")
    clock = FakeClock(START)
    p = provider(fake_arm, clock, {"eastus": ["1", "2", "3"], "eastus2": ["1"], "westus": []})
    keys = {(o.key.region, o.key.zone, o.key.instance_type, o.key.market): o for o in p.offerings()}
    assert ("eastus", "3", T4, Market.ON_DEMAND) not in keys, "zone 3 is restricted for this subscription"
    assert ("eastus", "2", T4, Market.SPOT) in keys
    assert not any(k[0] == "eastus2" and k[2] == A100 for k in keys), "the whole location is restricted"
    assert ("westus", "westus", T4, Market.ON_DEMAND) in keys, "a location without zones: one regional offering"
    assert ("eastus", "1", H100, Market.ON_DEMAND) in keys and ("eastus", "1", H100, Market.SPOT) not in keys
    assert not any(k[0] == "westus" and k[2] == H100 for k in keys), "no catalog price there: no offering"
    a100 = keys[("eastus", "1", A100, Market.SPOT)]
    assert (a100.gpus, a100.price_usd_per_hour) == (1, 0.444433)
    assert a100.price_observed_at is not None and a100.price_observed_at.tzinfo is not None
    p.offerings()
    assert fake_arm.count("skus.list") == 3, "one listing per location, cached"
    clock.advance(3601)
    p.offerings()
    assert fake_arm.count("skus.list") == 6, "refreshed after an hour"


def test_launch_sends_a_complete_vm_and_nic(fake_arm: FakeARM) -> None:
    p = provider(fake_arm)
    spot = OfferingKey("azure", "eastus", "2", T4, Market.SPOT)
    inst = p.launch(request(fake_arm, "tok-1", spot, spot_max_price=0.2, accelerated_networking=True))
    name = vm_name(DAEMON, "tok-1")
    assert inst.cloud_id == name and len(name) <= 64 and inst.offering == spot
    assert inst.address and inst.state == CloudState.RUNNING
    vm = fake_arm.vms[name]
    props = vm["properties"]
    assert vm["zones"] == ["2"] and vm["tags"] == {
        "team": "ml",
        TAG_DAEMON: DAEMON,
        TAG_POOL: "p1",
        TAG_INTENT: "tok-1",
    }
    assert (props["priority"], props["evictionPolicy"], props["billingProfile"]) == (
        "Spot",
        "Delete",
        {"maxPrice": 0.2},
    )
    assert base64.b64decode(props["osProfile"]["customData"]).decode().startswith("#cloud-config")
    assert props["osProfile"]["computerName"] == name
    assert props["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] is True
    os_disk = props["storageProfile"]["osDisk"]
    assert (os_disk["name"], os_disk["deleteOption"], os_disk["diskSizeGB"]) == (f"{name}-osdisk", "Delete", 200)
    assert props["storageProfile"]["imageReference"]["sku"] == "22_04-lts-gen2"
    assert props["networkProfile"]["networkInterfaces"][0]["properties"]["deleteOption"] == "Delete"
    nic = fake_arm.nics[f"{name}-nic"]
    assert nic["properties"]["enableAcceleratedNetworking"] is True
    assert nic["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"] == fake_arm.subnet_id()
    assert [i.address for i in p.list_instances()] == [inst.address]
    assert fake_arm.count("nics.list") == 0, "the address was learnt from the NIC it made"


def test_regional_location_launches_without_a_zone(fake_arm: FakeARM) -> None:
    p = provider(fake_arm, regions={"westus": []})
    inst = p.launch(request(fake_arm, "tok-r", OfferingKey("azure", "westus", "westus", T4, Market.ON_DEMAND)))
    assert "zones" not in fake_arm.vms[inst.cloud_id]
    assert [i.offering.zone for i in p.list_instances()] == ["westus"]


def test_allocation_failure_at_the_end_cleans_up_everything(fake_arm: FakeARM) -> None:
    fake_arm.inject("AllocationFailed", at_end=True, nested=True, message="no capacity for this size")
    with pytest.raises(CapacityError) as err:
        provider(fake_arm).launch(request(fake_arm, "tok-f"))
    assert err.value.code == "AllocationFailed" and "no capacity" in str(err.value)
    assert fake_arm.leftovers() == {"vms": [], "nics": [], "disks": []}, "nothing is left to bill"


def test_retry_finds_a_vm_that_failed_while_nobody_listened(fake_arm: FakeARM) -> None:
    fake_arm.op_steps = 0  # the operation ends at the first look
    fake_arm.inject("ZonalAllocationFailed", at_end=True, message="zone 1 is full")
    fake_arm.lose_next_answer("vm.put")
    p = provider(fake_arm)
    with pytest.raises(TransientError):
        p.launch(request(fake_arm, "tok-c"))
    with pytest.raises(CapacityError) as err:
        p.launch(request(fake_arm, "tok-c"))
    assert err.value.code == "ZonalAllocationFailed", "read from the failed VM's instance view"
    assert fake_arm.count("vm.put") == 1
    assert fake_arm.leftovers() == {"vms": [], "nics": [], "disks": []}


def test_a_transient_poll_failure_keeps_the_vm_and_the_retry_answers_it(fake_arm: FakeARM) -> None:
    p = provider(fake_arm)
    fake_arm.inject("TooManyRequests", status=429)  # the VM PUT is throttled: the NIC stays for the retry
    with pytest.raises(TransientError):
        p.launch(request(fake_arm, "tok-p"))
    fake_arm.inject("InternalServerError", status=500, op="op.get")  # now the VM creation's poll fails
    with pytest.raises(TransientError):
        p.launch(request(fake_arm, "tok-p"))
    assert fake_arm.leftovers()["vms"] == [vm_name(DAEMON, "tok-p")], "maybe fine: not deleted"
    again = p.launch(request(fake_arm, "tok-p"))
    assert again.cloud_id == vm_name(DAEMON, "tok-p")
    assert fake_arm.count("vm.put") == 2, "the throttled one and the one that made the VM; the retry sent none"


def test_a_slow_creation_times_out_and_the_next_tick_finds_it(fake_arm: FakeARM) -> None:
    fake_arm.op_steps = 10**6
    p = provider(fake_arm, operation_timeout_seconds=0.2, polling_interval_seconds=0.05)
    with pytest.raises(TransientError, match="still being created"):
        p.launch(request(fake_arm, "tok-s"))
    assert [i.state for i in p.list_instances()] == [CloudState.PENDING]
    assert p.launch(request(fake_arm, "tok-s")).state == CloudState.PENDING
    assert fake_arm.count("vm.put") == 1


def test_failed_and_evicted_vms_are_reported_ended_and_deleted(fake_arm: FakeARM) -> None:
    fake_arm.op_steps = 0  # the operation ends at the first look
    clock = FakeClock(START)
    p = provider(fake_arm, clock)
    spot = OfferingKey("azure", "eastus", "1", T4, Market.SPOT)
    evicted = p.launch(request(fake_arm, "tok-e", spot, eviction_policy="Deallocate"))
    fake_arm.evict(evicted.cloud_id, deallocate=True)
    fake_arm.inject("AllocationFailed", at_end=True)
    fake_arm.lose_next_answer("vm.put")
    with pytest.raises(TransientError):
        p.launch(request(fake_arm, "tok-x"))
    listed = {i.cloud_id: i for i in p.list_instances()}
    assert listed[evicted.cloud_id].state == CloudState.TERMINATED and listed[evicted.cloud_id].preempted
    failed = listed[vm_name(DAEMON, "tok-x")]
    assert failed.state == CloudState.TERMINATED and not failed.preempted
    assert fake_arm.count("vms_all.list") == 1, "the instance view is read only because a Deallocate VM is listed"
    assert fake_arm.count("vm.delete") == 0, "not on the first sighting: the daemon records the end first"
    p.list_instances()
    assert fake_arm.count("vm.delete") == 2
    assert p.list_instances() == []
    assert fake_arm.leftovers() == {"vms": [], "nics": [], "disks": []}


def test_terminate_sends_one_delete_and_gone_is_success(fake_arm: FakeARM) -> None:
    p = provider(fake_arm)
    inst = p.launch(request(fake_arm, "tok-t"))
    before = fake_arm.count("op.get")
    p.terminate([inst.cloud_id, "gpua-00000000000000000000"])
    assert fake_arm.count("vm.delete") == 2 and fake_arm.count("op.get") == before, "not polled"
    fake_arm.inject("AuthorizationFailed", status=403, op="vm.delete")
    with pytest.raises(AuthError):
        p.terminate([inst.cloud_id])


def test_launch_after_restart_learns_addresses_with_one_nic_listing(fake_arm: FakeARM) -> None:
    clock = FakeClock(START)
    provider(fake_arm, clock).launch(request(fake_arm, "tok-a"))
    fresh = provider(fake_arm, clock)
    assert [bool(i.address) for i in fresh.list_instances()] == [True]
    fresh.list_instances()
    assert fake_arm.count("nics.list") == 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"image": ""}, "image is not set"),
        ({"image": "not-a-urn"}, "URN"),
        ({"network": ""}, "subnet"),
        ({"extra": {}}, "ssh_public_key"),
        ({"extra": {"ssh_public_key": SSH_KEY, "subnet_id": "x"}}, "unknown"),
        ({"extra": {"ssh_public_key": SSH_KEY, "eviction_policy": "Stop"}}, "eviction_policy"),
    ],
)
def test_bad_templates_are_config_errors_before_any_write(
    fake_arm: FakeARM, change: dict[str, Any], match: str
) -> None:
    base = request(fake_arm, "tok-b", OfferingKey("azure", "eastus", "1", T4, Market.SPOT))
    t = base.template
    fields = {"image": t.image, "network": t.network, "extra": t.extra, **change}
    bad = LaunchRequest(base.token, base.pool, base.offering, LaunchTemplate(fields["image"], t.user_data, t.disk_gb,
                        fields["network"], t.tags, fields["extra"]), base.tags)  # fmt: skip
    with pytest.raises(ConfigError, match=match):
        provider(fake_arm).launch(bad)
    assert fake_arm.count("nic.put") == 0 and fake_arm.count("vm.put") == 0


def test_name_taken_by_another_launch_is_a_config_error(fake_arm: FakeARM) -> None:
    p = provider(fake_arm)
    inst = p.launch(request(fake_arm, "tok-n"))
    fake_arm.vms[inst.cloud_id]["tags"][TAG_INTENT] = "someone-else"
    with pytest.raises(ConfigError, match="taken"):
        p.launch(request(fake_arm, "tok-n"))


def test_per_location_subnets_and_image_ids(fake_arm: FakeARM) -> None:
    p = provider(fake_arm, regions={"eastus": ["1"], "eastus2": ["1"]})
    key = OfferingKey("azure", "eastus2", "1", T4, Market.ON_DEMAND)
    inst = p.launch(request(fake_arm, "tok-sub", key, subnets=[f"eastus2={fake_arm.subnet_id('eastus2')}"]))
    ip = fake_arm.nics[f"{inst.cloud_id}-nic"]["properties"]["ipConfigurations"][0]["properties"]
    assert ip["subnet"]["id"] == fake_arm.subnet_id("eastus2")
    assert image_reference("/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/i") == {
        "id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/i"
    }
    assert "communityGalleryImageId" in image_reference("/CommunityGalleries/g/Images/i/Versions/latest")


def test_build_uses_default_azure_credential_lazily() -> None:
    from azure.identity import DefaultAzureCredential

    cfg = config.AzureCloud(regions={"eastus": ["1"]}, subscription_id="s", resource_group="rg")
    ctx = BuildContext(FakeClock(START), "d", None, frozenset({T4}))
    built = build(cfg, ctx)
    assert isinstance(built.compute._config.credential, DefaultAzureCredential)
    with pytest.raises(TypeError):
        build(config.AwsCloud(regions={"us-east-1": []}), ctx)
    with pytest.raises(ConfigError, match="subscription_id"):
        build(config.AzureCloud(regions={"eastus": []}, resource_group="rg"), ctx)
