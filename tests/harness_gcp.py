"""The GCP provider in the contract suite: real google-cloud-compute against the fake Compute Engine of
tests/gcp_fake.py (one server per test session, emptied for each test).

How each situation is set up: `exhaust` makes inserts end with ZONE_RESOURCE_POOL_EXHAUSTED inside the operation
(as a real stockout does); `fault` answers the next insert with a synchronous error (503 insufficientCapacity,
403 quotaExceeded, 503 backendError, 403 forbidden, 404 notFound for the image), because the contract then
retries the same token and expects success, while Compute Engine keeps a request id's operation (the fake does
too), so an insert whose operation failed answers that failed operation again; the daemon never retries a
refused launch's token.
`preempt` shows the spot VM TERMINATED, as Compute Engine does when it takes one back (before deleting it, with
the default instanceTerminationAction DELETE); a "crash" is a lost answer: the insert is applied and the client
gets a 503.
"""

from __future__ import annotations

import pytest

from autoscaler import config
from autoscaler.clock import FakeClock
from autoscaler.errors import TransientError
from autoscaler.model import LaunchTemplate, Market, OfferingKey
from providers.gcp import GcpProvider
from providers.gcp_catalog import GcpCatalog
from tests.gcp_fake import PROJECT, FakeGCE, shared_server
from tests.provider_harness import DAEMON, Harness

IMAGE = "projects/debian-cloud/global/images/family/debian-12"
GCP_FAULTS = {
    "capacity": (503, "insufficientCapacity", "The zone does not have enough resources to fulfil the request."),
    "quota": (403, "quotaExceeded", "Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1."),
    "transient": (503, "backendError", "Backend Error"),
    "auth": (403, "forbidden", "Required 'compute.instances.create' permission for 'projects/gpu-test-project'"),
    "config": (404, "notFound", f"The resource 'projects/debian-cloud/global/images/{IMAGE}' was not found"),
}


def gcp_settings(fake: FakeGCE, **overrides: object) -> config.GcpCloud:
    settings: dict[str, object] = {
        "project": PROJECT,
        "regions": {"us-central1": ["us-central1-a", "us-central1-b"]},
        "endpoint": fake.endpoint,
        "read_retry_seconds": 0,
        "operation_timeout_seconds": 5,
        **overrides,
    }
    return config.GcpCloud.model_validate(settings)


class GcpHarness(Harness):
    name = "gcp"
    boot_seconds = None  # the fake's VMs run as soon as their operation is read, whatever the fake clock says
    crash_error: type[BaseException] = TransientError

    def __init__(self, clock: FakeClock, fake: FakeGCE) -> None:
        self.clock = clock
        self.fake = fake
        types = frozenset({"g2-standard-8", "n1-standard-8+nvidia-tesla-t4"})
        self.provider = GcpProvider(gcp_settings(fake), clock, DAEMON, types, GcpCatalog.load(None))

    def offering(self, market: Market = Market.ON_DEMAND) -> OfferingKey:
        return OfferingKey("gcp", "us-central1", "us-central1-a", "g2-standard-8", market)

    def template(self) -> LaunchTemplate:
        return LaunchTemplate(image=IMAGE, tags={"team": "ml"})

    def exhaust(self, key: OfferingKey) -> None:
        self.fake.exhaust(key.instance_type, key.zone, str(key.market))

    def fault(self, kind: str, key: OfferingKey) -> None:
        status, reason, message = GCP_FAULTS[kind]
        self.fake.inject(reason, status, message=message, zone=key.zone, machine_type=key.instance_type)

    def preempt(self, cloud_id: str) -> None:
        zone, _, name = cloud_id.partition("/")
        self.fake.preempt(zone, name, delete=False)

    def crash_after_next_accept(self) -> None:
        self.fake.lose_next_answer("instances.insert")


def make(clock: FakeClock, request: pytest.FixtureRequest) -> Harness:
    fake = shared_server(request.config)
    fake.reset()
    return GcpHarness(clock, fake)
