"""Source health made visible: a source that is unreachable, answers garbage or goes stale makes its pool hold,
and the metrics (gpu_autoscaler_metric_source_up / _age_seconds, gpu_autoscaler_pool_holding), the admin API's
pool status and explain, and `gpu-autoscaler status` / `explain` say so; recovery needs nobody.

Ticks are driven the way the daemon drives them (real sources reading a local HTTP server, read_samples,
combine, Metrics.observe_tick, then the snapshot handed to the API as the daemon's last one), with a fake clock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from autoscaler.api.app import create_app
from autoscaler.cli_client import explain, status_table
from autoscaler.interfaces import MetricSource
from autoscaler.metrics import Metrics
from autoscaler.model import Demand, Plan, Sample, Snapshot
from autoscaler.sources import build_sources, combine, read_samples
from tests.api_support import T0, TOKEN, TestControl, make_control, serve

POOL = "web"
MAX_AGE = 40


# ---------------------------------------------------------------- a local metrics backend


@dataclass
class Backend:
    """Answers /api/v1/query like Prometheus (the result stamped with the asked `time`, minus `lag`) and /lat
    as JSON; `mode` breaks them: "down" (503), "garbage" (not JSON), "nan"."""

    queue: float = 120.0
    latency: float = 0.4
    lag: float = 0.0
    mode: str = "ok"
    url: str = ""


@pytest.fixture
def backend() -> Iterator[Backend]:
    state = Backend()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if state.mode == "down":
                status, body = 503, b"service unavailable"
            elif state.mode == "garbage":
                status, body = 200, b"<html>login page</html>"
            elif parts.path == "/api/v1/query":
                at = float(parse_qs(parts.query)["time"][0]) - state.lag
                value = "NaN" if state.mode == "nan" else repr(state.queue)
                result = [{"metric": {}, "value": [at, value]}]
                status, body = (
                    200,
                    json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode(),
                )
            else:
                status, body = 200, json.dumps({"p95": state.latency}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def policy_text(url: str) -> str:
    return f"""
pools:
  - name: {POOL}
    max_capacity: 10
    metrics:
      - {{name: queue, type: prometheus, url: "{url}", query: "sum(jobs_waiting)", timeout_seconds: 2}}
      - {{name: lat, type: http, kind: latency, url: "{url}/lat", field: p95, timeout_seconds: 2}}
    targets: {{queue_per_unit: 5, latency_slo_seconds: 1}}
    scaling: {{max_metric_age_seconds: {MAX_AGE}}}
    candidates:
      - {{cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}}
