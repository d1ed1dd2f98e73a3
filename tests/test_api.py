"""The admin API against a real store on SQLite (and, for input PostgreSQL cannot store, on PostgreSQL too),
through FastAPI's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.api.app import create_app
from autoscaler.lifecycle import InstanceState
from autoscaler.model import Demand, FailureKind, Market, Plan, PoolControl, Sample, Snapshot
from autoscaler.policyfile import default_policy_text
from autoscaler.store import Store
from tests.api_support import (
    A100_SPOT,
    DECISION,
    H100_SPOT,
    POOL,
    T0,
    TOKEN,
    FakeClock,
    TestControl,
    make_control,
    seed,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def control(tmp_path: Path) -> Iterator[TestControl]:
    c = make_control(tmp_path)
    seed(c)
    yield c
    c.store.close()


@pytest.fixture
def client(control: TestControl) -> TestClient:
    # raise_server_exceptions: a 500 in any test below fails it loudly instead of hiding behind a status code.
    return TestClient(create_app(control, TOKEN))


def observe(control: TestControl) -> None:
    snap = Snapshot(
        now=T0,
        records=tuple(control.store.instances(live_only=False)),
        cloud_instances={},
        offerings=(),
        blocks=tuple(control.store.blocks()),
        demand={POOL: Demand(120.0, None, (Sample("request-queue", "queue", 120.0, T0 - timedelta(seconds=2)),))},
        scaling_state={},
        controls={},
    )
    plan = Plan(now=T0, intents=(), decisions={POOL: DECISION}, scaling_state={})
    control.metrics.observe_tick(snap, plan, 0.2)
    control.last_snapshot = snap


# ------------------------------------------------------------------ health, metrics, docs


def test_health_and_readiness_follow_the_daemon(client: TestClient, control: TestControl) -> None:
    assert client.get("/healthz").json() == {"ok": True, "reason": "last tick 3s ago"}
    assert client.get("/readyz").status_code == 200
    control.ready = (False, "no tick completed yet")
    control.alive = (False, "loop stuck for 300s")
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"ok": False, "reason": "no tick completed yet"}
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["reason"] == "loop stuck for 300s"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_exposes_every_name_after_a_tick(client: TestClient, control: TestControl) -> None:
    observe(control)
    control.metrics.count_launch(POOL, A100_SPOT)
    control.metrics.count_capacity_error(H100_SPOT, FailureKind.CAPACITY)
    control.metrics.count_tick_failure()
    control.metrics.set_blocks(control.store.blocks(), T0)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    pool = {("pool", POOL)}
    h100 = {*H100_SPOT.as_labels().items()}
    expected: list[tuple[str, set[tuple[str, str]], float]] = [
        ("gpu_autoscaler_pool_desired_capacity", pool, 24.0),
        ("gpu_autoscaler_pool_ready_capacity", pool, 8.0),
        ("gpu_autoscaler_instances", {*pool, ("cloud", "simulated"), ("market", "spot"), ("state", "ready")}, 1),
        ("gpu_autoscaler_instances", {*pool, ("cloud", "simulated"), ("market", "spot"), ("state", "pending")}, 1),
        ("gpu_autoscaler_spend_usd_per_hour", pool, 26.22),
        (
            "gpu_autoscaler_launches_total",
            {*pool, ("cloud", "simulated"), ("instance_type", "sim.a100x8"), ("market", "spot")},
            1,
        ),
        ("gpu_autoscaler_capacity_errors_total", {*h100, ("kind", "capacity")}, 1),
        ("gpu_autoscaler_blocked_offerings", h100, 1),
        ("gpu_autoscaler_tick_duration_seconds_count", set(), 1),
        ("gpu_autoscaler_tick_failures_total", set(), 1),
        ("gpu_autoscaler_last_tick_timestamp_seconds", set(), T0.timestamp()),
        ("gpu_autoscaler_metric_source_up", {*pool, ("source", "request-queue")}, 1),
        ("gpu_autoscaler_metric_source_age_seconds", {*pool, ("source", "request-queue")}, 2),
        ("gpu_autoscaler_pool_holding", pool, 0),
    ]
    for name, labels, value in expected:
        assert got.get((name, frozenset(labels))) == pytest.approx(value), (name, labels)
    # only live records are counted: the cancelled on-demand record is in no series
    assert not [k for k in got if k[0] == "gpu_autoscaler_instances" and ("market", "on-demand") in k[1]]


def test_metrics_drop_label_sets_that_vanished(control: TestControl) -> None:
    observe(control)
    control.metrics.set_blocks(control.store.blocks(), T0)
    for token in ("tok-ready", "tok-boot"):
        control.store.transition(token, InstanceState.TERMINATING, "scale down", T0)
    empty = Snapshot(T0, tuple(control.store.instances(live_only=False)), {}, (), (), {}, {}, {})
    control.metrics.observe_tick(empty, Plan(T0, (), {}, {}), 0.1)
    control.metrics.set_blocks(control.store.blocks(), T0 + timedelta(hours=1))  # every block expired
    text = control.metrics.render()[0].decode()
    assert 'state="terminating"' in text
    assert 'state="ready"' not in text and 'state="pending"' not in text
    assert "gpu_autoscaler_pool_desired_capacity{" not in text
    assert "gpu_autoscaler_blocked_offerings{" not in text
    assert "gpu_autoscaler_metric_source_up{" not in text and "gpu_autoscaler_pool_holding{" not in text


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/pools", "/v1/pools/{pool}/explain", "/v1/capacity/unblock", "/v1/policy/reload"):
        assert path in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert {"holding", "hold_reason", "sources"} <= spec["components"]["schemas"]["PoolOut"]["properties"].keys()
    assert "age_seconds" in spec["components"]["schemas"]["SourceOut"]["properties"]
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------ reads


def test_pools_show_the_last_decision_and_controls(client: TestClient, control: TestControl) -> None:
    control.store.set_control(
        POOL, PoolControl(paused=True, override_capacity=16, override_until=T0 + timedelta(seconds=600))
    )
    (pool,) = client.get("/v1/pools").json()
    assert pool["name"] == POOL and (pool["min_capacity"], pool["max_capacity"]) == (8, 64)
    assert (pool["desired"], pool["ready"], pool["booting"], pool["spend_usd_per_hour"]) == (24, 8, 8, 26.22)
    assert pool["live_instances"] == 2 and pool["paused"] is True
    assert pool["override"]["capacity"] == 16
    assert pool["last_decision_age_seconds"] == 5
    assert pool["signal"] == "queue request-queue=120" and pool["reasons"] == list(DECISION.reasons)
    # no tick yet: the policy's source is listed, not read yet, and the pool does not hold
    assert (pool["holding"], pool["hold_reason"], pool["sources_read_at"]) == (False, "", None)
    (source,) = pool["sources"]
    assert (source["name"], source["type"], source["up"], source["error"]) == (
        "request-queue",
        "synthetic",
        None,
        "not read yet",
    )


def test_pools_and_explain_show_the_sources_of_the_last_tick(client: TestClient, control: TestControl) -> None:
    observe(control)
    control.clock.advance(10)
    expected = {
        "name": "request-queue",
        "type": "synthetic",
        "kind": "queue",
        "up": True,
        "value": 120.0,
        "observed_at": "2025-03-01T11:59:58Z",
        "age_seconds": 12.0,
        "stale": False,
        "error": "",
    }
    for body in (client.get("/v1/pools").json()[0], client.get(f"/v1/pools/{POOL}/explain").json()):
        assert body["sources"] == [expected]
        assert (body["holding"], body["hold_reason"], body["sources_read_at"]) == (
            False,
            "",
            "2025-03-01T12:00:00Z",
        )


def test_pool_detail_and_unknown_pool(client: TestClient) -> None:
    detail = client.get(f"/v1/pools/{POOL}").json()
    assert [c["instance_type"] for c in detail["candidates"]] == ["sim.h100x8", "sim.a100x8", "sim.a100x8"]
    assert detail["instances_by_state"] == {"ready": 1, "pending": 1}
    r = client.get("/v1/pools/nope")
    assert r.status_code == 404 and "unknown pool 'nope'" in r.json()["error"]


def test_explain_gives_the_whole_decision_and_capacity_events(client: TestClient) -> None:
    body = client.get(f"/v1/pools/{POOL}/explain").json()
    d = body["decision"]
    assert d["reasons"] == list(DECISION.reasons) and d["chosen"] == list(DECISION.chosen)
    assert d["skipped"] == [
        {"offering": "simulated/sim-east-a/sim.h100x8/spot", "reason": DECISION.skipped[0].reason}
    ]
    assert d["signal"] == DECISION.signal and d["age_seconds"] == 5
    (event,) = body["capacity_events"]
    assert (
        event["offering"]["instance_type"] == "sim.h100x8" and event["message"] == "InsufficientInstanceCapacity"
    )
    assert body["control"] == {"pool": POOL, "paused": False, "override": None}
    assert client.get("/v1/pools/nope/explain").status_code == 404


def test_instances_filters(client: TestClient) -> None:
    live = client.get("/v1/instances").json()
    assert {i["token"] for i in live} == {"tok-ready", "tok-boot"}
    everything = client.get("/v1/instances", params={"include_terminated": "true"}).json()
    assert {i["token"] for i in everything} == {"tok-ready", "tok-boot", "tok-gone"}
    ready = client.get("/v1/instances", params={"state": "ready"}).json()
    assert [i["token"] for i in ready] == ["tok-ready"] and ready[0]["cloud_id"] == "sim-1"
    cancelled = client.get("/v1/instances", params={"state": "cancelled"}).json()
    assert [i["token"] for i in cancelled] == ["tok-gone"] and cancelled[0]["live"] is False
    assert client.get("/v1/instances", params={"pool": "other-pool"}).json() == []
    assert len(client.get("/v1/instances", params={"pool": POOL, "limit": 1}).json()) == 1


def test_instance_detail_has_its_history(client: TestClient) -> None:
    body = client.get("/v1/instances/tok-ready").json()
    assert body["state"] == "ready" and body["seconds_in_state"] == 600
    steps = [(h["from"], h["to"]) for h in body["history"]]
    assert steps == [
        (None, "pending"),
        ("pending", "requested"),
        ("requested", "provisioning"),
        ("provisioning", "running"),
        ("running", "ready"),
    ]
    assert body["history"][-1]["edge"] == "observed"
    r = client.get("/v1/instances/no-such-token")
    assert r.status_code == 404 and "no-such-token" in r.json()["error"]


def test_capacity_lists_blocks_with_time_left(client: TestClient, control: TestControl) -> None:
    body = client.get("/v1/capacity").json()
    (block,) = body["blocked"]
    assert (block["scope"], block["kind"], block["failures"]) == ("zone", "capacity", 1)
    assert block["seconds_left"] == 120  # a 3-minute block that started 60 s ago
    assert block["reason"] == "InsufficientInstanceCapacity"
    assert body["events"][0]["pool"] == POOL
    control.clock.advance(300)
    assert client.get("/v1/capacity").json()["blocked"] == []


def test_decisions_newest_first_with_limit(client: TestClient, control: TestControl) -> None:
    control.store.record_decisions(T0, {POOL: DECISION})
    rows = client.get("/v1/decisions", params={"pool": POOL, "limit": 1}).json()
    assert len(rows) == 1 and rows[0]["age_seconds"] == 0
    assert len(client.get("/v1/decisions").json()) == 2


def test_prices_have_ages_from_the_daemon_clock(client: TestClient, control: TestControl) -> None:
    control.clock.advance(10)
    ages = {p["instance_type"]: (p["age_seconds"], p["usd_per_gpu_hour"]) for p in client.get("/v1/prices").json()}
    assert ages["sim.a100x8"][0] == 100 and ages["sim.h100x8"][0] == 40
    assert ages["sim.h100x8"][1] == pytest.approx(39.33 / 8)


def test_policy_shows_source_sha_and_revisions(client: TestClient, control: TestControl) -> None:
    body = client.get("/v1/policy").json()
    assert body["source"] == control.loaded.source and body["sha256"] == control.loaded.sha256
    assert body["pools"] == [POOL] and body["revisions"][0]["accepted"] is True


# ------------------------------------------------------------------ authentication

MUTATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", f"/v1/pools/{POOL}/pause", None),
    ("POST", f"/v1/pools/{POOL}/resume", None),
    ("POST", f"/v1/pools/{POOL}/override", {"capacity": 16, "ttl_seconds": 60}),
    ("DELETE", f"/v1/pools/{POOL}/override", None),
    ("POST", "/v1/policy/reload", None),
    ("POST", "/v1/capacity/unblock", {"cloud": "simulated", "instance_type": "sim.h100x8", "market": "spot"}),
]


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS)
def test_mutations_need_the_token(
    client: TestClient, control: TestControl, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = (control.store.controls(), len(control.store.blocks()), control.store.policy_revisions())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer") and "error" in r.json()
    # even a malformed body is refused for want of a token first: nothing is learnt without it
    assert (
        client.request(
            method, path, content=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 401
    )
    assert (control.store.controls(), len(control.store.blocks()), control.store.policy_revisions()) == before


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS)
def test_mutations_are_refused_without_a_configured_token(
    control: TestControl, method: str, path: str, body: dict[str, Any] | None
) -> None:
    client = TestClient(create_app(control, None))
    r = client.request(method, path, json=body, headers=AUTH)
    assert r.status_code == 403 and r.json() == {"error": "no admin token configured"}
    assert client.get("/v1/pools").status_code == 200  # reads stay open


# ------------------------------------------------------------------ mutations


def test_pause_and_resume(client: TestClient, control: TestControl) -> None:
    r = client.post(f"/v1/pools/{POOL}/pause", headers=AUTH)
    assert r.status_code == 200 and r.json()["paused"] is True
    assert control.store.controls()[POOL].paused is True
    client.post(f"/v1/pools/{POOL}/resume", headers=AUTH)
    assert control.store.controls()[POOL].paused is False
    assert client.post("/v1/pools/nope/pause", headers=AUTH).status_code == 404


def test_override_set_and_cleared(client: TestClient, control: TestControl) -> None:
    client.post(f"/v1/pools/{POOL}/pause", headers=AUTH)
    r = client.post(f"/v1/pools/{POOL}/override", json={"capacity": 32, "ttl_seconds": 1800}, headers=AUTH)
    assert r.status_code == 200 and r.json()["override"]["seconds_left"] == 1800
    stored = control.store.controls()[POOL]
    assert stored == PoolControl(paused=True, override_capacity=32, override_until=T0 + timedelta(seconds=1800))
    control.clock.advance(1800)
    assert client.get("/v1/pools").json()[0]["override"] is None  # expired: no longer in force
    r = client.delete(f"/v1/pools/{POOL}/override", headers=AUTH)
    assert r.status_code == 200
    assert control.store.controls()[POOL] == PoolControl(paused=True)  # pausing survives
    r = client.post(f"/v1/pools/{POOL}/override", json={"capacity": 65, "ttl_seconds": 60}, headers=AUTH)
    assert r.status_code == 422 and "max_capacity 64" in r.json()["error"]


def test_reload_accepts_a_good_file(client: TestClient, control: TestControl) -> None:
    batch = "  - name: batch\n    max_capacity: 4\n    candidates:\n"
    batch += "      - {cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}\n"
    control.policy_path.write_text(default_policy_text() + batch)
    r = client.post("/v1/policy/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] is True
    assert r.json()["sha256"] == control.loaded.sha256 and r.json()["source"] == str(control.policy_path)
    assert [p["name"] for p in client.get("/v1/pools").json()] == [POOL, "batch"]
    assert client.get("/v1/pools/batch/explain").json()["decision"] is None
    assert client.get("/v1/policy").json()["revisions"][0]["source"] == str(control.policy_path)


def test_reload_refuses_a_bad_file_and_keeps_the_old_policy(client: TestClient, control: TestControl) -> None:
    before = control.loaded
    control.policy_path.write_text(default_policy_text().replace("max_capacity: 64", "max_capacity: -1"))
    r = client.post("/v1/policy/reload", headers=AUTH)
    assert r.status_code == 422
    body = r.json()
    assert body["accepted"] is False
    assert body["error"].startswith(f"{control.policy_path}:16:5: pools[0].max_capacity")
    assert control.loaded is before
    policy = client.get("/v1/policy").json()
    assert policy["sha256"] == before.sha256
    assert policy["revisions"][0]["accepted"] is False and ":16:5:" in policy["revisions"][0]["error"]


def test_unblock_clears_the_block(client: TestClient, control: TestControl) -> None:
    control.metrics.set_blocks(control.store.blocks(), T0)
    body = {"cloud": "simulated", "instance_type": "sim.h100x8", "market": "spot", "zone": "sim-east-a"}
    r = client.post("/v1/capacity/unblock", json=body, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"unblocked": 1}
    assert control.store.blocks() == []
    assert "gpu_autoscaler_blocked_offerings{" not in client.get("/metrics").text
    r = client.post("/v1/capacity/unblock", json=body, headers=AUTH)
    assert r.status_code == 404 and r.json() == {"error": "no capacity block matched"}


def test_unblock_matches_only_the_given_offering(client: TestClient, control: TestControl) -> None:
    body = {"cloud": "simulated", "instance_type": "sim.h100x8", "market": str(Market.ON_DEMAND)}
    assert client.post("/v1/capacity/unblock", json=body, headers=AUTH).status_code == 404
    assert len(control.store.blocks()) == 1


# ------------------------------------------------------------------ bad input never gives a 500

OVERRIDE = f"/v1/pools/{POOL}/override"
UNBLOCK = "/v1/capacity/unblock"
JSON = {"Content-Type": "application/json"}
BAD_INPUTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", OVERRIDE, {"content": b"{not json"}),
    ("POST", OVERRIDE, {"content": b""}),
    ("POST", OVERRIDE, {"content": b'{"capacity": NaN, "ttl_seconds": 60}'}),
    ("POST", OVERRIDE, {"content": b'{"capacity": Infinity, "ttl_seconds": 60}'}),
    ("POST", OVERRIDE, {"content": b'{"capacity": 1e400, "ttl_seconds": 60}'}),
    ("POST", OVERRIDE, {"content": b'{"capacity": ' + b"9" * 400 + b', "ttl_seconds": 60}'}),
    ("POST", OVERRIDE, {"content": b'{"capacity": ' + b"9" * 5000 + b', "ttl_seconds": 60}'}),
    ("POST", OVERRIDE, {"content": b"\xff\xfe\x00garbage"}),
    ("POST", OVERRIDE, {"content": b"[1, 2]"}),
    ("POST", OVERRIDE, {"content": b"null"}),
    ("POST", OVERRIDE, {"json": {"capacity": -1, "ttl_seconds": 60}}),
    ("POST", OVERRIDE, {"json": {"capacity": "16", "ttl_seconds": 60}}),
    ("POST", OVERRIDE, {"json": {"capacity": True, "ttl_seconds": 60}}),
    ("POST", OVERRIDE, {"json": {"capacity": 16, "ttl_seconds": 0}}),
    ("POST", OVERRIDE, {"json": {"capacity": 16, "ttl_seconds": 7 * 24 * 3600 + 1}}),
    ("POST", OVERRIDE, {"json": {"capacity": 16, "ttl_seconds": 1e308}}),
    ("POST", OVERRIDE, {"json": {"capacity": 16}}),
    ("POST", OVERRIDE, {"json": {"capacity": 16, "ttl_seconds": 60, "force": True}}),
    ("POST", OVERRIDE, {"json": {"capacity": 1e12, "ttl_seconds": 60}}),
    ("POST", "/v1/pools/nope/override", {"json": {"capacity": 1, "ttl_seconds": 60}}),
    ("POST", "/v1/pools/" + "x" * 5000 + "/pause", {}),
    ("POST", UNBLOCK, {"json": {"cloud": "simulated", "instance_type": "sim.h100x8", "market": "reserved"}}),
    ("POST", UNBLOCK, {"json": {"cloud": "oracle", "instance_type": "sim.h100x8", "market": "spot"}}),
    ("POST", UNBLOCK, {"json": {"cloud": "simulated", "instance_type": "", "market": "spot"}}),
    ("POST", UNBLOCK, {"json": {"cloud": "simulated", "instance_type": 7, "market": "spot"}}),
    ("POST", UNBLOCK, {"json": {"cloud": "simulated", "instance_type": "x", "market": "spot", "scope": "zone"}}),
    ("POST", UNBLOCK, {"json": {"cloud": "simulated", "instance_type": "x" * 10000, "market": "spot"}}),
    ("POST", "/v1/policy/reload", {}),  # the policy file does not exist in this test
    ("PUT", f"/v1/pools/{POOL}/pause", {}),
    ("GET", "/v1/instances?state=bogus", {}),
    ("GET", "/v1/instances?pool=Not%20A%20Pool", {}),
    ("GET", "/v1/instances?include_terminated=perhaps", {}),
    ("GET", "/v1/instances?limit=0", {}),
    ("GET", "/v1/decisions?limit=0", {}),
    ("GET", "/v1/decisions?limit=501", {}),
    ("GET", "/v1/decisions?limit=99999999999999999999999999", {}),
    ("GET", "/v1/decisions?limit=ten", {}),
    ("GET", "/v1/decisions?pool=%00", {}),
    ("GET", "/v1/capacity?limit=-1", {}),
    ("GET", "/v1/pools/nope", {}),
    ("GET", "/v1/instances/%2e%2e", {}),
    ("GET", "/v1/nothing-here", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), BAD_INPUTS)
def test_bad_input_gives_a_4xx_with_a_reason(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    headers = {**AUTH, **(JSON if "content" in kwargs else {})}
    r = client.request(method, path, headers=headers, **kwargs)
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text


# ------------------------------------------------------------------ control characters, on both backends
# PostgreSQL cannot store NUL in text (psycopg raises ValueError/DataError, which was a 500), so these run on
# every store backend (conftest's database_url: SQLite, and PostgreSQL when it is reachable, or required by
# GPU_AUTOSCALER_REQUIRE_SERVICES=1).


@pytest.fixture
def any_backend(database_url: str, tmp_path: Path) -> Iterator[TestControl]:
    c = TestControl(store=Store.open(database_url), clock=FakeClock(), policy_path=tmp_path / "policy.yaml")
    seed(c)
    yield c
    c.store.close()


REFUSED = "must not contain a control character (found U+00"
H100_ZONE = {"cloud": "simulated", "instance_type": "sim.h100x8", "market": "spot", "zone": "sim-east-a"}
CONTROL_CHARACTER_INPUTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("GET", "/v1/instances/a%00b", {}, REFUSED),
    ("GET", "/v1/instances/tok-ready%00", {}, REFUSED),
    ("GET", "/v1/instances/tok%01ready", {}, REFUSED),
    ("GET", "/v1/instances/tok-ready%0A", {}, REFUSED),
    ("GET", "/v1/instances/tok-ready%7F", {}, REFUSED),
    ("GET", "/v1/instances?pool=a%00b", {}, REFUSED),
    ("GET", "/v1/instances", {"params": {"pool": "a\x00b"}}, REFUSED),
    ("GET", "/v1/decisions?pool=a%00b", {}, REFUSED),
    ("GET", "/v1/decisions?limit=1%00", {}, REFUSED),
    ("GET", "/v1/decisions?x%00=1", {}, REFUSED),  # a parameter nobody reads is refused all the same
    ("GET", "/v1/pools/a%00b", {}, REFUSED),
    ("GET", f"/v1/pools/{POOL}%00/explain", {}, REFUSED),
    ("GET", "/v1/nothing-here%00", {}, REFUSED),
    ("POST", "/v1/pools/a%00b/pause", {}, REFUSED),
    ("DELETE", f"/v1/pools/{POOL}%09/override", {}, REFUSED),
    ("POST", f"/v1/pools/{POOL}%00/override", {"json": {"capacity": 1, "ttl_seconds": 60}}, REFUSED),
    ("POST", UNBLOCK, {"json": {"cloud": "aws", "instance_type": "p5\u0000", "market": "spot"}}, REFUSED),
    ("POST", UNBLOCK, {"json": {**H100_ZONE, "instance_type": "sim.h100x8\u0000"}}, REFUSED),
    ("POST", UNBLOCK, {"json": {**H100_ZONE, "zone": "sim-east-a\u0000"}}, REFUSED),
    ("POST", UNBLOCK, {"json": {**H100_ZONE, "region": "\u001f"}}, REFUSED),
    ("POST", UNBLOCK, {"content": b'{"cloud": "aws", "instance_type": "p5\\u0000", "market": "spot"}'}, REFUSED),
    ("POST", UNBLOCK, {"json": {**H100_ZONE, "cloud": "simulated\u0000"}}, "body.cloud: Input should be"),
    ("POST", UNBLOCK, {"json": {**H100_ZONE, "market": "spot\u0000"}}, "body.market: Input should be"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "reason"),
    CONTROL_CHARACTER_INPUTS,
    ids=[f"{i}-{method}-{path}" for i, (method, path, _, _) in enumerate(CONTROL_CHARACTER_INPUTS)],
)
def test_control_characters_are_refused_on_every_backend(
    any_backend: TestControl, method: str, path: str, kwargs: dict[str, Any], reason: str
) -> None:
    # raise_server_exceptions (the default): a store that chokes on the input fails the test with its error.
    client = TestClient(create_app(any_backend, TOKEN))
    store = any_backend.store
    before = (store.controls(), store.blocks(), store.instances(live_only=False))
    headers = {**AUTH, **(JSON if "content" in kwargs else {})}
    r = client.request(method, path, headers=headers, **kwargs)
    assert r.status_code in (400, 422), r.text
    assert reason in r.json()["error"]
    if method != "GET":  # the token is still checked first: without it nothing is learnt about the input
        assert client.request(method, path, headers=JSON, **kwargs).status_code == 401
    assert (store.controls(), store.blocks(), store.instances(live_only=False)) == before


def test_clean_input_still_reaches_every_backend(any_backend: TestControl) -> None:
    client = TestClient(create_app(any_backend, TOKEN))
    assert client.get("/v1/instances/tok-ready").json()["state"] == "ready"
    r = client.get("/v1/instances/tok ready é")  # odd, but no control character: looked up, not found
    assert r.status_code == 404 and "tok ready é" in r.json()["error"]
    assert len(client.get("/v1/decisions", params={"pool": POOL}).json()) == 1
    assert client.post(f"/v1/pools/{POOL}/pause", headers=AUTH).json()["paused"] is True
    r = client.post(UNBLOCK, json={**H100_ZONE, "region": "sim-east"}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"unblocked": 1}
    assert any_backend.store.blocks() == []


class BrokenControl(TestControl):
    def readiness(self) -> tuple[bool, str]:
        raise RuntimeError("database password is hunter2")


def test_unexpected_errors_give_a_generic_500(control: TestControl) -> None:
    broken = BrokenControl(store=control.store, clock=control.clock, policy_path=control.policy_path)
    r = TestClient(create_app(broken, TOKEN), raise_server_exceptions=False).get("/readyz")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (see the daemon log)"}
    assert "hunter2" not in r.text
