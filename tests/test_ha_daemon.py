"""Two Daemon objects in one process sharing PostgreSQL and one simulated cloud: the follower makes no cloud call
and writes nothing; a leader overtaken between its decision and its intent write is refused by the store before
the cloud is called (deterministic: the takeover happens inside the leader's crash hook); the admin API of a
follower answers mutating calls 409 naming the leader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from autoscaler.api.app import create_app
from autoscaler.clock import FakeClock
from autoscaler.config import SimulatedCloud
from autoscaler.daemon import Daemon
from autoscaler.model import Launch, PoolControl
from autoscaler.policyfile import parse_policy
from autoscaler.store import Store
from providers.simulated import SimulatedProvider

POLICY = """
daemon: {id: ha, tick_seconds: 1, ha: {lease_seconds: 30, renew_seconds: 5}}
clouds:
  simulated: {boot_seconds: 0}
pools:
  - name: web
    min_capacity: 2
    max_capacity: 8
    candidates:
      - {cloud: simulated, instance_type: sim.l4x1, market: on-demand, throughput: 1}
"""


class Pair:
    def __init__(self, url: str, tmp_path: Path, policy: str = POLICY) -> None:
        self.loaded = parse_policy(policy, str(tmp_path / "policy.yaml"))
        self.clock = FakeClock()
        sim = self.loaded.policy.clouds.simulated
        assert isinstance(sim, SimulatedCloud)
        self.cloud = SimulatedProvider(sim, self.clock, "ha")  # one cloud, shared by both daemons
        self.stores = [Store.open(url), Store.open(url)]
        self.hook: list[object] = []
        self.a = self._daemon(0, "a")
        self.b = self._daemon(1, "b")

    def _daemon(self, i: int, identity: str) -> Daemon:
        return Daemon(
            self.loaded,
            store=self.stores[i],
            clock=self.clock,
            provider_factory=lambda _p: {"simulated": self.cloud},
            ha_identity=identity,
            crash_hook=self._crash if identity == "a" else None,
        )

    def _crash(self, point: str, launch: Launch) -> None:
        if self.hook and point == "before_intent":
            action = self.hook.pop()
            assert callable(action)
            action()

    def expire_lease(self) -> None:
        with self.stores[0].engine.begin() as conn:
            conn.execute(text("UPDATE leader_lease SET expires_at = clock_timestamp()"))

    def close(self) -> None:
        for s in self.stores:
            s.close()


@pytest.fixture
def pair(postgres_url: str, tmp_path: Path) -> Iterator[Pair]:
    p = Pair(postgres_url, tmp_path)
    try:
        yield p
    finally:
        p.close()


def test_only_the_leader_touches_the_cloud(pair: Pair) -> None:
    pair.a.tick()
    assert pair.a.leadership().role == "leader"
    assert pair.cloud.calls["launch"] == 2
    calls = dict(pair.cloud.calls)
    records = pair.stores[1].instances(live_only=False)
    decisions = len(pair.stores[1].decisions(limit=500))
    for _ in range(3):
        plan = pair.b.tick()
        assert plan.intents == () and plan.decisions == {}
    assert dict(pair.cloud.calls) == calls  # not even a listing
    assert pair.stores[1].instances(live_only=False) == records
    assert len(pair.stores[1].decisions(limit=500)) == decisions
    lead = pair.b.leadership()
    assert (lead.role, lead.leader, lead.token) == ("follower", "a", 1)
    assert pair.b.metrics.leader._value.get() == 0


def test_a_leader_overtaken_mid_tick_is_refused_before_the_cloud_call(pair: Pair) -> None:
    pair.a.tick()  # a leads and launches the minimum of 2
    assert pair.cloud.calls["launch"] == 2

    def b_takes_over() -> None:  # while a holds a decided launch, not yet written
        pair.expire_lease()
        pair.clock.advance(1)
        pair.b.tick()  # b leads (token 2) and launches what is missing itself

    pair.stores[0].set_control("web", PoolControl(override_capacity=3))
    pair.hook.append(b_takes_over)
    pair.clock.advance(1)  # (a tick's launch tokens derive from its time)
    plan = pair.a.tick()
    assert plan.intents == ()  # the tick ended at the refusal
    assert pair.b.leadership().role == "leader" and pair.b.leadership().token == 2
    assert pair.a.leadership().role == "follower"
    assert pair.a.metrics.stale_leader._value.get() == 1
    assert pair.cloud.calls["launch"] == 3  # b's launch only
    assert len(pair.stores[0].instances(live_only=True)) == 3
    for _ in range(2):
        pair.clock.advance(1)
        pair.b.tick()
        pair.a.tick()
    assert pair.cloud.calls["launch"] == 3


def test_a_follower_api_refuses_mutating_calls_naming_the_leader(pair: Pair) -> None:
    pair.a.tick()
    pair.b.tick()
    auth = {"Authorization": "Bearer t"}
    with TestClient(create_app(pair.b, "t")) as follower, TestClient(create_app(pair.a, "t")) as leader:
        health = follower.get("/healthz").json()
        assert (health["role"], health["leader"], health["fencing_token"]) == ("follower", "a", 1)
        assert leader.get("/healthz").json()["role"] == "leader"
        assert follower.post("/v1/pools/web/pause").status_code == 401  # the token is checked first
        refused = follower.post("/v1/pools/web/pause", headers=auth)
        assert refused.status_code == 409
        assert (
            "follower" in refused.json()["error"]
            and "the leader is a (fencing token 1)" in refused.json()["error"]
        )
        assert follower.get("/v1/pools").status_code == 200  # reads are served
        assert leader.post("/v1/pools/web/pause", headers=auth).status_code == 200


def test_the_daemon_that_takes_the_lease_tells_the_webhooks(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_alerts import Receiver

    receiver = Receiver()
    monkeypatch.setenv("TEST_ALERT_WEBHOOK", receiver.url)
    alerts = "\nalerts:\n  webhooks: [{name: local, url: {env: TEST_ALERT_WEBHOOK}}]\n  backoff_seconds: 0.05\n"
    pair = Pair(postgres_url, tmp_path, POLICY + alerts)
    try:
        pair.a.tick()
        receiver.wait_for(lambda bodies: len(bodies) >= 1)
        first = receiver.of("leadership_changed")
        assert len(first) == 1 and "a now leads" in first[0]["text"] and "fencing token 1" in first[0]["text"]
        pair.b.tick()  # a follower stays quiet
        pair.expire_lease()
        pair.b.tick()  # b takes over with the next token
        receiver.wait_for(lambda bodies: len([b for b in bodies if b["alert"] == "leadership_changed"]) >= 2)
        second = receiver.of("leadership_changed")[1]
        assert "b now leads" in second["text"] and "fencing token 2" in second["text"]
    finally:
        pair.close()
        receiver.close()