"""


@pytest.fixture
def control(tmp_path: Path, backend: Backend) -> Iterator[TestControl]:
    c = make_control(tmp_path)
    c.policy_path.write_text(policy_text(backend.url))
    accepted, message = c.reload_policy()
    assert accepted, message
    yield c
    c.store.close()


def tick(control: TestControl) -> Snapshot:
    """What the daemon's tick does with the pools' sources: read, combine, observe, publish the snapshot."""
    policy = control.policy().policy
    now = control.clock.now()
    sources: dict[str, list[MetricSource]] = {p.name: build_sources(p, T0) for p in policy.pools}
    samples = read_samples(sources, now)
    demand = {p.name: combine(p, samples[p.name], now) for p in policy.pools}
    snapshot = Snapshot(now, (), {}, (), (), demand, {}, {})
    control.metrics.observe_tick(snapshot, Plan(now, (), {}, {}), 0.1)
    control.last_snapshot = snapshot
    return snapshot


def gauges(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render()[0].decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(("gpu_autoscaler_metric_source", "gpu_autoscaler_pool_holding"))
    }


def up(source: str, pool: str = POOL) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("gpu_autoscaler_metric_source_up", frozenset({("pool", pool), ("source", source)}))


def age(source: str, pool: str = POOL) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("gpu_autoscaler_metric_source_age_seconds", frozenset({("pool", pool), ("source", source)}))


def holding(pool: str = POOL) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("gpu_autoscaler_pool_holding", frozenset({("pool", pool)}))


def by_name(sources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in sources}


# ---------------------------------------------------------------- metrics


def test_metrics_follow_an_outage_and_the_recovery(control: TestControl, backend: Backend) -> None:
    tick(control)
    assert gauges(control.metrics) == {
        up("queue"): 1,
        up("lat"): 1,
        age("queue"): 0,
        age("lat"): 0,
        holding(): 0,
    }
    backend.mode = "down"
    control.clock.advance(15)
    snapshot = tick(control)
    assert snapshot.demand[POOL].hold
    got = gauges(control.metrics)
    assert (got[up("queue")], got[up("lat")], got[holding()]) == (0, 0, 1)
    assert (got[age("queue")], got[age("lat")]) == (15, 15), "the age of the last good reading keeps growing"
    control.clock.advance(45)
    tick(control)
    assert gauges(control.metrics)[age("queue")] == 60
    backend.mode = "ok"
    control.clock.advance(15)
    tick(control)
    assert gauges(control.metrics) == {up("queue"): 1, up("lat"): 1, age("queue"): 0, age("lat"): 0, holding(): 0}


def test_garbage_and_nan_are_down_and_a_stale_answer_is_up_but_old(control: TestControl, backend: Backend) -> None:
    backend.mode = "garbage"
    tick(control)
    got = gauges(control.metrics)
    assert (got[up("queue")], got[up("lat")], got[holding()]) == (0, 0, 1)
    assert age("queue") not in got and age("lat") not in got, "absent: never observed"
    backend.mode = "nan"
    snapshot = tick(control)
    got = gauges(control.metrics)
    assert (got[up("queue")], got[up("lat")], got[holding()]) == (0, 1, 1)
    assert "value is NaN" in snapshot.demand[POOL].hold_reason
    backend.mode, backend.lag = "ok", 300
    snapshot = tick(control)
    got = gauges(control.metrics)
    assert (got[up("queue")], got[age("queue")], got[holding()]) == (1, 300, 1)
    assert "source 'queue': stale, observed 300 s ago (limit 40 s)" in snapshot.demand[POOL].hold_reason


def test_metrics_of_sources_and_pools_that_left_the_policy_disappear() -> None:
    metrics = Metrics()
    sample = Sample("old-source", "queue", 3.0, T0)
    snapshot = Snapshot(T0, (), {}, (), (), {"gone": Demand(3.0, None, (sample,))}, {}, {})
    metrics.observe_tick(snapshot, Plan(T0, (), {}, {}), 0.1)
    assert gauges(metrics) == {up("old-source", "gone"): 1, age("old-source", "gone"): 0, holding("gone"): 0}
    metrics.observe_tick(Snapshot(T0, (), {}, (), (), {}, {}, {}), Plan(T0, (), {}, {}), 0.1)
    assert gauges(metrics) == {}
    assert metrics.last_good_reading("gone", "old-source") is None


def test_a_pool_without_sources_reports_only_that_it_does_not_hold() -> None:
    metrics = Metrics()
    snapshot = Snapshot(T0, (), {}, (), (), {"plain": Demand(None, None)}, {}, {})
    metrics.observe_tick(snapshot, Plan(T0, (), {}, {}), 0.1)
    assert gauges(metrics) == {holding("plain"): 0}


# ---------------------------------------------------------------- the admin API


@pytest.fixture
def client(control: TestControl) -> TestClient:
    return TestClient(create_app(control, TOKEN))


def test_before_the_first_tick_every_source_is_not_read_yet(client: TestClient) -> None:
    (pool,) = client.get("/v1/pools").json()
    assert (pool["holding"], pool["hold_reason"], pool["sources_read_at"]) == (False, "", None)
    assert [(s["name"], s["type"], s["kind"], s["up"], s["error"]) for s in pool["sources"]] == [
        ("queue", "prometheus", "queue", None, "not read yet"),
        ("lat", "http", "latency", None, "not read yet"),
    ]


def test_pool_status_shows_each_source_and_the_hold(
    client: TestClient, control: TestControl, backend: Backend
) -> None:
    tick(control)
    pool = client.get(f"/v1/pools/{POOL}").json()
    assert (pool["holding"], pool["hold_reason"]) == (False, "")
    assert datetime.fromisoformat(pool["sources_read_at"]) == T0
    queue = by_name(pool["sources"])["queue"]
    assert queue == {
        "name": "queue",
        "type": "prometheus",
        "kind": "queue",
        "up": True,
        "value": 120.0,
        "observed_at": queue["observed_at"],
        "age_seconds": 0.0,
        "stale": False,
        "error": "",
    }
    assert datetime.fromisoformat(queue["observed_at"]) == T0

    backend.mode = "down"
    control.clock.advance(15)
    tick(control)
    control.clock.advance(30)  # no tick since: the age is the age now
    for body in (client.get("/v1/pools").json()[0], client.get(f"/v1/pools/{POOL}/explain").json()):
        assert body["holding"] is True
        assert "prometheus source 'queue'" in body["hold_reason"] and "http source 'lat'" in body["hold_reason"]
        assert datetime.fromisoformat(body["sources_read_at"]) == T0 + timedelta(seconds=15)
        queue = by_name(body["sources"])["queue"]
        assert (queue["up"], queue["value"], queue["age_seconds"], queue["stale"]) == (False, None, 45, True)
        assert datetime.fromisoformat(queue["observed_at"]) == T0, "the last usable reading"
        assert "HTTP 503" in queue["error"]

    backend.mode = "ok"
    tick(control)
    body = client.get(f"/v1/pools/{POOL}/explain").json()
    assert body["holding"] is False and {s["name"]: s["up"] for s in body["sources"]} == {
        "queue": True,
        "lat": True,
    }


def test_a_stale_source_and_a_nan_value_are_explained(
    client: TestClient, control: TestControl, backend: Backend
) -> None:
    backend.lag = 300
    tick(control)
    queue = by_name(client.get("/v1/pools").json()[0]["sources"])["queue"]
    assert (queue["up"], queue["value"], queue["age_seconds"], queue["stale"]) == (True, 120.0, 300, True)
    assert queue["error"] == "source 'queue': stale, observed 300 s ago (limit 40 s)"
    backend.lag, backend.mode = 0, "nan"
    tick(control)
    body = client.get(f"/v1/pools/{POOL}/explain").json()  # NaN is no JSON number: shown as null, not a 500
    queue = by_name(body["sources"])["queue"]
    assert (queue["up"], queue["value"], queue["error"]) == (False, None, "source 'queue': value is NaN")
    assert body["holding"] is True and "value is NaN" in body["hold_reason"]


def test_a_source_added_by_a_reload_is_not_read_yet(
    client: TestClient, control: TestControl, backend: Backend
) -> None:
    tick(control)
    text = policy_text(backend.url).replace(
        "    targets:", "      - {name: extra, type: synthetic, base: 3}\n    targets:"
    )
    control.policy_path.write_text(text)
    assert control.reload_policy()[0]
    sources = by_name(client.get("/v1/pools").json()[0]["sources"])
    assert sources["queue"]["up"] is True and sources["extra"]["up"] is None
    assert sources["extra"]["error"] == "not read yet"


# ---------------------------------------------------------------- the CLI


def console() -> Console:
    return Console(record=True, width=250, color_system=None)


def test_status_marks_a_holding_pool_and_explain_lists_the_sources(control: TestControl, backend: Backend) -> None:
    with serve(create_app(control, TOKEN)) as url:
        out = console()
        assert explain(url, POOL, out) == 0
        text = out.export_text()
        assert "queue (prometheus, queue): not read yet" in text

        tick(control)
        out = console()
        assert status_table(url, out) == 0
        row = next(line for line in out.export_text().splitlines() if f"│ {POOL} " in line)
        assert "2/2 up" in row and "HOLDING" not in row

        backend.mode = "down"
        control.clock.advance(90)
        tick(control)
        out = console()
        assert status_table(url, out) == 0
        text = out.export_text()
        row = next(line for line in text.splitlines() if f"│ {POOL} " in line)
        assert "0/2 up, HOLDING" in row
        assert f"Pool {POOL} is holding its capacity: prometheus source 'queue'" in text

        out = console()
        assert explain(url, POOL, out) == 0
        text = out.export_text()
        assert "Metric sources (read at 2025-03-01T12:01:30Z):" in text
        assert "  - queue (prometheus, queue): DOWN, newest reading 90s old; prometheus source 'queue'" in text
        assert "HTTP 503" in text
        assert "The pool is HOLDING its capacity until the data is good again: prometheus source 'queue'" in text

        backend.mode = "ok"
        tick(control)
        out = console()
        assert explain(url, POOL, out) == 0
        text = out.export_text()
        assert "  - queue (prometheus, queue): up, value 120, newest reading 0s old" in text
        assert "  - lat (http, latency): up, value 0.4, newest reading 0s old" in text
        assert "Not holding: the pool scales on its sources." in text


# ---------------------------------------------------------------- the real daemon


def test_the_daemon_holds_on_a_dead_source_says_so_and_recovers(tmp_path: Path, backend: Backend) -> None:
    """Daemon.tick end to end: needs Daemon.last_snapshot (the DaemonControl member the API reads)."""
    from tests.daemon_harness import Harness

    policy = "clouds: {simulated: {boot_seconds: 10}}\n" + policy_text(backend.url).replace(
        "max_capacity: 10", "min_capacity: 0\n    max_capacity: 64"
    )
    h = Harness.start(policy, tmp_path)
    client = TestClient(create_app(h.daemon, None))
    assert client.get("/v1/pools").json()[0]["sources_read_at"] is None  # before the first tick
    h.run(ticks=3)
    desired = h.store.decisions(pool=POOL, limit=1)[0].decision.desired
    assert desired == 24  # 120 queued / 5 per unit
    backend.mode, backend.queue = "down", 0.0  # were the source believed, 0 would scale the pool in
    h.run(ticks=3)
    pool = client.get("/v1/pools").json()[0]
    assert pool["holding"] is True and "HTTP 503" in pool["hold_reason"]
    assert {s["name"]: s["up"] for s in pool["sources"]} == {"queue": False, "lat": False}
    # the last good reading was at the 3rd tick (t = 10 s); h.run left the clock at t = 30 s
    assert by_name(pool["sources"])["queue"]["age_seconds"] == 20
    assert h.store.decisions(pool=POOL, limit=1)[0].decision.desired == desired, "held, not scaled in"
    got = gauges(h.daemon.metrics)
    assert (got[up("queue")], got[holding()]) == (0, 1)
    backend.mode = "ok"
    h.run(ticks=1)
    pool = client.get("/v1/pools").json()[0]
    assert pool["holding"] is False and {s["name"]: s["up"] for s in pool["sources"]} == {
        "queue": True,
        "lat": True,
    }
    assert (gauges(h.daemon.metrics)[up("queue")], gauges(h.daemon.metrics)[holding()]) == (1, 0)
    h.store.close()
