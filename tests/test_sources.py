"""Metric sources against real HTTP servers on 127.0.0.1, read_samples' timeouts, and combine's rules."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from autoscaler import config
from autoscaler.model import Sample
from autoscaler.sources import HttpJson, Prometheus, Synthetic, build_sources, combine, read_samples

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
# A slow server or source takes this long; a read bounded by its timeout (well under a second here) must return in
# under SLOW_BOUND. Both are generous, so that a loaded 2-core CI runner cannot make the bound flake, and far apart,
# so that a read that waited for the slow answer still fails the bound. The waits end at teardown (fake.stop,
# SleepySource.release), so a test never actually lasts SLOW_SECONDS.
SLOW_SECONDS = 10.0
SLOW_BOUND = 4.0
TOKEN = "tok-9f8e7d6c5b4a"  # a bearer token that must never appear in an error
PASSWORD = "pw-hunter2-XYZ"


# ---------------------------------------------------------------- a real local HTTP server


@dataclass
class Route:
    body: bytes
    status: int = 200
    delay: float = 0.0
    content_type: str = "application/json"


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class FakeServer:
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def json(self, path: str, obj: Any, status: int = 200, delay: float = 0.0) -> None:
        self.routes[path] = Route(json.dumps(obj).encode(), status, delay)

    def raw(self, path: str, body: bytes, status: int = 200, content_type: str = "text/html") -> None:
        self.routes[path] = Route(body, status, content_type=content_type)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            fake.seen.append(
                Seen(parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()})
            )
            route = fake.routes.get(parts.path, Route(b'{"status":"error","error":"no route"}', 404))
            if route.delay and fake.stop.wait(route.delay):
                return
            try:
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)
            except OSError:
                pass  # the client gave up (a timeout test): fine

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake
    fake.stop.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A local port that refuses connections: bound but not listening, and held for the whole test, so that no
    other server can take it in between (as a port picked by bind-to-0-then-close could be)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def prom(url: str, *, name: str = "q", query: str = "sum(queue)", **kw: Any) -> Prometheus:
    return Prometheus(
        config.PrometheusSource.model_validate(
            {"type": "prometheus", "name": name, "url": url, "query": query, **kw}
        )
    )


def http_source(url: str, field: str = "depth", *, name: str = "h", **kw: Any) -> HttpJson:
    return HttpJson(
        config.HttpSource.model_validate({"type": "http", "name": name, "url": url, "field": field, **kw})
    )


def vector(*values: tuple[float, str]) -> dict[str, Any]:
    result = [{"metric": {"job": f"j{i}"}, "value": [ts, v]} for i, (ts, v) in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def assert_failed(sample: Sample, *fragments: str) -> None:
    assert sample.value is None and sample.observed_at is None
    for fragment in fragments:
        assert fragment in sample.error, sample.error


# ---------------------------------------------------------------- prometheus


def test_prometheus_vector_uses_the_sample_timestamp(server: FakeServer) -> None:
    ts = NOW.timestamp() - 7.5
    server.json("/prom/api/v1/query", vector((ts, "42.5")))
    sample = prom(server.url + "/prom/").read(NOW)
    assert sample == Sample("q", "queue", 42.5, NOW - timedelta(seconds=7.5))
    (req,) = server.seen
    assert req.query["query"] == ["sum(queue)"]
    assert float(req.query["time"][0]) == pytest.approx(NOW.timestamp())
    assert "authorization" not in req.headers


def test_prometheus_scalar(server: FakeServer) -> None:
    server.json(
        "/api/v1/query", {"status": "success", "data": {"resultType": "scalar", "result": [NOW.timestamp(), "3"]}}
    )
    sample = prom(server.url, kind="latency").read(NOW)
    assert (sample.value, sample.observed_at, sample.kind, sample.error) == (3.0, NOW, "latency", "")


@pytest.mark.parametrize(
    ("answer", "status", "fragment"),
    [
        (vector(), 200, "no series"),
        (vector((1.0, "1"), (1.0, "2")), 200, "returned 2 series"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, 200, "returned a matrix"),
        ({"status": "success", "data": {"resultType": "string", "result": [1, "x"]}}, 200, "returned a string"),
        (
            {"status": "error", "errorType": "bad_data", "error": "parse error at char 4"},
            400,
            "bad_data: parse error at char 4",
        ),
        ({"status": "error", "errorType": "timeout", "error": "query timed out"}, 503, "HTTP 503"),
        ({"status": "success"}, 200, "no data.resultType"),
        (
            {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
            200,
            "no [timestamp, value]",
        ),
        (vector((1.0, "lots")), 200, "'lots' is not a number"),
        (vector((1e30, "1")), 200, "out of range"),
        ([1, 2, 3], 200, "not a Prometheus API response"),
    ],
)
def test_prometheus_bad_answers_are_error_samples(
    server: FakeServer, answer: Any, status: int, fragment: str
) -> None:
    server.json("/api/v1/query", answer, status=status)
    assert_failed(prom(server.url, name="queue-q").read(NOW), "prometheus source 'queue-q'", fragment)


def test_prometheus_garbage_and_html_errors(server: FakeServer) -> None:
    server.raw("/api/v1/query", b"<html>bad gateway</html>", status=502)
    assert_failed(prom(server.url).read(NOW), "HTTP 502")
    server.raw("/api/v1/query", b"\x00\xffnot json", status=200)
    assert_failed(prom(server.url).read(NOW), "not JSON")


def test_prometheus_nan_and_inf_are_read_as_values(server: FakeServer) -> None:
    server.json("/api/v1/query", vector((NOW.timestamp(), "NaN")))
    assert math.isnan(prom(server.url).read(NOW).value or 0.0)
    server.json("/api/v1/query", vector((NOW.timestamp(), "+Inf")))
    assert prom(server.url).read(NOW).value == math.inf


def test_prometheus_sends_the_bearer_token_and_never_shows_it(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROM_TOKEN", TOKEN)
    server.json("/api/v1/query", vector((NOW.timestamp(), "1")))
    source = prom(server.url, bearer_token_env="PROM_TOKEN")
    assert source.read(NOW).value == 1.0
    assert server.seen[-1].headers["authorization"] == f"Bearer {TOKEN}"
    server.json(
        "/api/v1/query", {"status": "error", "errorType": "unauthorized", "error": "bad token"}, status=401
    )
    failed = source.read(NOW)
    assert_failed(failed, "unauthorized")
    assert TOKEN not in failed.error and "Bearer" not in failed.error


def test_prometheus_missing_token_env_fails_without_a_request(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROM_TOKEN_UNSET", raising=False)
    assert_failed(prom(server.url, bearer_token_env="PROM_TOKEN_UNSET").read(NOW), "PROM_TOKEN_UNSET", "not set")
    assert server.seen == []


def test_prometheus_url_password_never_appears_in_errors(server: FakeServer, refused_port: int) -> None:
    url = server.url.replace("http://", f"http://admin:{PASSWORD}@") + "/?api_key=" + TOKEN
    server.json("/api/v1/query", {"status": "error", "errorType": "internal", "error": "boom"}, status=500)
    failed = prom(url).read(NOW)
    assert_failed(failed, "boom", "127.0.0.1")
    assert PASSWORD not in failed.error and "admin" not in failed.error and TOKEN not in failed.error
    assert server.seen[0].query["api_key"] == [TOKEN] and server.seen[0].query["query"] == ["sum(queue)"]
    unreachable = url.replace(server.url.rsplit(":", 1)[1], str(refused_port))
    failed = prom(unreachable).read(NOW)
    assert_failed(failed, "request failed")
    assert PASSWORD not in failed.error and TOKEN not in failed.error


def test_prometheus_unreachable_port(refused_port: int) -> None:
    started = time.monotonic()
    failed = prom(f"http://127.0.0.1:{refused_port}", timeout_seconds=SLOW_SECONDS).read(NOW)
    assert_failed(failed, "prometheus source 'q'", "ConnectError")
    assert time.monotonic() - started < SLOW_BOUND, "a refused connection fails at once, not at the timeout"


def test_prometheus_slow_server_times_out(server: FakeServer) -> None:
    server.json("/api/v1/query", vector((NOW.timestamp(), "1")), delay=SLOW_SECONDS)
    started = time.monotonic()
    failed = prom(server.url, timeout_seconds=0.3).read(NOW)
    elapsed = time.monotonic() - started
    assert_failed(failed, "timed out after 0.3 s")
    assert 0.25 < elapsed < SLOW_BOUND, "waited for its own timeout, not for the slow answer"


# ---------------------------------------------------------------- http json


def test_http_takes_a_dotted_path_through_dicts_and_lists(server: FakeServer) -> None:
    server.json("/stats", {"data": {"queues": [{"depth": 3}, {"depth": 7}]}})
    sample = http_source(server.url + "/stats", "data.queues.1.depth", headers={"X-Api-Key": TOKEN}).read(NOW)
    assert sample == Sample("h", "queue", 7.0, NOW)
    assert server.seen[0].headers["x-api-key"] == TOKEN
    assert http_source(server.url + "/stats", "data.queues.-1.depth").read(NOW).value == 7.0


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        ({"data": {}}, "data.queue", "field 'data.queue' is not in the answer"),
        ({"q": [1]}, "q.3", "index 3 is out of range"),
        ({"q": [1]}, "q.first", "'first' is not a list index"),
        ({"q": 5}, "q.depth", "cannot look inside a int"),
        ({"q": "lots"}, "q", "'lots', not a number"),
        ({"q": True}, "q", "bool"),
        ({"q": None}, "q", "NoneType"),
        ({"q": {"a": 1}}, "q", "dict"),
    ],
)
def test_http_bad_fields_are_error_samples(server: FakeServer, doc: Any, path: str, fragment: str) -> None:
    server.json("/m", doc)
    assert_failed(http_source(server.url + "/m", path, name="web").read(NOW), "http source 'web'", fragment)


def test_http_numeric_string_nan_and_negative_values_are_read(server: FakeServer) -> None:
    server.json("/m", {"a": "12.5", "b": -3, "c": float("nan")})
    assert http_source(server.url + "/m", "a").read(NOW).value == 12.5
    assert http_source(server.url + "/m", "b").read(NOW).value == -3.0
    assert math.isnan(http_source(server.url + "/m", "c").read(NOW).value or 0.0)


def test_http_status_and_garbage(server: FakeServer) -> None:
    server.json("/m", {"depth": 1}, status=500)
    assert_failed(http_source(server.url + "/m").read(NOW), "HTTP 500")
    server.raw("/m", b"depth=1", content_type="text/plain")
    assert_failed(http_source(server.url + "/m").read(NOW), "not JSON")


def test_http_errors_never_show_headers_or_url_secrets(server: FakeServer) -> None:
    server.json("/m", {"nope": 1}, status=403)
    url = server.url.replace("http://", f"http://u:{PASSWORD}@") + f"/m?queue=jobs&token={TOKEN}"
    failed = http_source(url, headers={"Authorization": f"Bearer {TOKEN}", "X-Key": PASSWORD}).read(NOW)
    assert_failed(failed, "HTTP 403", "/m?queue=...&token=...")
    for secret in (TOKEN, PASSWORD, "Bearer", "u:"):
        assert secret not in failed.error


def test_http_slow_and_unreachable(server: FakeServer, refused_port: int) -> None:
    server.json("/slow", {"depth": 1}, delay=SLOW_SECONDS)
    started = time.monotonic()
    assert_failed(http_source(server.url + "/slow", timeout_seconds=0.3).read(NOW), "timed out")
    assert time.monotonic() - started < SLOW_BOUND, "waited for its own timeout, not for the slow answer"
    assert_failed(http_source(f"http://127.0.0.1:{refused_port}/m").read(NOW), "request failed: ConnectError")
    assert_failed(http_source("not a url at all").read(NOW), "http source 'h'")
    assert_failed(prom("http://[::1").read(NOW), "prometheus source 'q'")


# ---------------------------------------------------------------- synthetic


def test_synthetic_curve_and_bursts() -> None:
    cfg = config.SyntheticSource.model_validate(
        {
            "type": "synthetic",
            "name": "s",
            "base": 40,
            "amplitude": 10,
            "period_seconds": 400,
            "bursts": [{"after_seconds": 100, "duration_seconds": 50, "value": 160}],
        }
    )
    source = Synthetic(cfg, started_at=NOW)
    at = lambda s: source.read(NOW + timedelta(seconds=s))  # noqa: E731
    assert at(0) == Sample("s", "queue", 40.0, NOW)
    assert at(200).value == pytest.approx(40.0)
    assert at(300).value == pytest.approx(30.0)
    assert at(100).value == pytest.approx(40 + 10 * math.sin(math.pi / 2) + 160)  # burst starts
    assert at(149.9).value == pytest.approx(40 + 10 * math.sin(2 * math.pi * 149.9 / 400) + 160)
    assert at(150).value == pytest.approx(40 + 10 * math.sin(2 * math.pi * 150 / 400))  # burst over
    assert at(50).observed_at == NOW + timedelta(seconds=50)


def test_synthetic_never_goes_negative() -> None:
    cfg = config.SyntheticSource(type="synthetic", name="s", base=1, amplitude=5, period_seconds=4)
    assert Synthetic(cfg, NOW).read(NOW + timedelta(seconds=3)).value == 0.0


# ---------------------------------------------------------------- read_samples


class SleepySource:
    """A source that ignores its own timeout (the worst case read_samples must survive).

    It sleeps `sleep` seconds or until `release` is set: the test sets it when done, so that the thread
    read_samples left behind does not outlive the test (nor hold up the interpreter's exit)."""

    def __init__(self, name: str, sleep: float, timeout: float, release: threading.Event | None = None) -> None:
        self.name, self.kind, self.timeout_seconds, self.sleep = name, "queue", timeout, sleep
        self.release = release or threading.Event()

    def read(self, now: datetime) -> Sample:
        self.release.wait(self.sleep)
        return Sample(self.name, self.kind, 1.0, now)


class BrokenSource:
    name, kind = "broken", "latency"

    def read(self, now: datetime) -> Sample:
        raise RuntimeError(f"secret {TOKEN}")


def test_read_samples_reads_every_pool_in_order(server: FakeServer) -> None:
    server.json("/m", {"depth": 9})
    synth = Synthetic(config.SyntheticSource(type="synthetic", name="s", base=5), NOW)
    got = read_samples({"a": [synth, http_source(server.url + "/m")], "b": [], "c": [BrokenSource()]}, NOW)
    assert [(s.source, s.value) for s in got["a"]] == [("s", 5.0), ("h", 9.0)]
    assert got["b"] == []
    (broken,) = got["c"]
    assert_failed(broken, "broken", "RuntimeError")
    assert TOKEN not in broken.error
    assert read_samples({}, NOW) == {}


def test_read_samples_bounds_each_source_by_its_own_timeout(server: FakeServer) -> None:
    server.json("/slow", {"depth": 1}, delay=SLOW_SECONDS)
    release = threading.Event()
    sleepy = SleepySource("hung", sleep=SLOW_SECONDS, timeout=0.4, release=release)
    sources = {
        "a": [sleepy, http_source(server.url + "/slow", timeout_seconds=0.8)],
        # With 2 workers it waits for the slow HTTP read's thread (about 0.8 s): that wait counts against its
        # timeout, which leaves room for a loaded machine.
        "b": [SleepySource("quick", sleep=0.05, timeout=3)],
    }
    started = time.monotonic()
    try:
        got = read_samples(sources, NOW, max_workers=2)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < SLOW_BOUND, "returns within about the longest timeout, not the slowest read"
    hung, slow = got["a"]
    assert_failed(hung, "'hung'", "no answer within 0.4 s")
    assert_failed(slow, "'h'")
    assert got["b"] == [Sample("quick", "queue", 1.0, NOW)]


# ---------------------------------------------------------------- combine


def pool(*metrics: dict[str, Any], max_age: float = 120) -> config.Pool:
    return config.Pool.model_validate(
        {
            "name": "p",
            "max_capacity": 10,
            "metrics": list(metrics),
            "targets": {"queue_per_unit": 5, "latency_slo_seconds": 1},
            "scaling": {"max_metric_age_seconds": max_age},
            "candidates": [{"cloud": "simulated", "instance_type": "sim.l4x1", "market": "spot", "throughput": 1}],
        }
    )


def syn(name: str, kind: str = "queue") -> dict[str, Any]:
    return {"type": "synthetic", "name": name, "kind": kind}


def ok(name: str, value: float, kind: str = "queue", age: float = 0) -> Sample:
    return Sample(name, kind, value, NOW - timedelta(seconds=age))


P4 = pool(syn("q1"), syn("q2"), syn("l1", "latency"), syn("l2", "latency"))


def test_combine_sums_queues_and_takes_the_worst_latency() -> None:
    samples = [ok("q1", 10), ok("q2", 5.5), ok("l1", 0.2, "latency"), ok("l2", 0.9, "latency", age=120)]
    demand = combine(P4, samples, NOW)
    assert (demand.queue_depth, demand.latency_seconds, demand.hold) == (15.5, 0.9, False)
    assert demand.samples == tuple(samples)


def test_combine_without_metrics_has_no_demand() -> None:
    demand = combine(pool(), [], NOW)
    assert demand == type(demand)(None, None)
    assert not demand.hold


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (
            Sample("q2", "queue", None, None, "prometheus source 'q2' (http://x): HTTP 503"),
            "prometheus source 'q2' (http://x): HTTP 503",
        ),
        (Sample("q2", "queue", None, None, "connection refused"), "source 'q2': connection refused"),
        (Sample("q2", "queue", None, NOW), "source 'q2': no value"),
        (ok("q2", math.nan), "source 'q2': value is NaN"),
        (ok("q2", math.inf), "source 'q2': value is infinite"),
        (ok("q2", -1), "source 'q2': value -1 is negative"),
        (ok("q2", 3, age=121), "source 'q2': stale, observed 121 s ago (limit 120 s)"),
        (Sample("q2", "queue", 3, None), "source 'q2': no observation time"),
    ],
)
def test_combine_holds_on_untrustworthy_samples(bad: Sample, fragment: str) -> None:
    demand = combine(P4, [ok("q1", 10), bad, ok("l1", 0.2, "latency"), ok("l2", 0.3, "latency")], NOW)
    assert demand.hold
    assert demand.hold_reason == fragment
    assert demand.queue_depth is None, "a queue sum missing a part would under-count"
    assert demand.latency_seconds == 0.3, "the untouched kind is still reported"


