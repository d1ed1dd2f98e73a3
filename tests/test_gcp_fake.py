"""The fake Compute Engine itself (tests/gcp_fake.py), through the real SDK: what the provider tests rely on."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.api_core import exceptions as api
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1 as gce

from tests import gcp_fake
from tests.gcp_fake import PROJECT, FakeGCE, matches_filter

fake_gce = gcp_fake.fake_gce  # the fixture (the lead may move it to conftest.py)

ZONE = "us-central1-a"
IMAGE = "projects/debian-cloud/global/images/family/debian-12"


def clients(fake: FakeGCE) -> tuple[gce.InstancesClient, gce.ZoneOperationsClient]:
    anonymous: Any = AnonymousCredentials  # untyped in google-auth
    kw: dict[str, Any] = {"credentials": anonymous(), "transport": "rest",
                          "client_options": ClientOptions(api_endpoint=fake.endpoint)}  # fmt: skip
    return gce.InstancesClient(**kw), gce.ZoneOperationsClient(**kw)


def body(name: str, *, spot: bool = False, daemon: str = "d1", action: str = "STOP") -> gce.Instance:
    scheduling = gce.Scheduling(on_host_maintenance="TERMINATE", automatic_restart=not spot)
    if spot:
        scheduling.provisioning_model = "SPOT"
        scheduling.instance_termination_action = action
    return gce.Instance(
        name=name, machine_type=f"zones/{ZONE}/machineTypes/g2-standard-8", labels={"daemon": daemon},
        disks=[gce.AttachedDisk(boot=True, initialize_params=gce.AttachedDiskInitializeParams(source_image=IMAGE))],
        scheduling=scheduling,
    )  # fmt: skip


def insert(ic: gce.InstancesClient, instance: gce.Instance, request_id: str | None = None) -> gce.Operation:
    request = gce.InsertInstanceRequest(project=PROJECT, zone=ZONE, instance_resource=instance,
                                        request_id=request_id or str(uuid.uuid4()))  # fmt: skip
    return ic.insert_unary(request=request, retry=None, timeout=5)


def test_insert_is_deduplicated_by_request_id_and_names_collide(fake_gce: FakeGCE) -> None:
    ic, oc = clients(fake_gce)
    rid = str(uuid.uuid4())
    first = insert(ic, body("vm-1"), rid)
    again = insert(ic, body("vm-1"), rid)
    assert again.name == first.name and first.id > 2**62, "the same operation; ids are parsed as uint64"
    done = oc.wait(project=PROJECT, zone=ZONE, operation=first.name, retry=None, timeout=5)
    assert done.status == gce.Operation.Status.DONE and not done.error.errors
    got = ic.get(project=PROJECT, zone=ZONE, instance="vm-1", retry=None, timeout=5)
    assert got.status == "RUNNING" and got.labels["daemon"] == "d1" and got.network_interfaces[0].network_i_p
    with pytest.raises(api.Conflict) as err:
        insert(ic, body("vm-1"))  # a new request id, the same name
    assert err.value.errors[0]["reason"] == "alreadyExists"
    assert len(fake_gce.instances) == 1
    assert fake_gce.count("instances.insert", ZONE) == 3 and fake_gce.count("zoneOperations.wait") == 1


def test_list_filters_by_label_and_pages(fake_gce: FakeGCE) -> None:
    ic, _ = clients(fake_gce)
    for i in range(5):
        insert(ic, body(f"vm-{i}", daemon="d1" if i % 2 == 0 else "d2"))
    fake_gce.page_size = 2
    request = gce.AggregatedListInstancesRequest(project=PROJECT, filter='labels.daemon = "d1"')
    pages = list(ic.aggregated_list(request=request, retry=None, timeout=5).pages)
    assert len(pages) == 2
    names = [i.name for page in pages for scoped in page.items.values() for i in scoped.instances]
    assert names == ["vm-0", "vm-2", "vm-4"]
    zonal = ic.list(request=gce.ListInstancesRequest(project=PROJECT, zone=ZONE, filter='labels.daemon = "d2"'),
                    retry=None, timeout=5)  # fmt: skip
    assert [i.name for i in zonal] == ["vm-1", "vm-3"]
    assert matches_filter({"name": "b"}, '(name = "a") OR (name = "b")')
    assert not matches_filter({"labels": {"k": "v"}}, 'labels.k = "v" AND name = "x"')


def test_errors_sync_and_at_the_end_of_the_operation(fake_gce: FakeGCE) -> None:
    ic, oc = clients(fake_gce)
    fake_gce.inject("quotaExceeded", 403, message="Quota 'NVIDIA_L4_GPUS' exceeded.")
    with pytest.raises(api.Forbidden) as err:
        insert(ic, body("vm-q"))
    assert err.value.errors[0]["reason"] == "quotaExceeded" and not fake_gce.instances
    fake_gce.exhaust("g2-standard-8", ZONE, "spot")
    insert(ic, body("vm-od"))  # on-demand is not exhausted
    op = insert(ic, body("vm-spot", spot=True))
    assert op.status == gce.Operation.Status.RUNNING, "accepted: the stockout comes with the operation's end"
    done = oc.get(project=PROJECT, zone=ZONE, operation=op.name, retry=None, timeout=5)
    assert [e.code for e in done.error.errors] == ["ZONE_RESOURCE_POOL_EXHAUSTED"]
    assert done.http_error_status_code == 503
    assert sorted(name for _, name in fake_gce.instances) == ["vm-od"]


def test_lost_answer_stall_and_preemption(fake_gce: FakeGCE) -> None:
    ic, oc = clients(fake_gce)
    fake_gce.lose_next_answer()
    with pytest.raises(api.ServiceUnavailable):
        insert(ic, body("vm-lost", spot=True))
    assert (ZONE, "vm-lost") in fake_gce.instances, "applied, although the answer was lost"
    fake_gce.stall_operations()
    op = insert(ic, body("vm-slow", spot=True, action="DELETE"))
    still = oc.wait(project=PROJECT, zone=ZONE, operation=op.name, retry=None, timeout=5)
    assert still.status == gce.Operation.Status.RUNNING
    fake_gce.stall_operations(False)
    assert (
        oc.wait(project=PROJECT, zone=ZONE, operation=op.name, retry=None, timeout=5).status == still.Status.DONE
    )
    fake_gce.preempt(ZONE, "vm-lost")  # instanceTerminationAction STOP
    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-lost", retry=None, timeout=5).status == "TERMINATED"
    fake_gce.preempt(ZONE, "vm-slow")  # DELETE
    assert (ZONE, "vm-slow") not in fake_gce.instances
    insert(ic, body("vm-od"))
    with pytest.raises(ValueError, match="not a spot VM"):
        fake_gce.preempt(ZONE, "vm-od")
