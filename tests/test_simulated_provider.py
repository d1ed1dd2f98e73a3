"""The simulated cloud's own behaviour (the Provider contract is in test_provider_contract.py): capacity rules,
faults, timelines, thread safety, persistence, build_providers and the clocks."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from autoscaler import config
from autoscaler.clock import FakeClock, SystemClock
from autoscaler.errors import AuthError, CapacityError, ConfigError, ProviderError, QuotaError, TransientError
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
    Scope,
)
from providers import build_providers
from providers.simulated import PREEMPT_REASON, SimulatedProvider

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OD, SPOT = Market.ON_DEMAND, Market.SPOT


def key(itype: str = "sim.l4x1", market: Market = OD, zone: str = "sim-east-a") -> OfferingKey:
    return OfferingKey("simulated", "sim-east", zone, itype, market)


def request(token: str, k: OfferingKey | None = None, daemon: str = "d1") -> LaunchRequest:
    tags = {TAG_DAEMON: daemon, TAG_POOL: "p", TAG_INTENT: token}
    return LaunchRequest(token, "p", k or key(), LaunchTemplate(), tags)


def make(clock: FakeClock | None = None, state_file: Path | None = None, **cfg: object) -> SimulatedProvider:
    return SimulatedProvider(
        config.SimulatedCloud.model_validate(cfg), clock or FakeClock(START), "d1", state_file=state_file
    )


def states(p: SimulatedProvider) -> dict[str, CloudState]:
    return {i.cloud_id: i.state for i in p.list_instances()}


# ---------------------------------------------------------------- offerings


def test_offerings_cover_regions_zones_types_and_markets() -> None:
    clock = FakeClock(START)
    p = make(
        clock,
        regions={"r1": ["r1-a", "r1-b"], "r2": []},
        instance_types={
            "t.spot": {"gpus": 4, "on_demand_usd_per_hour": 10.0, "spot_usd_per_hour": 3.0},
            "t.od": {"gpus": 1, "on_demand_usd_per_hour": 1.5},
        },
    )
    offers = {o.key: o for o in p.offerings()}
    # 3 zones (an empty zone list means one zone named after the region) x (2 on-demand + 1 spot)
    assert len(offers) == 9
    assert {k.zone for k in offers} == {"r1-a", "r1-b", "r2-a"}
    spot = offers[OfferingKey("simulated", "r1", "r1-b", "t.spot", SPOT)]
    assert (spot.price_usd_per_hour, spot.gpus, spot.price_source) == (3.0, 4, "simulated")
    assert spot.price_observed_at == START
    assert OfferingKey("simulated", "r1", "r1-a", "t.od", SPOT) not in offers
    assert offers[OfferingKey("simulated", "r2", "r2-a", "t.od", OD)].price_usd_per_hour == 1.5


def test_spot_launch_of_a_type_without_spot_is_a_config_error() -> None:
    p = make(instance_types={"t.od": {"gpus": 1, "on_demand_usd_per_hour": 1.0}})
    k = OfferingKey("simulated", "sim-east", "sim-east-a", "t.od", SPOT)
    with pytest.raises(ConfigError):
        p.launch(request("t", k))


@pytest.mark.parametrize(
    "bad",
    [
        OfferingKey("aws", "sim-east", "sim-east-a", "sim.l4x1", OD),
        OfferingKey("simulated", "nowhere", "sim-east-a", "sim.l4x1", OD),
        OfferingKey("simulated", "sim-east", "sim-east-z", "sim.l4x1", OD),
    ],
)
def test_launch_outside_the_cloud_is_a_config_error(bad: OfferingKey) -> None:
    p = make()
    with pytest.raises(ConfigError):
        p.launch(request("t", bad))


def test_launch_without_daemon_tag_is_refused() -> None:
    p = make()
    with pytest.raises(ConfigError, match=TAG_DAEMON):
        p.launch(LaunchRequest("t", "p", key(), LaunchTemplate(), {TAG_POOL: "p"}))
    assert p.all_instances() == []


def test_same_token_for_another_offering_is_a_parameter_mismatch() -> None:
    p = make()
    p.launch(request("t", key()))
    with pytest.raises(ConfigError) as err:
        p.launch(request("t", key(zone="sim-east-b")))
    assert err.value.code == "IdempotentParameterMismatch"
    assert len(p.list_instances()) == 1


def test_request_tags_override_template_tags() -> None:
    p = make()
    tags = {TAG_DAEMON: "d1", TAG_POOL: "p"}
    template = LaunchTemplate(tags={TAG_DAEMON: "someone-else", "owner": "ml"})
    inst = p.launch(LaunchRequest("t", "p", key(), template, tags))
    assert inst.tags == {TAG_DAEMON: "d1", TAG_POOL: "p", "owner": "ml"}


# ---------------------------------------------------------------- capacity rules


def test_type_rule_limits_each_offering_separately() -> None:
    p = make(capacity=[{"instance_type": "sim.l4x1", "available": 1}])
    p.launch(request("a", key()))
    with pytest.raises(CapacityError) as err:
        p.launch(request("b", key()))
    assert (err.value.scope, err.value.code) == (Scope.ZONE, "InsufficientInstanceCapacity")
    p.launch(request("c", key(zone="sim-east-b")))  # another zone: another offering
    p.launch(request("d", key(market=SPOT)))  # another market too
    p.launch(request("e", key("sim.a100x8")))  # an unruled type is unlimited
    assert len(p.list_instances()) == 4


def test_most_specific_rule_wins() -> None:
    p = make(
        capacity=[
            {"instance_type": "sim.l4x1", "available": 0},
            {"instance_type": "sim.l4x1", "market": "spot", "available": 1},
            {"instance_type": "sim.l4x1", "zone": "sim-east-b", "available": 2},
            {"instance_type": "sim.l4x1", "market": "on-demand", "zone": "sim-east-b", "available": 3},
        ]
    )

    def room(k: OfferingKey) -> int:
        n = 0
        while True:
            try:
                p.launch(request(f"{k}-{n}", k))
            except CapacityError:
                return n
            n += 1

    assert room(key()) == 0  # type-only
    assert room(key(market=SPOT)) == 1  # market beats type-only
    assert room(key(market=SPOT, zone="sim-east-b")) == 2  # zone beats market
    assert room(key(zone="sim-east-b")) == 3  # zone + market beats all


def test_set_capacity_replaces_and_removes_rules() -> None:
    p = make(capacity=[{"instance_type": "sim.l4x1", "market": "on-demand", "zone": "sim-east-a", "available": 0}])
    with pytest.raises(CapacityError):
        p.launch(request("a"))
    p.set_capacity("sim.l4x1", OD, "sim-east-a", 1)
    p.launch(request("a"))
    with pytest.raises(CapacityError):
        p.launch(request("b"))
    p.set_capacity("sim.l4x1", OD, "sim-east-a", None)
    p.launch(request("b"))
    assert len(p.list_instances()) == 2


def test_capacity_is_freed_once_terminated_not_while_stopping() -> None:
    clock = FakeClock(START)
    p = make(clock)
    p.set_capacity("sim.l4x1", OD, None, 1)
    first = p.launch(request("a"))
    p.terminate([first.cloud_id])
    with pytest.raises(CapacityError):
        p.launch(request("b"))  # STOPPING still holds the machine
    clock.advance(5)
    p.launch(request("b"))


def test_other_daemons_instances_use_capacity_too() -> None:
    p = make()
    p.set_capacity("sim.l4x1", OD, "sim-east-a", 1)
    p.launch(request("theirs", daemon="other"))
    with pytest.raises(CapacityError):
        p.launch(request("ours"))
    assert p.list_instances() == []


# ---------------------------------------------------------------- faults


def test_configured_fault_fires_times_then_stops_and_only_where_it_matches() -> None:
    p = make(faults=[{"instance_type": "sim.l4x1", "zone": "sim-east-b", "error": "quota", "times": 2}])
    p.launch(request("elsewhere", key()))  # zone a: unaffected
    for _ in range(2):
        with pytest.raises(QuotaError) as err:
            p.launch(request("t", key(zone="sim-east-b")))
        assert (err.value.scope, err.value.code) == (Scope.REGION, "VcpuLimitExceeded")
    p.launch(request("t", key(zone="sim-east-b")))
    assert len(p.list_instances()) == 2


def test_fault_comes_before_capacity_and_a_retry_of_a_known_token_skips_both() -> None:
    p = make()
    made = p.launch(request("known"))
    p.set_capacity("sim.l4x1", OD, None, 0)
    p.inject_fault("transient")
    again = p.launch(request("known"))  # the cloud already made it: no fault, no capacity check
    assert again.cloud_id == made.cloud_id
    with pytest.raises(TransientError):
        p.launch(request("new"))
    with pytest.raises(CapacityError):
        p.launch(request("new"))


def test_injected_call_errors_fail_the_next_calls_of_that_method_only() -> None:
    p = make()
    made = p.launch(request("a"))
    p.inject_call_error("list_instances", TransientError("throttled", code="RequestLimitExceeded"))
    p.inject_call_error("launch", TransientError("throttled"), times=2)
    p.inject_call_error("terminate", AuthError("expired"))
    p.inject_call_error("offerings", TransientError("503"))
    with pytest.raises(TransientError):
        p.list_instances()
    assert len(p.list_instances()) == 1
    for _ in range(2):
        with pytest.raises(TransientError):
            p.launch(request("a"))  # even a retry of a known token
    assert p.launch(request("a")).cloud_id == made.cloud_id
    with pytest.raises(AuthError):
        p.terminate([made.cloud_id])
    with pytest.raises(TransientError):
        p.offerings()
    assert p.offerings()
    assert dict(p.calls) == {"list_instances": 2, "launch": 4, "terminate": 1, "offerings": 2}


# ---------------------------------------------------------------- timelines


def test_terminate_timeline_stopping_terminated_vanished() -> None:
    clock = FakeClock(START)
    p = make(clock, boot_seconds=0)
    inst = p.launch(request("a"))
    assert inst.state == CloudState.RUNNING
    p.terminate([inst.cloud_id])
    assert states(p) == {inst.cloud_id: CloudState.STOPPING}
    clock.advance(4.9)
    assert states(p) == {inst.cloud_id: CloudState.STOPPING}
    clock.advance(0.1)
    (gone,) = p.list_instances()
    assert gone.state == CloudState.TERMINATED and not gone.preempted
    clock.advance(59.9)
    assert states(p) == {inst.cloud_id: CloudState.TERMINATED}
    clock.advance(0.1)
    assert p.list_instances() == []
    assert p.calls["terminate"] == 1 and p.calls["list_instances"] == 5


def test_spot_is_preempted_after_running_for_the_configured_time() -> None:
    clock = FakeClock(START)
    p = make(clock, boot_seconds=10, preempt_spot_after_seconds=100)
    spot = p.launch(request("s", key(market=SPOT)))
    od = p.launch(request("o", key()))
    clock.advance(109)
    assert states(p) == {spot.cloud_id: CloudState.RUNNING, od.cloud_id: CloudState.RUNNING}
    clock.advance(1)
    by_id = {i.cloud_id: i for i in p.list_instances()}
    assert by_id[spot.cloud_id].state == CloudState.TERMINATED
    assert by_id[spot.cloud_id].state_reason == PREEMPT_REASON and by_id[spot.cloud_id].preempted
    assert by_id[od.cloud_id].state == CloudState.RUNNING
    p.terminate([spot.cloud_id])  # too late: stays a preemption
    assert {i.cloud_id: i.preempted for i in p.list_instances()}[spot.cloud_id]


def test_terminate_requested_before_preemption_is_not_a_preemption() -> None:
    clock = FakeClock(START)
    p = make(clock, boot_seconds=0, preempt_spot_after_seconds=3)
    spot = p.launch(request("s", key(market=SPOT)))
    clock.advance(1)
    p.terminate([spot.cloud_id])
    clock.advance(10)
    (inst,) = p.list_instances()
    assert inst.state == CloudState.TERMINATED and not inst.preempted


def test_preempt_of_an_unknown_instance_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        make().preempt("sim-999999")


def test_vanished_tokens_are_forgotten_after_a_day() -> None:
    clock = FakeClock(START)
    p = make(clock)
    first = p.launch(request("a"))
    p.terminate([first.cloud_id])
    clock.advance(3600)
    assert p.launch(request("a")).cloud_id == first.cloud_id  # still remembered, still terminated
    clock.advance(24 * 3600)
    p.list_instances()
    assert p.all_instances() == []
    assert p.launch(request("a")).cloud_id != first.cloud_id


# ---------------------------------------------------------------- threads and the hook


def test_concurrent_launches_respect_tokens_and_capacity() -> None:
    p = make()
    p.set_capacity("sim.l4x1", OD, "sim-east-a", 5)
    tokens = [f"t{i % 8}" for i in range(40)]  # 8 distinct tokens, each sent 5 times

    def go(token: str) -> str:
        try:
            return p.launch(request(token)).cloud_id
        except CapacityError:
            return "no-capacity"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(go, tokens))
    assert len(p.list_instances()) == 5
    assert len({r for r in results if r != "no-capacity"}) == 5
    assert p.calls["launch"] == 40


def test_after_accept_hook_may_call_back_into_the_provider() -> None:
    p = make()
    seen: list[int] = []

    def hook(inst: CloudInstance) -> None:
        seen.append(len(p.list_instances()))  # would deadlock if called under the lock

    p.after_accept = hook
    done = threading.Event()
    threading.Thread(target=lambda: (p.launch(request("a")), done.set()), daemon=True).start()
    assert done.wait(5)
    assert seen == [1]
    p.launch(request("a"))  # a retry of a known token is not a new acceptance
    assert seen == [1]


# ---------------------------------------------------------------- persistence


def test_state_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(START)
    path = tmp_path / "sim" / "cloud.json"
    p = make(clock, state_file=path, boot_seconds=10)
    a = p.launch(request("a"))
    b = p.launch(request("b", key(market=SPOT)))
    c = p.launch(request("c"))
    p.terminate([a.cloud_id])
    clock.advance(10)
    p.preempt(b.cloud_id)

    again = make(clock, state_file=path, boot_seconds=10)
    assert {i.cloud_id: (i.state, i.preempted) for i in again.list_instances()} == {
        a.cloud_id: (CloudState.TERMINATED, False),
        b.cloud_id: (CloudState.TERMINATED, True),
        c.cloud_id: (CloudState.RUNNING, False),
    }
    assert again.launch(request("c")).cloud_id == c.cloud_id  # tokens survive
    d = again.launch(request("d"))
    assert d.cloud_id not in {a.cloud_id, b.cloud_id, c.cloud_id}  # ids are never reused
    assert [f.name for f in path.parent.iterdir()] == ["cloud.json"], "no temp files left behind"
    assert json.loads(path.read_text())["next_id"] == 5


def test_damaged_state_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "cloud.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        make(state_file=path)


def test_without_state_file_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make().launch(request("a"))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_state_file_is_a_provider_error(tmp_path: Path) -> None:
    p = make(state_file=tmp_path / "sub" / "cloud.json")
    (tmp_path / "sub").write_text("")  # a file where the directory should be
    with pytest.raises(ProviderError):
        p.launch(request("a"))
    assert p.launch(request("a")).cloud_id == "sim-000001", "the cloud kept it; the retry finds it"


# ---------------------------------------------------------------- build_providers


def test_build_providers_makes_the_simulated_cloud(tmp_path: Path) -> None:
    policy = config.Policy(daemon=config.DaemonSettings(id="alpha"))
    clock = FakeClock(START)
    providers = build_providers(policy, clock, state_dir=tmp_path)
    sim = providers["simulated"]
    assert list(providers) == ["simulated"]
    assert isinstance(sim, SimulatedProvider) and sim.daemon_id == "alpha"
    sim.launch(request("a", daemon="alpha"))
    assert [f.name for f in tmp_path.iterdir()] == ["simulated-cloud-alpha.json"]
    assert len(build_providers(policy, clock, state_dir=tmp_path)["simulated"].list_instances()) == 1


def test_build_providers_skips_disabled_clouds() -> None:
    policy = config.Policy(clouds=config.Clouds(simulated=config.SimulatedCloud(enabled=False)))
    assert build_providers(policy, FakeClock(START)) == {}


@pytest.mark.parametrize(
    ("cloud", "sdk", "settings"),
    [
        ("aws", "boto3", {"regions": {"us-east-1": []}}),
        ("gcp", "google.cloud", {"regions": {"us-central1": []}, "project": "p"}),
        (
            "azure",
            "azure.mgmt.compute",
            {"regions": {"eastus": []}, "subscription_id": "s", "resource_group": "g"},
        ),
    ],
)
def test_a_cloud_whose_sdk_is_missing_is_a_config_error_naming_the_extra(
    cloud: str, sdk: str, settings: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, f"providers.{cloud}", raising=False)
    monkeypatch.setitem(sys.modules, sdk, None)  # as if the extra were not installed
    clouds = config.Clouds.model_validate({cloud: settings})
    with pytest.raises(ConfigError, match=rf"pip install 'gpu-autoscaler\[{cloud}\]'"):
        build_providers(config.Policy(clouds=clouds), FakeClock(START))


# ---------------------------------------------------------------- clocks


def test_fake_clock_advances_only_forward() -> None:
    clock = FakeClock(START)
    assert clock.now() == START
    assert clock.advance(1.5) == START + timedelta(seconds=1.5)
    assert clock.now() == START + timedelta(seconds=1.5)
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        FakeClock(datetime(2025, 1, 1))


def test_fake_clock_is_thread_safe() -> None:
    clock = FakeClock(START)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: clock.advance(0.001), range(4000)))
    assert clock.now() == START + timedelta(seconds=4)


def test_system_clock_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