def test_combine_holds_when_a_configured_source_gave_no_sample() -> None:
    demand = combine(P4, [ok("q1", 1), ok("q2", 1), ok("l1", 0.1, "latency")], NOW)
    assert demand.hold_reason == "source 'l2': no sample"
    assert (demand.queue_depth, demand.latency_seconds) == (2.0, None)


def test_combine_names_every_bad_source() -> None:
    demand = combine(P4, [ok("q1", -2), ok("q2", 1, age=500), ok("l1", math.nan, "latency")], NOW)
    for name in ("'q1'", "'q2'", "'l1'", "'l2'"):
        assert name in demand.hold_reason


def test_combine_respects_the_pools_max_age() -> None:
    strict = pool(syn("q1"), max_age=10)
    assert not combine(strict, [ok("q1", 1, age=10)], NOW).hold
    assert combine(strict, [ok("q1", 1, age=10.5)], NOW).hold


# ---------------------------------------------------------------- end to end


def test_build_read_combine_end_to_end(server: FakeServer) -> None:
    server.json("/api/v1/query", vector((NOW.timestamp() - 1, "20")))
    server.json("/lat", {"p99": 0.75})
    p = pool(
        {"type": "synthetic", "name": "s", "base": 5},
        {"type": "prometheus", "name": "prom", "url": server.url, "query": "sum(x)"},
        {"type": "http", "name": "lat", "kind": "latency", "url": server.url + "/lat", "field": "p99"},
    )
    sources = build_sources(p, started_at=NOW)
    assert [type(s) for s in sources] == [Synthetic, Prometheus, HttpJson]
    demand = combine(p, read_samples({"p": sources}, NOW)["p"], NOW)
    assert (demand.queue_depth, demand.latency_seconds, demand.hold_reason) == (25.0, 0.75, "")
    server.json("/lat", {"p99": 0.75}, status=502)
    demand = combine(p, read_samples({"p": sources}, NOW)["p"], NOW)
    assert demand.hold and "http source 'lat'" in demand.hold_reason and "HTTP 502" in demand.hold_reason
