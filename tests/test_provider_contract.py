"""The contract every provider keeps (see autoscaler.interfaces.Provider), run over every provider.

A provider joins the suite by adding a Harness factory to HARNESSES: the harness knows how to make its cloud
run out of capacity, fail a launch, preempt an instance and "crash" after the cloud accepted a launch. A
harness that cannot do one of these (a cloud emulator without fake time, say) leaves it raising Unsupported
and the tests that need it are skipped for that provider only.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import cast

import boto3
import pytest

from autoscaler import config
from autoscaler.clock import FakeClock
from autoscaler.errors import AuthError, CapacityError, ConfigError, ProviderError, QuotaError, TransientError
from autoscaler.interfaces import Provider
from autoscaler.model import (
    TAG_DAEMON,
    TAG_INTENT,
    TAG_POOL,
    CloudInstance,
    CloudState,
    LaunchRequest,
    LaunchTemplate,
    Market,
    OfferingKey,
)
from providers.aws import AwsProvider
from providers.aws_catalog import AwsCatalog
from providers.simulated import FaultKind, SimulatedProvider
from tests.aws_fake import FakeEC2
from tests.provider_harness import DAEMON, START, Crash, Harness, Unsupported


class SimulatedHarness(Harness):
    name = "simulated"
    crash_error = Crash

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.cfg = config.SimulatedCloud(boot_seconds=20, preempt_spot_after_seconds=None)
        self.sim = SimulatedProvider(self.cfg, clock, DAEMON)
        self.provider = self.sim
        self.boot_seconds = self.cfg.boot_seconds

    def offering(self, market: Market = Market.ON_DEMAND) -> OfferingKey:
        return OfferingKey("simulated", "sim-east", "sim-east-a", "sim.l4x1", market)

    def exhaust(self, key: OfferingKey) -> None:
        self.sim.set_capacity(key.instance_type, key.market, key.zone, 0)

    def fault(self, kind: str, key: OfferingKey) -> None:
        self.sim.inject_fault(
            cast(FaultKind, kind), instance_type=key.instance_type, zone=key.zone, market=key.market
        )

    def preempt(self, cloud_id: str) -> None:
        self.sim.preempt(cloud_id)

    def crash_after_next_accept(self) -> None:
        def crash(instance: CloudInstance) -> None:
            self.sim.after_accept = None  # only the next launch
            raise Crash(instance.cloud_id)

        self.sim.after_accept = crash


class AwsHarness(Harness):
    """The AWS provider through real boto3 against moto's EC2 server (tests/aws_fake.py)."""

    name = "aws"
    boot_seconds = None  # moto's instances run at once, whatever the fake clock says

    def __init__(self, clock: FakeClock, fake: FakeEC2) -> None:
        self.clock = clock
        self.fake = fake
        fake.reset()
        cfg = config.AwsCloud(regions={"us-east-1": ["us-east-1a", "us-east-1b"]}, endpoint_url=fake.endpoint_url)
        catalog = AwsCatalog.load(None)
        types = frozenset({"g6.xlarge", "p4d.24xlarge"})
        self.provider = AwsProvider(cfg, clock, DAEMON, types, catalog, session=_boto_session())

    def offering(self, market: Market = Market.ON_DEMAND) -> OfferingKey:
        return OfferingKey("aws", "us-east-1", "us-east-1a", "g6.xlarge", market)

    def template(self) -> LaunchTemplate:
        return LaunchTemplate(image=self.fake.ami("us-east-1"), tags={"team": "ml"})

    def exhaust(self, key: OfferingKey) -> None:
        self.fake.exhaust(key.instance_type, key.zone, str(key.market))

    def fault(self, kind: str, key: OfferingKey) -> None:
        self.fake.inject(AWS_FAULTS[kind], instance_type=key.instance_type, zone=key.zone, market=str(key.market))

    def preempt(self, cloud_id: str) -> None:
        self.fake.interrupt(cloud_id)

    def crash_after_next_accept(self) -> None:
        # EC2 makes the instance, the answer never arrives: the provider sees a 503 (the harness's "crash").
        self.fake.lose_next_answer("RunInstances")

    crash_error: type[BaseException] = TransientError

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        if seconds >= 3600:
            self.fake.forget_terminated()  # EC2 stops listing terminated instances after about an hour


@functools.cache
def _boto_session() -> boto3.session.Session:
    # One session for the module: it caches botocore's service models, which each new session reloads (~0.4 s).
    return boto3.session.Session()


AWS_FAULTS = {
    "capacity": "InsufficientInstanceCapacity",
    "quota": "VcpuLimitExceeded",
    "transient": "RequestLimitExceeded",
    "auth": "UnauthorizedOperation",
    "config": "InvalidAMIID.NotFound",
}


