"""The Azure provider in the provider contract suite: the real azure-mgmt SDKs against the local HTTPS fake of
Resource Manager (tests/azure_fake.py), picked up by tests/test_provider_contract.py through `make`."""

from __future__ import annotations

import pytest

from autoscaler.clock import FakeClock
from autoscaler.errors import TransientError
from autoscaler.model import LaunchTemplate, Market, OfferingKey
from providers.azure import AzureProvider
from providers.azure_catalog import AzureCatalog
from tests.azure_fake import FakeARM, shared_fake
from tests.provider_harness import DAEMON, Harness

SIZE = "Standard_NC4as_T4_v3"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGpu+autoscaler+contract+test+key contract@test"
# How each fault kind arrives from Azure: (code, HTTP status, end of operation?, message).
FAULTS = {
    "capacity": ("SkuNotAvailable", 409, False, "The requested size is currently not available in zone 1."),
    "quota": ("OperationNotAllowed", 409, False,
              "Operation could not be completed as it results in exceeding approved standardNCASv3_T4 Family "
              "Cores quota."),
    "transient": ("TooManyRequests", 429, False, "The request is being throttled."),
    "auth": ("AuthorizationFailed", 403, False, "The client does not have authorization to perform action."),
    "config": ("InvalidParameter", 400, False, "The image reference is not valid."),
}  # fmt: skip


class AzureHarness(Harness):
    name = "azure"
    boot_seconds = None  # the fake's VMs follow its operations, not the fake clock
    crash_error: type[BaseException] = TransientError  # the PUT took effect, the answer was a 503

    def __init__(self, clock: FakeClock, fake: FakeARM) -> None:
        self.clock = clock
        self.fake = fake
        cfg = fake.cloud_config({"eastus": ["1", "2"]})
        types = frozenset({SIZE, "Standard_NC24ads_A100_v4"})
        self.provider = AzureProvider(
            cfg, clock, DAEMON, types, AzureCatalog.load(None), credential=fake.credential
        )

    def offering(self, market: Market = Market.ON_DEMAND) -> OfferingKey:
        return OfferingKey("azure", "eastus", "1", SIZE, market)

    def template(self) -> LaunchTemplate:
        # Deallocate: an eviction leaves the VM listed (deallocated), so the listing shows the preemption.
        extra = {"ssh_public_key": SSH_KEY, "eviction_policy": "Deallocate"}
        return LaunchTemplate(
            image="Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest",
            network=self.fake.subnet_id("eastus"),
            user_data="#cloud-config\n",
            tags={"team": "ml"},
            extra=extra,
        )

    def exhaust(self, key: OfferingKey) -> None:
        self.fake.exhaust(key.instance_type, key.zone, "Spot" if key.market == Market.SPOT else "Regular")

    def fault(self, kind: str, key: OfferingKey) -> None:
        code, status, at_end, message = FAULTS[kind]
        self.fake.inject(code, status=status, message=message, size=key.instance_type, zone=key.zone,
                         at_end=at_end)  # fmt: skip

    def preempt(self, cloud_id: str) -> None:
        self.fake.evict(cloud_id, deallocate=True)

    def crash_after_next_accept(self) -> None:
        self.fake.lose_next_answer("vm.put")


def make(clock: FakeClock, request: pytest.FixtureRequest) -> Harness:
    fake = shared_fake(request.config)
    fake.reset()
    return AzureHarness(clock, fake)
