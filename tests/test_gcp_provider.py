"""The GCP provider beyond the contract suite: offerings from machine and accelerator types, the insert request
it sends, idempotency when the server forgot the request id, operation timeouts, typed read errors, labels."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from autoscaler.clock import FakeClock
from autoscaler.errors import AuthError, CapacityError, ConfigError, ProviderError, QuotaError, TransientError
from autoscaler.model import (
    TAG_DAEMON,
    TAG_INTENT,
    TAG_POOL,
    CloudState,
    LaunchRequest,
    LaunchTemplate,
    Market,
    OfferingKey,
    Scope,
)
from providers.gcp import GcpProvider, instance_name, request_id
from providers.gcp_catalog import GcpCatalog
from tests import gcp_fake
from tests.gcp_fake import FakeGCE
from tests.harness_gcp import IMAGE, gcp_settings

fake_gce = gcp_fake.fake_gce  # the fixture
TYPES = frozenset({"g2-standard-8", "n1-standard-8+nvidia-tesla-t4", "n1-standard-8+nvidia-tesla-v100x2"})


def provider(fake: FakeGCE, **settings: object) -> GcpProvider:
    cfg = gcp_settings(fake, **settings)
    return GcpProvider(cfg, FakeClock(), "gcp-test", TYPES, GcpCatalog.load(None))


def request(itype: str = "g2-standard-8", market: Market = Market.SPOT, zone: str = "us-central1-a",
            template: LaunchTemplate | None = None, token: str | None = None) -> LaunchRequest:  # fmt: skip
    token = token or str(uuid.uuid4())
    key = OfferingKey("gcp", zone.rsplit("-", 1)[0], zone, itype, market)
    tags = {TAG_DAEMON: "gcp-test", TAG_POOL: "llm", TAG_INTENT: token}
    return LaunchRequest(token, "llm", key, template or LaunchTemplate(image=IMAGE), tags)


def test_offerings_come_from_machine_and_accelerator_types(fake_gce: FakeGCE) -> None:
    p = provider(fake_gce, regions={"us-central1": [], "europe-west4": ["europe-west4-a"]})
    offered = {(o.key.zone, o.key.instance_type, o.key.market): o for o in p.offerings()}

    def zones(itype: str) -> list[str]:
        return sorted({z for z, t, _ in offered if t == itype})

    assert zones("g2-standard-8") == ["europe-west4-a", "us-central1-a", "us-central1-b"]
    assert zones("n1-standard-8+nvidia-tesla-t4") == ["europe-west4-a", "us-central1-a", "us-central1-b"]
    assert zones("n1-standard-8+nvidia-tesla-v100x2") == ["europe-west4-a", "us-central1-a"]
    g2 = offered[("us-central1-a", "g2-standard-8", Market.ON_DEMAND)]
    assert g2.gpus == 1 and g2.price_usd_per_hour == pytest.approx(0.29358 + 0.56004)
    v100 = offered[("us-central1-a", "n1-standard-8+nvidia-tesla-v100x2", Market.SPOT)]
    assert v100.gpus == 2 and v100.price_usd_per_hour == pytest.approx(0.09882 + 2 * 0.8231)
    assert v100.price_source.startswith("skypilot-org/skypilot-catalog@") and v100.price_observed_at is not None
    p.offerings()
    assert fake_gce.count("machineTypes.aggregatedList") == 1, "placement is cached"
    assert fake_gce.count("acceleratorTypes.aggregatedList") == 1


def test_the_insert_request(fake_gce: FakeGCE) -> None:
    p = provider(fake_gce)
    template = LaunchTemplate(
        image=IMAGE, user_data="#!/bin/sh\necho hi", disk_gb=200, network="global/networks/gpu", tags={"team": "ml"},
        extra={"subnetwork": ["regions/europe-west4/subnetworks/gpu", "regions/us-central1/subnetworks/gpu"],
               "disk_type": "pd-ssd", "external_ip": True,
               "service_account": "vm@p.iam.gserviceaccount.com", "network_tags": "llm,gpu"},
    )  # fmt: skip
    req = request("n1-standard-8+nvidia-tesla-t4", Market.SPOT, template=template)
    inst = p.launch(req)
    assert inst.cloud_id == f"us-central1-a/{instance_name(req.token)}" and inst.state == CloudState.RUNNING
    assert inst.offering == req.offering, "the composite type comes back from the instance's accelerators"
    (sent,) = fake_gce.inserted()
    assert sent["name"] == instance_name(req.token) and sent["labels"] == {**req.tags, "team": "ml"}
    assert sent["machineType"] == "zones/us-central1-a/machineTypes/n1-standard-8"
    assert sent["guestAccelerators"] == [
        {"acceleratorType": "zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 1}
    ]
    assert sent["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                                  "onHostMaintenance": "TERMINATE", "automaticRestart": False}  # fmt: skip
    disk = sent["disks"][0]
    assert disk["boot"] and disk["autoDelete"] and disk["initializeParams"] == {
        "sourceImage": IMAGE, "diskSizeGb": "200", "diskType": "zones/us-central1-a/diskTypes/pd-ssd"}  # fmt: skip
    assert sent["networkInterfaces"] == [{"network": "global/networks/gpu",
                                          "subnetwork": "regions/us-central1/subnetworks/gpu",
                                          "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}]  # fmt: skip
    assert sent["metadata"] == {"items": [{"key": "startup-script", "value": "#!/bin/sh\necho hi"}]}
    assert sent["serviceAccounts"][0]["email"] == "vm@p.iam.gserviceaccount.com"
    assert sent["tags"] == {"items": ["llm", "gpu"]}
    assert fake_gce.count("zoneOperations.wait", "us-central1-a") == 1, "our own operations client, on the fake"
    assert request_id(req.token) == req.token
    on_demand = p.launch(request("g2-standard-8", Market.ON_DEMAND))
    assert fake_gce.inserted()[1]["scheduling"] == {"onHostMaintenance": "TERMINATE", "automaticRestart": True}
    assert on_demand.offering.market == Market.ON_DEMAND


def test_a_forgotten_request_id_collides_on_the_name_and_returns_the_instance(fake_gce: FakeGCE) -> None:
    p = provider(fake_gce)
    req = request(token="not-a-uuid-token")
    first = p.launch(req)
    fake_gce._requests.clear()  # the server no longer remembers the request id
    again = p.launch(req)
    assert again.cloud_id == first.cloud_id and len(fake_gce.instances) == 1
    sent = [query["requestId"] for method, _, _, query in fake_gce.log if method == "instances.insert"]
    assert sent == [request_id(req.token)] * 2 and uuid.UUID(sent[0]), "a non-UUID token maps to a UUID"
    other = request(token="another-token")
    fake_gce.instances[("us-central1-a", instance_name(other.token))] = {
        **fake_gce.instances[("us-central1-a", instance_name(req.token))], "labels": {}}  # fmt: skip
    with pytest.raises(ConfigError, match="not made by this launch"):
        p.launch(other)


def test_an_operation_that_does_not_finish_is_transient_then_the_retry_finds_it(fake_gce: FakeGCE) -> None:
    p = provider(fake_gce, operation_timeout_seconds=0.2)
    fake_gce.stall_operations()
    req = request()
    with pytest.raises(TransientError, match="not done after"):
        p.launch(req)
    fake_gce.stall_operations(False)
    inst = p.launch(req)
    assert inst.state == CloudState.RUNNING and len(fake_gce.instances) == 1
    assert fake_gce.count("instances.insert") == 2, "the same request id: the same operation"


def test_requests_refused_before_any_call(fake_gce: FakeGCE) -> None:
    p = provider(fake_gce)
    bad = [
        request(template=LaunchTemplate(image=IMAGE, tags={"Team": "ML"})),
        request(template=LaunchTemplate(image=IMAGE, extra={"accelerator_type": "nvidia-tesla-t4"})),
        request(template=LaunchTemplate(image=IMAGE, extra={"subnet": "x"})),
        request(template=LaunchTemplate(image=IMAGE, extra={"spot_termination_action": "HIBERNATE"})),
        request(template=LaunchTemplate(image=IMAGE, extra={"subnetwork": "regions/us-east1/subnetworks/gpu"})),
        request(template=LaunchTemplate()),
        request(zone="us-east1-b"),  # a region not configured
        request(zone="us-central1-c"),  # a zone not configured
        request("n1-standard-8+"),
    ]
    for req in bad:
        with pytest.raises(ConfigError):
            p.launch(req)
    assert fake_gce.count("instances.insert") == 0


@pytest.mark.parametrize(
    ("code", "message", "status", "error", "scope"),
    [
        ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "no L4 in us-central1-a", 503, CapacityError, Scope.ZONE),
        ("QUOTA_EXCEEDED", "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 4.0 globally.", 403, QuotaError, Scope.CLOUD),
        ("QUOTA_EXCEEDED", "Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1.", 403, QuotaError,
         Scope.REGION),
        ("RESOURCE_NOT_FOUND", "The resource 'projects/x/global/images/gone' was not found", 404, ConfigError, None),
        ("INTERNAL_ERROR", "Internal error. Please try again.", 500, TransientError, None),
    ],
)  # fmt: skip
def test_errors_that_end_the_operation_are_typed(
    fake_gce: FakeGCE, code: str, message: str, status: int, error: type[ProviderError], scope: Scope | None
) -> None:
    fake_gce.fail_operation(code, message=message, http_status=status)
    with pytest.raises(error) as raised:
        provider(fake_gce).launch(request())
    assert raised.value.code == code and raised.value.message == message
    if scope is not None:
        assert getattr(raised.value, "scope", None) == scope
    assert fake_gce.instances == {}, "a failed operation makes nothing"


def test_an_unreachable_zone_fails_the_listing(fake_gce: FakeGCE) -> None:
    p = provider(fake_gce)
    p.launch(request())
    fake_gce.unreachable.add("us-central1-b")
    with pytest.raises(TransientError, match="unreachable"):
        p.list_instances()  # absence from a partial listing must not pass for "gone"
    fake_gce.unreachable = {"asia-east1-a"}  # not a configured region: no matter
    assert len(p.list_instances()) == 1


def test_reads_retry_5xx_only_when_configured(fake_gce: FakeGCE) -> None:
    fake_gce.inject("backendError", 503, method="instances.aggregatedList")
    with pytest.raises(TransientError):
        provider(fake_gce).list_instances()
    fake_gce.inject("backendError", 503, method="instances.aggregatedList")
    assert provider(fake_gce, read_retry_seconds=5).list_instances() == []
    assert fake_gce.count("instances.aggregatedList") == 3


def test_preempted_and_deleted_instances(fake_gce: FakeGCE) -> None:
    p = provider(fake_gce)
    spot = p.launch(request(template=LaunchTemplate(image=IMAGE, extra={"spot_termination_action": "STOP"})))
    gone = p.launch(request())  # DELETE, the default
    fake_gce.preempt(*spot.cloud_id.split("/"))
    fake_gce.preempt(*gone.cloud_id.split("/"))
    (listed,) = p.list_instances()
    assert listed.cloud_id == spot.cloud_id and listed.preempted and listed.state == CloudState.STOPPING
    p.terminate([spot.cloud_id, gone.cloud_id, "us-central1-a/gpua-never-made", "not-a-gce-id"])
    assert p.list_instances() == []


def test_credentials(fake_gce: FakeGCE, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    secure = provider(fake_gce, endpoint="https://127.0.0.1:9")  # not plain http: real credentials are needed
    with pytest.raises(AuthError):
        secure.list_instances()
    with pytest.raises(ConfigError, match="project"):
        provider(fake_gce, project="").list_instances()