def _from_module(cloud: str) -> Callable[[FakeClock, pytest.FixtureRequest], Harness]:
    def make(clock: FakeClock, request: pytest.FixtureRequest) -> Harness:
        module = importlib.import_module(f"tests.harness_{cloud}")
        harness: Harness = module.make(clock, request)
        return harness

    return make


HARNESSES: dict[str, Callable[[FakeClock, pytest.FixtureRequest], Harness]] = {
    "simulated": lambda clock, _request: SimulatedHarness(clock),
    "aws": lambda clock, request: AwsHarness(clock, request.getfixturevalue("fake_ec2")),
    # Each further cloud's harness lives in tests/harness_<cloud>.py (imported only when its tests run).
    **{
        cloud: _from_module(cloud)
        for cloud in ("gcp", "azure")
        if importlib.util.find_spec(f"tests.harness_{cloud}")
    },
}


@pytest.fixture(params=sorted(HARNESSES))
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    yield HARNESSES[request.param](FakeClock(START), request)


def req(
    h: Harness, token: str, key: OfferingKey | None = None, *, daemon_id: str | None = None, pool: str = "p1"
) -> LaunchRequest:
    tags = {TAG_DAEMON: daemon_id or h.daemon_id, TAG_POOL: pool, TAG_INTENT: token}
    return LaunchRequest(token, pool, key or h.offering(), h.template(), tags)


def listed(h: Harness) -> dict[str, CloudInstance]:
    return {i.cloud_id: i for i in h.provider.list_instances()}


def setup_or_skip(action: Callable[[], None]) -> None:
    try:
        action()
    except Unsupported:
        pytest.skip("this provider's harness cannot set this up")


# ---------------------------------------------------------------- offerings


def test_offerings_have_prices_and_gpus(h: Harness) -> None:
    assert isinstance(h.provider, Provider)
    offerings = h.provider.offerings()
    assert offerings
    for o in offerings:
        assert o.key.cloud == h.provider.name
        assert o.price_usd_per_hour > 0
        assert o.gpus >= 1
        assert o.key.region and o.key.zone and o.key.instance_type
        assert o.price_observed_at is None or o.price_observed_at.tzinfo is not None
    keys = [o.key for o in offerings]
    assert len(keys) == len(set(keys)), "each offering is listed once"
    assert h.offering() in keys


def test_offerings_include_spot_and_on_demand(h: Harness) -> None:
    markets = {o.key.market for o in h.provider.offerings()}
    assert markets == {Market.SPOT, Market.ON_DEMAND}


# ---------------------------------------------------------------- launch and list


def test_launch_tags_the_instance_and_lists_it(h: Harness) -> None:
    inst = h.provider.launch(req(h, "tok-1"))
    assert inst.offering == h.offering()
    assert inst.tags[TAG_DAEMON] == h.daemon_id
    assert inst.pool == "p1"
    assert inst.token == "tok-1"
    assert inst.tags["team"] == "ml", "the template's tags are applied too"
    assert inst.state in (CloudState.PENDING, CloudState.RUNNING)
    assert inst.launched_at.tzinfo is not None
    seen = listed(h)
    assert set(seen) == {inst.cloud_id}
    assert seen[inst.cloud_id].token == "tok-1"


def test_launch_is_idempotent_on_the_token(h: Harness) -> None:
    first = h.provider.launch(req(h, "tok-same"))
    second = h.provider.launch(req(h, "tok-same"))
    assert second.cloud_id == first.cloud_id
    assert [i.cloud_id for i in h.provider.list_instances()] == [first.cloud_id]


def test_different_tokens_make_different_instances(h: Harness) -> None:
    a = h.provider.launch(req(h, "tok-a"))
    b = h.provider.launch(req(h, "tok-b"))
    assert a.cloud_id != b.cloud_id
    assert set(listed(h)) == {a.cloud_id, b.cloud_id}


def test_list_returns_only_our_instances(h: Harness) -> None:
    ours = h.provider.launch(req(h, "tok-ours"))
    theirs = h.provider.launch(req(h, "tok-theirs", daemon_id="another-daemon"))
    assert theirs.cloud_id != ours.cloud_id
    assert set(listed(h)) == {ours.cloud_id}


def test_unknown_instance_type_is_a_config_error(h: Harness) -> None:
    key = h.offering()
    bad = OfferingKey(key.cloud, key.region, key.zone, "no.such-type", key.market)
    with pytest.raises(ConfigError):
        h.provider.launch(req(h, "tok-bad-type", bad))
    assert listed(h) == {}


