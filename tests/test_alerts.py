"""Webhook alerts against a real HTTP receiver on 127.0.0.1, driven by a real daemon on the simulated cloud and a
fake clock: conditions fire, are deduplicated, repeated after repeat_seconds, resolved when they clear, retried
after a 5xx, and sending never holds up a tick."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from autoscaler.alerts import Alerts, wait_idle
from autoscaler.config import AlertSettings, Secret, Webhook
from autoscaler.model import Market
from tests.daemon_harness import Harness

SECRET_PATH = "/services/T0000/B0000/xoxb-very-secret-path"


class Receiver:
    """A webhook receiver: records every POST body; answers with the queued statuses, then 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.statuses: deque[int] = deque()
        self.delay = 0.0
        self.changed = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.changed:
                    status = receiver.statuses.popleft() if receiver.statuses else 200
                    receiver.bodies.append(body)
                    receiver.paths.append(self.path)
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.bodies), timeout), self.bodies

    def of(self, alert: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["alert"] == alert]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    monkeypatch.setenv("TEST_ALERT_WEBHOOK", r.url)
    yield r
    r.close()


ALERTS = """
alerts:
  webhooks: [{name: local, url: {env: TEST_ALERT_WEBHOOK}}]
  repeat_seconds: 60
  backoff_seconds: 0.05
  max_attempts: 3
"""

BLOCKED = (
    """
daemon: {id: t, tick_seconds: 5}
clouds:
  simulated:
    boot_seconds: 10
    capacity:
      - {instance_type: sim.h100x8, market: spot, available: 0}
pools:
  - name: llm
    max_capacity: 64
    metrics: [{name: q, type: synthetic, kind: queue, base: 80}]
    targets: {queue_per_unit: 5}
    candidates:
      - {cloud: simulated, instance_type: sim.h100x8, market: spot, throughput: 16}
"""
    + ALERTS
)


