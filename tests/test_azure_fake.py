"""The fake Resource Manager (tests/azure_fake.py) answers what the real SDK sends, the way Azure answers it."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.mgmt.compute import ComputeManagementClient

from providers.azure import client_options
from tests.azure_fake import FAKE_TOKEN, FakeARM, fresh_fake

SSH = {"publicKeys": [{"path": "/home/azureuser/.ssh/authorized_keys", "keyData": "ssh-ed25519 AAAA test"}]}


@pytest.fixture
def fake_arm(request: pytest.FixtureRequest) -> FakeARM:
    return fresh_fake(request.config)


def _tls(fake: FakeARM) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(fake.ca_path))


def _compute(fake: FakeARM) -> ComputeManagementClient:
    return ComputeManagementClient(fake.credential, fake.subscription, **client_options(fake.cloud_config()))


def _vm(fake: FakeARM, nic: str, *, spot: bool = False, size: str = "Standard_NC4as_T4_v3") -> dict[str, Any]:
    props: dict[str, Any] = {
        "hardwareProfile": {"vmSize": size},
        "storageProfile": {"imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "latest"},
                           "osDisk": {"name": "d1", "createOption": "FromImage", "deleteOption": "Delete"}},
        "osProfile": {"computerName": "vm1", "adminUsername": "azureuser", "customData": "IyE=",
                      "linuxConfiguration": {"disablePasswordAuthentication": True, "ssh": SSH}},
        "networkProfile": {"networkInterfaces": [{"id": nic, "properties": {"deleteOption": "Delete"}}]},
    }  # fmt: skip
    if spot:
        props.update(priority="Spot", evictionPolicy="Deallocate", billingProfile={"maxPrice": -1})
    return {"location": "eastus", "zones": ["1"], "tags": {"k": "v"}, "properties": props}


def _nic(fake: FakeARM, name: str = "nic1") -> str:
    with httpx.Client(verify=_tls(fake)) as client:
        url = f"{fake.url}{fake._id('nic', name)}?api-version=2024-05-01"
        body = {"location": "eastus", "properties": {"ipConfigurations": [
            {"name": "ip", "properties": {"subnet": {"id": fake.subnet_id()}}}]}}  # fmt: skip
        answer = client.put(url, json=body, headers={"Authorization": f"Bearer {FAKE_TOKEN}"})
    assert answer.status_code == 201
    return str(answer.json()["id"])


def test_every_request_needs_the_bearer_token_and_an_api_version(fake_arm: FakeARM) -> None:
    url = f"{fake_arm.url}{fake_arm._id('virtualMachines', '')}".rstrip("/")
    with httpx.Client(verify=_tls(fake_arm)) as client:
        assert client.get(url, params={"api-version": "x"}).status_code == 401
        assert client.get(url, headers={"Authorization": f"Bearer {FAKE_TOKEN}"}).status_code == 400
        answer = client.get(url, params={"api-version": "x"}, headers={"Authorization": f"Bearer {FAKE_TOKEN}"})
    assert answer.status_code == 200 and answer.json() == {"value": []}


def test_create_polls_the_operation_and_a_second_put_is_the_same_vm(fake_arm: FakeARM) -> None:
    compute = _compute(fake_arm)
    nic = _nic(fake_arm)
    vm = compute.virtual_machines.begin_create_or_update(
        fake_arm.resource_group, "vm1", _vm(fake_arm, nic)
    ).result()  # type: ignore[call-overload]
    assert vm.provisioning_state == "Succeeded"
    assert fake_arm.count("op.get") == 2, "InProgress once, then Succeeded"
    again = compute.virtual_machines.begin_create_or_update(
        fake_arm.resource_group, "vm1", _vm(fake_arm, nic)
    ).result()  # type: ignore[call-overload]
    assert again.vm_id == vm.vm_id
    assert fake_arm.leftovers() == {"vms": ["vm1"], "nics": ["nic1"], "disks": ["d1"]}
    view = compute.virtual_machines.get(fake_arm.resource_group, "vm1", expand="instanceView")
    assert [s.code for s in view.instance_view.statuses] == ["ProvisioningState/succeeded", "PowerState/running"]
    assert fake_arm.credential.calls >= 1, "the SDK's bearer-token policy asked the credential"
    compute.virtual_machines.begin_delete(fake_arm.resource_group, "vm1").result()
    assert fake_arm.leftovers() == {"vms": [], "nics": [], "disks": []}, "deleteOption Delete takes NIC and disk"


def test_failure_at_the_end_leaves_a_failed_vm(fake_arm: FakeARM) -> None:
    compute = _compute(fake_arm)
    fake_arm.inject("ZonalAllocationFailed", at_end=True, nested=True)
    poller = compute.virtual_machines.begin_create_or_update(
        fake_arm.resource_group, "vm1", _vm(fake_arm, _nic(fake_arm))
    )  # type: ignore[call-overload]
    with pytest.raises(HttpResponseError) as err:
        poller.result()
    assert err.value.status_code == 200, "the poll's status, not a 4xx"
    assert err.value.error is not None and err.value.error.details[0].code == "ZonalAllocationFailed"
    view = compute.virtual_machines.get(fake_arm.resource_group, "vm1", expand="instanceView")
    assert view.provisioning_state == "Failed"
    assert view.instance_view.statuses[0].code == "ProvisioningState/failed/ZonalAllocationFailed"
    assert fake_arm.leftovers() == {"vms": ["vm1"], "nics": ["nic1"], "disks": ["d1"]}


def test_sync_errors_lost_answers_paging_and_evictions(fake_arm: FakeARM) -> None:
    compute = _compute(fake_arm)
    nic = _nic(fake_arm)
    fake_arm.inject("SkuNotAvailable", status=409)
    with pytest.raises(ResourceExistsError):
        compute.virtual_machines.begin_create_or_update(fake_arm.resource_group, "vm1", _vm(fake_arm, nic))  # type: ignore[call-overload]
    assert fake_arm.leftovers()["vms"] == []
    fake_arm.lose_next_answer("vm.put")
    with pytest.raises(HttpResponseError) as err:
        compute.virtual_machines.begin_create_or_update(
            fake_arm.resource_group, "vm1", _vm(fake_arm, nic, spot=True)
        )  # type: ignore[call-overload]
    assert err.value.status_code == 503 and fake_arm.leftovers()["vms"] == ["vm1"], "applied, answer lost"
    fake_arm.page_size = 1
    compute.virtual_machines.begin_create_or_update(
        fake_arm.resource_group, "vm2", _vm(fake_arm, _nic(fake_arm, "nic2"))
    ).result()  # type: ignore[call-overload]
    assert [v.name for v in compute.virtual_machines.list(fake_arm.resource_group)] == ["vm1", "vm2"]
    assert fake_arm.count("vms.list") == 2, "two pages, through nextLink"
    fake_arm.evict("vm1", deallocate=True)
    status = {v.name: [s.code for s in v.instance_view.statuses]
              for v in compute.virtual_machines.list_all(status_only="true")}  # fmt: skip
    assert "PowerState/deallocated" in status["vm1"]
    with pytest.raises(ValueError):
        fake_arm.evict("vm2")
    with httpx.Client(verify=_tls(fake_arm)) as client:
        answer = client.delete(f"{fake_arm.url}{fake_arm._id('nic', 'nic2')}?api-version=x",
                               headers={"Authorization": f"Bearer {FAKE_TOKEN}"})  # fmt: skip
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "NicInUse"


def test_resource_skus_carry_gpus_zones_and_restrictions(fake_arm: FakeARM) -> None:
    fake_arm.restrict("Standard_NC4as_T4_v3", "eastus", zones=["3"])
    skus = {s.name: s for s in _compute(fake_arm).resource_skus.list(filter="location eq 'eastus'")}
    t4 = skus["Standard_NC4as_T4_v3"].as_dict()
    assert {c["name"]: c["value"] for c in t4["capabilities"]}["GPUs"] == "1"
    assert t4["locationInfo"][0]["zones"] == ["1", "2", "3"]
    assert t4["restrictions"][0]["restrictionInfo"]["zones"] == ["3"]
    assert "Premium_LRS" in skus, "other resource types are listed too: the provider filters"