def test_unknown_zone_is_a_config_error(h: Harness) -> None:
    key = h.offering()
    bad = OfferingKey(key.cloud, key.region, "no-such-zone", key.instance_type, key.market)
    with pytest.raises(ConfigError):
        h.provider.launch(req(h, "tok-bad-zone", bad))
    assert listed(h) == {}


# ---------------------------------------------------------------- terminate


def test_terminate_is_idempotent_and_unknown_ids_succeed(h: Harness) -> None:
    inst = h.provider.launch(req(h, "tok-t"))
    h.provider.terminate([inst.cloud_id])
    h.provider.terminate([inst.cloud_id])
    h.provider.terminate(["i-does-not-exist"])
    h.provider.terminate([])
    state = listed(h).get(inst.cloud_id)
    assert state is None or state.state in (CloudState.STOPPING, CloudState.TERMINATED)


def test_terminated_instance_ends_terminated_then_vanishes(h: Harness) -> None:
    inst = h.provider.launch(req(h, "tok-end"))
    h.provider.terminate([inst.cloud_id])
    h.advance(10)
    state = listed(h).get(inst.cloud_id)
    assert state is None or (state.state == CloudState.TERMINATED and not state.preempted)
    h.advance(3600)
    assert inst.cloud_id not in listed(h)
    h.provider.terminate([inst.cloud_id])  # gone: still success


# ---------------------------------------------------------------- typed errors


def test_no_capacity_raises_capacity_error_with_scope(h: Harness) -> None:
    key = h.offering(Market.SPOT)
    setup_or_skip(lambda: h.exhaust(key))
    with pytest.raises(CapacityError) as err:
        h.provider.launch(req(h, "tok-cap", key))
    assert err.value.scope == h.capacity_scope
    assert err.value.code
    assert listed(h) == {}


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("capacity", CapacityError),
        ("quota", QuotaError),
        ("transient", TransientError),
        ("auth", AuthError),
        ("config", ConfigError),
    ],
)
def test_launch_faults_are_typed(h: Harness, kind: str, error: type[ProviderError]) -> None:
    key = h.offering()
    setup_or_skip(lambda: h.fault(kind, key))
    with pytest.raises(error) as err:
        h.provider.launch(req(h, f"tok-{kind}", key))
    if isinstance(err.value, CapacityError):
        assert err.value.scope == h.capacity_scope
    if isinstance(err.value, QuotaError):
        assert err.value.scope == h.quota_scope
    assert listed(h) == {}, "a refused launch makes nothing"
    # The fault was used up: the same token succeeds on the next attempt.
    inst = h.provider.launch(req(h, f"tok-{kind}", key))
    assert set(listed(h)) == {inst.cloud_id}


# ---------------------------------------------------------------- time: boot, preemption


def test_instance_boots_after_the_boot_delay(h: Harness) -> None:
    if h.boot_seconds is None or h.boot_seconds <= 1:
        pytest.skip("this provider's boot time does not follow the fake clock")
    inst = h.provider.launch(req(h, "tok-boot"))
    assert inst.state == CloudState.PENDING
    h.advance(h.boot_seconds - 1)
    assert listed(h)[inst.cloud_id].state == CloudState.PENDING
    h.advance(1)
    assert listed(h)[inst.cloud_id].state == CloudState.RUNNING


def test_preempted_spot_instance_shows_terminated_and_preempted(h: Harness) -> None:
    inst = h.provider.launch(req(h, "tok-spot", h.offering(Market.SPOT)))
    h.advance(h.boot_seconds or 0)
    setup_or_skip(lambda: h.preempt(inst.cloud_id))
    after = listed(h).get(inst.cloud_id)
    # Ended: gone, listed as terminated, or (GCE keeps a stopped VM) stopped and still there for the core to delete.
    assert after is None or (after.state in (CloudState.TERMINATED, CloudState.STOPPING) and after.preempted)
    h.provider.terminate([inst.cloud_id])  # terminating a preempted instance is fine


# ---------------------------------------------------------------- crash between accept and answer


def test_retry_after_crash_returns_the_instance_the_cloud_made(h: Harness) -> None:
    setup_or_skip(h.crash_after_next_accept)
    with pytest.raises(h.crash_error):
        h.provider.launch(req(h, "tok-crash"))
    made = list(h.provider.list_instances())
    assert len(made) == 1 and made[0].token == "tok-crash", "the cloud made it although we never heard back"
    again = h.provider.launch(req(h, "tok-crash"))
    assert again.cloud_id == made[0].cloud_id
    assert [i.cloud_id for i in h.provider.list_instances()] == [again.cloud_id]