def test_all_blocked_fires_once_repeats_resolves_and_is_retried_after_a_500(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.statuses.append(500)  # the first POST fails: the sender must try again
    h = Harness.start(BLOCKED, tmp_path)
    try:
        h.run(ticks=1)  # H100 spot refused in both zones: every offering of the pool's one candidate is blocked
        receiver.wait_for(lambda b: len(b) >= 2)
        first, retried = receiver.bodies[:2]
        assert first == retried, "the retry sends the same notice"
        assert first["status"] == "firing" and first["alert"] == "all_candidates_blocked"
        assert first["labels"] == {"pool": "llm"} and first["sends"] == 1 and first["daemon"] == "t"
        assert first["text"].startswith("[FIRING] gpu-autoscaler t: pool llm: all 2 offering(s)")
        assert receiver.paths[0] == SECRET_PATH

        h.run(ticks=10)  # 50 s more: still blocked, within repeat_seconds: nothing new
        assert wait_idle(h.daemon.alerts)
        assert len(receiver.of("all_candidates_blocked")) == 2

        h.run(ticks=2)  # now past 60 s since the first notice: one repeat
        receiver.wait_for(lambda b: len(b) >= 3)
        repeat = receiver.bodies[2]
        assert (repeat["status"], repeat["sends"], repeat["started_at"]) == ("firing", 2, first["started_at"])
        h.run(ticks=3)
        assert wait_idle(h.daemon.alerts) and len(receiver.bodies) == 3

        h.cloud.set_capacity("sim.h100x8", Market.SPOT, None, None)  # capacity is back ...
        assert h.store.unblock("simulated", "sim.h100x8", Market.SPOT) == 2  # ... and an operator unblocks
        h.run(ticks=1)
        receiver.wait_for(lambda b: len(b) >= 4)
        resolved = receiver.bodies[3]
        assert resolved["status"] == "resolved" and resolved["key"] == "all_candidates_blocked:llm"
        assert resolved["text"].startswith("[RESOLVED]") and resolved["sends"] == 3
        assert h.daemon.alerts.active() == [] and wait_idle(h.daemon.alerts)
        # three notices (firing, repeat, resolved) delivered in four POSTs: the first one was retried
        assert h.daemon.alerts.stats.delivered == 3 and h.daemon.alerts.stats.attempts == 4
    finally:
        h.daemon.alerts.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SIGNALS = """
daemon: {id: t, tick_seconds: 5, limits: {max_instances: 1}}
clouds:
  simulated: {boot_seconds: 10}
pools:
  - name: slow                  # latency 5 s against an SLO of 2 s, allowed for 30 s
    max_capacity: 8
    metrics: [{name: p95, type: synthetic, kind: latency, base: 5}]
    targets: {latency_slo_seconds: 2, slo_breach_alert_seconds: 30}
    candidates: [{cloud: simulated, instance_type: sim.l4x1, market: on-demand, throughput: 1}]
  - name: dark                  # its only source is a closed port: stale after max_metric_age_seconds
    max_capacity: 8
    metrics: [{name: router, type: http, url: "http://127.0.0.1:PORT/stats", field: depth, timeout_seconds: 1}]
    targets: {queue_per_unit: 5}
    scaling: {max_metric_age_seconds: 20}
    candidates: [{cloud: simulated, instance_type: sim.l4x1, market: on-demand, throughput: 1}]
  - name: big                   # wants 4 instances, max_instances allows 1
    max_capacity: 8
    metrics: [{name: q, type: synthetic, kind: queue, base: 20}]
    targets: {queue_per_unit: 5}
    candidates: [{cloud: simulated, instance_type: sim.l4x1, market: on-demand, throughput: 1}]
"""


def test_slo_breach_stale_source_and_budget_fire_after_their_delays(tmp_path: Path, receiver: Receiver) -> None:
    h = Harness.start(SIGNALS.replace("PORT", str(_closed_port())) + ALERTS, tmp_path)
    try:
        h.run(ticks=1)
        receiver.wait_for(lambda b: len(receiver.of("budget_limit_reached")) == 1)
        budget = receiver.of("budget_limit_reached")[0]
        assert "max_instances 1" in budget["summary"] and "big" in budget["summary"]
        assert not receiver.of("slo_breached") and not receiver.of("metric_source_stale")

        h.run(
            ticks=5
        )  # ticks at 5..25 s: the SLO breach (since 0 s) is not past its 30 s; the source is past 20 s
        receiver.wait_for(lambda b: len(receiver.of("metric_source_stale")) == 1)
        stale = receiver.of("metric_source_stale")[0]
        assert stale["labels"] == {"pool": "dark", "source": "router"}
        assert "no usable reading for 25 s (limit 20 s)" in stale["summary"]
        assert not receiver.of("slo_breached")

        h.run(ticks=1)  # the tick at 30 s
        receiver.wait_for(lambda b: len(receiver.of("slo_breached")) == 1)
        slo = receiver.of("slo_breached")[0]
        assert slo["labels"] == {"pool": "slow"} and slo["severity"] == "critical"
        assert "for 30 s (allowed 30 s; latest 5 s)" in slo["summary"]
        assert wait_idle(h.daemon.alerts)
        assert [b["alert"] for b in receiver.bodies].count("budget_limit_reached") == 1  # deduplicated
        assert {c.alert for c in h.daemon.alerts.active()} == {
            "budget_limit_reached",
            "metric_source_stale",
            "slo_breached",
        }
    finally:
        h.daemon.alerts.close()


STORM = (
    """
daemon: {id: t, tick_seconds: 5}
clouds:
  simulated: {boot_seconds: 5}
pools:
  - name: llm
    max_capacity: 64
    metrics: [{name: q, type: synthetic, kind: queue, base: 80}]
    targets: {queue_per_unit: 5}
    candidates:
      - {cloud: simulated, instance_type: sim.a100x8, market: spot, throughput: 8}
      - {cloud: simulated, instance_type: sim.a100x8, market: on-demand, throughput: 8}
"""
    + ALERTS
    + "  preemption_storm: {count: 2, window_seconds: 30}\n"
)


def test_preemption_storm_fires_and_resolves_when_the_window_passes(tmp_path: Path, receiver: Receiver) -> None:
    h = Harness.start(STORM, tmp_path)
    try:
        h.run(ticks=3)
        spot = [r for r in h.ready_records() if r.offering.market == Market.SPOT]
        assert len(spot) == 2, "two spot instances are up (one per zone)"
        h.cloud.preempt(spot[0].cloud_id or "")
        h.run(ticks=1)
        assert wait_idle(h.daemon.alerts) and not receiver.of("preemption_storm")  # one is not a storm
        h.cloud.preempt(spot[1].cloud_id or "")
        h.run(ticks=1)
        receiver.wait_for(lambda b: len(receiver.of("preemption_storm")) == 1)
        storm = receiver.of("preemption_storm")[0]
        assert storm["status"] == "firing" and "2 spot preemptions within 30 s" in storm["summary"]
        h.run(ticks=8)  # 40 s later both preemptions are out of the window
        receiver.wait_for(
            lambda b: [x["status"] for x in receiver.of("preemption_storm")] == ["firing", "resolved"]
        )
    finally:
        h.daemon.alerts.close()


def _settings(url_env: str = "TEST_ALERT_WEBHOOK", **kw: Any) -> AlertSettings:
    return AlertSettings(webhooks=[Webhook(name="local", url=Secret(env=url_env))], backoff_seconds=0.05, **kw)


def test_leadership_changes_are_sent_once_each(receiver: Receiver) -> None:
    alerts = Alerts(_settings(), "t")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        alerts.leadership_changed("node-b", "node-a", at, fencing_token=7)
        alerts.leadership_changed("node-b", "node-a", at, fencing_token=7)  # the same news: not re-sent
        alerts.leadership_changed("node-a", "node-b", at, fencing_token=8)
        receiver.wait_for(lambda b: len(b) >= 2)
        assert wait_idle(alerts)
        assert [(b["status"], b["labels"]["leader"]) for b in receiver.bodies] == [
            ("event", "node-b"),
            ("event", "node-a"),
        ]
        assert "fencing token 8" in receiver.bodies[1]["text"]
    finally:
        alerts.close()


def test_a_slow_receiver_never_holds_up_a_tick_and_the_queue_is_bounded(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.delay = 1.0  # every POST takes a second
    text = BLOCKED.replace("repeat_seconds: 60", "repeat_seconds: 5\n  queue_size: 2")
    h = Harness.start(text, tmp_path)
    try:
        started = time.perf_counter()
        h.run(ticks=8)  # a repeat every tick: far more notices than the receiver takes
        assert time.perf_counter() - started < 3.0, "ticks waited for the webhook"
        assert h.daemon.alerts.stats.dropped >= 1
    finally:
        receiver.delay = 0.0
        h.daemon.alerts.close(timeout=0.5)


def test_a_4xx_is_not_retried_and_the_url_is_never_logged(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.statuses.extend([404])
    alerts = Alerts(_settings(max_attempts=3), "t")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        alerts.leadership_changed("a", None, at)
        receiver.wait_for(lambda b: len(b) == 1)
        assert wait_idle(alerts)
        assert alerts.stats.failed == 1 and alerts.stats.attempts == 1
        # an unreachable URL: retried, then given up; the log names the webhook, never its URL
        monkeypatch.setenv("TEST_ALERT_WEBHOOK", f"http://127.0.0.1:{_closed_port()}{SECRET_PATH}")
        alerts.leadership_changed("b", "a", at)
        assert wait_idle(alerts)
        assert alerts.stats.failed == 2 and alerts.stats.attempts == 4
        monkeypatch.delenv("TEST_ALERT_WEBHOOK")
        alerts.leadership_changed("c", "b", at)
        assert wait_idle(alerts) and alerts.stats.failed == 3
    finally:
        alerts.close()
    assert "gave up" in caplog.text and "TEST_ALERT_WEBHOOK" in caplog.text
    assert "secret-path" not in caplog.text and "127.0.0.1:" not in caplog.text


def test_a_failing_alert_evaluation_never_breaks_a_tick(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("alert bug")

    h = Harness.start(BLOCKED, tmp_path)
    monkeypatch.setattr(h.daemon.alerts, "_evaluate", broken)
    try:
        plan = h.daemon.tick()  # raises if anything in the tick did
        assert plan.decisions["llm"].desired > 0 and h.daemon.last_tick_error == ""
        assert "evaluating alerts failed" in caplog.text
        assert wait_idle(h.daemon.alerts) and receiver.bodies == []
    finally:
        h.daemon.alerts.close()
