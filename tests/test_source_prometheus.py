"""The Prometheus source against a REAL Prometheus server (tests/prometheus_server.py: the `prometheus` binary on
127.0.0.1, scraping exporters this module runs every second), and its bearer token against a local auth proxy.

- Queries: a gauge (queue depth), a rate(), a p95 latency (histogram_quantile over a histogram the test
  observes), a query without series, a query Prometheus cannot parse; each answer read end to end through
  build_sources, read_samples and combine where it matters.
- Staleness: the sample carries Prometheus's own timestamp for the result (the evaluation time); a target that
  stops answering is marked stale by Prometheus at its next failed scrape, so the query returns no series and the
  pool holds; it recovers by itself when the target answers again.
- TLS and basic auth: a second server with a web config (--web.config.file) serving https with a certificate
  of a private CA (made with `cryptography`) and requiring basic auth: ca_file, verify_tls and the URL's userinfo.
- Bearer token: Prometheus's web config has basic_auth_users but no bearer tokens, so the token is checked by a
  small local proxy in front of the real server (the way a token is enforced in practice: an auth proxy) that
  refuses any other Authorization header; the error paths use the same proxy without the server behind it.

Without the binary the real-server tests skip, or fail when GPU_AUTOSCALER_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import Counter, Gauge, Histogram

from autoscaler import config
from autoscaler.model import Sample
from autoscaler.sources import Prometheus, build_sources, combine, read_samples
from tests.prometheus_server import Exporter, PrometheusServer, TlsFiles, make_tls_files, require_prometheus

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
QUEUE = "sum(app_queue_depth)"
P95 = "histogram_quantile(0.95, sum by (le) (rate(app_request_seconds_bucket[30s])))"
TOKEN = "prom-token-0a1b2c3d4e"
OTHER_TOKEN = "prom-token-rotated-5f6e7d"
BASIC_USER = "autoscaler"
BASIC_PASSWORD = "prom-basic-pw-7Q"
# bcrypt of BASIC_PASSWORD (cost 4: the minimum, so that each request's check is fast), made once with
# crypt.crypt(BASIC_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)): Prometheus's web config takes
# only hashes, and no bcrypt library is a test dependency.
BASIC_HASH = "$2b$04$WqU/7ouZ4.T1L/RpWehlKeSSEnz93ym5RCmtRqKSfCjHSOtXxNuQa"
WAIT_SECONDS = 15.0  # how long a test waits for Prometheus to scrape a change (it scrapes every second)


def utcnow() -> datetime:
    return datetime.now(UTC)


def source(url: str, query: str = QUEUE, *, name: str = "prom", **kw: Any) -> Prometheus:
    return Prometheus(
        config.PrometheusSource.model_validate(
            {"type": "prometheus", "name": name, "url": url, "query": query, **kw}
        )
    )


def pool_of(*metrics: dict[str, Any], max_age: float = 60) -> config.Pool:
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


def read_until(src: Prometheus, done: Callable[[Sample], bool], what: str, at: timedelta = timedelta()) -> Sample:
    """Read (at now - `at`) until `done(sample)`: Prometheus shows a change only after its next scrape."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        sample = src.read(utcnow() - at)
        if done(sample):
            return sample
        assert time.monotonic() < deadline, f"no {what} within {WAIT_SECONDS:g} s; last sample: {sample}"
        time.sleep(0.1)


def assert_failed(sample: Sample, *fragments: str) -> None:
    assert sample.value is None and sample.observed_at is None, sample
    for fragment in fragments:
        assert fragment in sample.error, sample.error


# ---------------------------------------------------------------- the real server, started once


@dataclass
class Stack:
    prometheus: PrometheusServer
    app: Exporter
    flaky: Exporter
    queue: Gauge
    jobs: Counter
    latency: Histogram
    flaky_queue: Gauge


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """Prometheus scraping two exporters every second: `app` (a queue gauge, a job counter, a request-latency
    histogram) and `flaky` (a gauge; a test stops and restarts it). Returns once both are up and scraped."""
    require_prometheus()
    app, flaky = Exporter(), Exporter()
    queue = Gauge("app_queue_depth", "Jobs waiting", ["queue"], registry=app.registry)
    jobs = Counter("app_jobs", "Jobs done", registry=app.registry)
    latency = Histogram("app_request_seconds", "Request latency", buckets=LATENCY_BUCKETS, registry=app.registry)
    flaky_queue = Gauge("flaky_queue_depth", "Jobs waiting at the flaky exporter", registry=flaky.registry)
    queue.labels(queue="jobs").set(42)
    flaky_queue.set(5)
    app.start()
    flaky.start()
    prometheus = None
    try:
        prometheus = PrometheusServer.start(
            jobs={"app": [app.target], "flaky": [flaky.target]},
            wait_for=["app_queue_depth", "app_jobs_total", "flaky_queue_depth"],
        )
        yield Stack(prometheus, app, flaky, queue, jobs, latency, flaky_queue)
    finally:
        if prometheus is not None:
            prometheus.stop()
        app.stop()
        flaky.stop()


# ---------------------------------------------------------------- queries


def test_a_gauge_is_the_queue_depth(stack: Stack) -> None:
    src = source(stack.prometheus.url)
    stack.queue.labels(queue="jobs").set(42)
    assert read_until(src, lambda s: s.value == 42, "queue depth 42").error == ""
    stack.queue.labels(queue="jobs").set(17)
    sample = read_until(src, lambda s: s.value == 17, "the new queue depth 17")
    assert (sample.source, sample.kind, sample.error) == ("prom", "queue", "")

    # The whole path the daemon takes: policy -> sources -> parallel read -> Demand.
    pool = pool_of({"type": "prometheus", "name": "prom", "url": stack.prometheus.url, "query": QUEUE})
    now = utcnow()
    demand = combine(pool, read_samples({"p": build_sources(pool, now)}, now)["p"], now)
    assert (demand.queue_depth, demand.hold_reason) == (17.0, "")


def test_a_rate_agrees_with_prometheus(stack: Stack) -> None:
    src = source(stack.prometheus.url, "sum(rate(app_jobs_total[10s]))", name="throughput")
    stack.jobs.inc(30)
    # Evaluated 1 s in the past: every scrape up to then is stored, so Prometheus's own answer for the same
    # time, asked next, is the same number.
    back = timedelta(seconds=1)
    sample = read_until(src, lambda s: (s.value or 0) > 0, "a positive rate", at=back)
    assert sample.observed_at is not None
    (own,) = stack.prometheus.query("sum(rate(app_jobs_total[10s]))", at=sample.observed_at.timestamp())
    assert sample.value == pytest.approx(float(own["value"][1]))
    assert 0 < (sample.value or 0) <= 30, "30 jobs within a 10 s window"


def test_histogram_quantile_is_a_p95_latency(stack: Stack) -> None:
    pool = pool_of(
        {"type": "prometheus", "name": "p95", "kind": "latency", "url": stack.prometheus.url, "query": P95}
    )
    src = source(stack.prometheus.url, P95, name="p95", kind="latency")
    # Before any request: no rate yet or 0/0, so no series or NaN; either way the pool must not scale on it.
    now = utcnow()
    assert combine(pool, [src.read(now)], now).hold
    # 90 requests took 0.1 s and 10 took 2 s: the 95th percentile lies in the (1, 2.5] bucket, halfway through
    # its 10 requests, which Prometheus interpolates to 1 + 1.5 * 5 / 10 = 1.75 s.
    for _ in range(90):
        stack.latency.observe(0.1)
    for _ in range(10):
        stack.latency.observe(2.0)
    sample = read_until(src, lambda s: s.value is not None and math.isfinite(s.value), "a finite p95")
    assert sample.value == pytest.approx(1.75)
    assert sample.kind == "latency"
    now = utcnow()
    demand = combine(pool, [src.read(now)], now)
    assert demand.latency_seconds == pytest.approx(1.75) and not demand.hold


def test_a_metric_that_does_not_exist_holds_the_pool(stack: Stack) -> None:
    query = "sum(app_no_such_metric)"
    pool = pool_of({"type": "prometheus", "name": "missing", "url": stack.prometheus.url, "query": query})
    sample = source(stack.prometheus.url, query, name="missing").read(utcnow())
    assert_failed(sample, "prometheus source 'missing'", "no series")
    demand = combine(pool, [sample], utcnow())
    assert demand.hold and demand.queue_depth is None
    assert "prometheus source 'missing'" in demand.hold_reason and "no series" in demand.hold_reason


def test_bad_promql_is_an_error_sample_with_prometheus_message(stack: Stack) -> None:
    query = "sum(rate(app_jobs_total[5m])"
    own = httpx.get(f"{stack.prometheus.url}/api/v1/query", params={"query": query}).json()
    assert own["status"] == "error" and own["errorType"] == "bad_data"
    sample = source(stack.prometheus.url, query, name="typo").read(utcnow())
    assert_failed(sample, "prometheus source 'typo'", "query failed (HTTP 400): bad_data: ", "parse error")
    assert own["error"][:200] in sample.error


# ---------------------------------------------------------------- staleness


def test_the_sample_carries_prometheus_timestamp(stack: Stack) -> None:
    # An instant query's result is stamped with its evaluation time: the `time` the source asks for, here 3 s ago.
    src = source(stack.prometheus.url, "flaky_queue_depth")
    deadline = time.monotonic() + WAIT_SECONDS
    while (sample := src.read(at := utcnow() - timedelta(seconds=3))).value != 5:  # data 3 s old exists
        assert time.monotonic() < deadline, sample
        time.sleep(0.1)
    assert sample.observed_at is not None
    assert abs((sample.observed_at - at).total_seconds()) < 0.002  # Prometheus keeps milliseconds
    (own,) = stack.prometheus.query("flaky_queue_depth", at=at.timestamp())
    assert sample.observed_at.timestamp() == pytest.approx(float(own["value"][0]), abs=1e-3)
    # So an answer older than the pool allows is stale to combine().
    strict = pool_of({"type": "prometheus", "name": "prom", "url": stack.prometheus.url, "query": "x"}, max_age=1)
    demand = combine(strict, [sample], utcnow())
    assert demand.hold and "source 'prom': stale, observed" in demand.hold_reason
    assert "(limit 1 s)" in demand.hold_reason


def test_a_stopped_exporter_holds_the_pool_and_recovery_is_automatic(stack: Stack) -> None:
    query = "sum(flaky_queue_depth)"
    pool = pool_of({"type": "prometheus", "name": "flaky", "url": stack.prometheus.url, "query": query})
    src = source(stack.prometheus.url, query, name="flaky")
    assert read_until(src, lambda s: s.value == 5, "the flaky gauge").error == ""
    stack.flaky.stop()
    try:
        # Prometheus's next scrape fails and marks the target's series stale: the query has no series left.
        # (It never keeps answering with the last value: that is what staleness markers are for.)
        failed = read_until(src, lambda s: s.value is None, "a failed read after the exporter stopped")
        assert_failed(failed, "prometheus source 'flaky'", "no series")
        (up,) = stack.prometheus.query('up{job="flaky"}')
        assert up["value"][1] == "0"
        now = utcnow()
        demand = combine(pool, [src.read(now)], now)
        assert demand.hold and "no series" in demand.hold_reason and demand.queue_depth is None
    finally:
        stack.flaky.start()  # the same port: Prometheus's next scrape finds it again
    back = read_until(src, lambda s: s.value == 5, "the gauge again after the exporter came back")
    now = utcnow()
    assert combine(pool, [back], now).hold_reason == ""


# ---------------------------------------------------------------- TLS with a private CA, and basic auth


@dataclass
class TlsStack:
    prometheus: PrometheusServer
    files: TlsFiles
    port: int


@pytest.fixture(scope="session")
def tls_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    """Prometheus with a web config: https with a certificate signed by a private CA, basic auth required.
    It scrapes nothing (the queries below need no data), so it is ready in well under a second."""
    require_prometheus()
    files = make_tls_files(tmp_path_factory.mktemp("prometheus-tls"))
    prometheus = PrometheusServer.start(tls=files, basic_auth=(BASIC_USER, BASIC_PASSWORD, BASIC_HASH))
    try:
        yield TlsStack(prometheus, files, int(prometheus.url.rsplit(":", 1)[1]))
    finally:
        prometheus.stop()


def https(tls: TlsStack, user: str | None = BASIC_USER, password: str = BASIC_PASSWORD) -> str:
    userinfo = f"{user}:{password}@" if user else ""
    return f"https://{userinfo}127.0.0.1:{tls.port}"


def test_https_with_a_private_ca_and_basic_auth(tls_prometheus: TlsStack) -> None:
    sample = source(https(tls_prometheus), "vector(3)", ca_file=str(tls_prometheus.files.ca)).read(utcnow())
    assert (sample.value, sample.error) == (3.0, "")
    # verify_tls: false talks to it too (and ignores the CA file)
    sample = source(https(tls_prometheus), "vector(4)", verify_tls=False, ca_file="/nonexistent").read(utcnow())
    assert (sample.value, sample.error) == (4.0, "")


def test_https_without_the_ca_is_refused(tls_prometheus: TlsStack) -> None:
    failed = source(https(tls_prometheus), "vector(3)").read(utcnow())  # the system trust store
    assert_failed(failed, "prometheus source 'prom'", "CERTIFICATE_VERIFY_FAILED")
    assert BASIC_PASSWORD not in failed.error and BASIC_USER not in failed.error


def test_basic_auth_failures_never_show_the_password(tls_prometheus: TlsStack) -> None:
    ca = str(tls_prometheus.files.ca)
    assert_failed(source(https(tls_prometheus, user=None), "vector(3)", ca_file=ca).read(utcnow()), "HTTP 401")
    failed = source(https(tls_prometheus, password="wrong-pw-123"), "vector(3)", ca_file=ca).read(utcnow())
    assert_failed(failed, "HTTP 401", f"https://127.0.0.1:{tls_prometheus.port}/api/v1/query")
    assert "wrong-pw-123" not in failed.error and BASIC_USER not in failed.error


def test_a_bad_ca_file_is_an_error_naming_it(tmp_path: Path) -> None:
    url = "https://127.0.0.1:9"  # never contacted: the CA file is checked first
    missing = tmp_path / "missing-ca.pem"
    assert_failed(source(url, ca_file=str(missing)).read(utcnow()), f"CA file {missing} does not exist")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert_failed(source(url, ca_file=str(garbage)).read(utcnow()), f"CA file {garbage} holds no usable CA")
    assert_failed(source(url, ca_file=str(tmp_path)).read(utcnow()), f"CA file {tmp_path} cannot be read")


# ---------------------------------------------------------------- bearer token, through an auth proxy


@dataclass
class AuthProxy:
    """Accepts only `Authorization: Bearer <token>`; forwards to `upstream` (a real Prometheus) or, without one,
    answers a one-element vector of 1. Refusals answer 401 the way Prometheus API errors look."""

    token: str = TOKEN
    upstream: str | None = None
    seen: list[str | None] = field(default_factory=list)  # the Authorization header of every request
    url: str = ""


@pytest.fixture
def proxy() -> Iterator[AuthProxy]:
    state = AuthProxy()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            header = self.headers.get("Authorization")
            state.seen.append(header)
            if header != f"Bearer {state.token}":
                status, body = (
                    401,
                    {"status": "error", "errorType": "unauthorized", "error": "bearer token refused"},
                )
                data = json.dumps(body).encode()
            elif state.upstream is not None:
                answer = httpx.get(state.upstream + self.path, timeout=5)
                status, data = answer.status_code, answer.content
            else:
                result = [{"metric": {}, "value": [time.time(), "1"]}]
                data = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                ).encode()
                status = 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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


def test_bearer_token_from_env_reaches_the_real_server(
    stack: Stack, proxy: AuthProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy.upstream = stack.prometheus.url
    monkeypatch.setenv("PROM_TOKEN", TOKEN)
    stack.queue.labels(queue="jobs").set(23)
    sample = read_until(source(proxy.url, bearer_token_env="PROM_TOKEN"), lambda s: s.value == 23, "23 via proxy")
    assert sample.error == "" and proxy.seen[-1] == f"Bearer {TOKEN}"
    failed = source(proxy.url).read(utcnow())  # no token configured: no header, refused
    assert_failed(failed, "query failed (HTTP 401): unauthorized: bearer token refused")
    assert proxy.seen[-1] is None


def test_a_rotated_token_file_is_read_at_every_query(proxy: AuthProxy, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # `echo token > file` leaves a newline: it is not part of the token
    src = source(proxy.url, bearer_token_file=str(token_file))
    assert src.read(utcnow()).value == 1.0 and proxy.seen[-1] == f"Bearer {TOKEN}"
    proxy.token = OTHER_TOKEN  # the server side rotated first: the old token is refused
    failed = src.read(utcnow())
    assert_failed(failed, "HTTP 401", "unauthorized")
    assert TOKEN not in failed.error and OTHER_TOKEN not in failed.error and "Bearer" not in failed.error
    token_file.write_text(OTHER_TOKEN)  # the file follows: the same source, no restart
    assert src.read(utcnow()).value == 1.0 and proxy.seen[-1] == f"Bearer {OTHER_TOKEN}"


def test_the_env_token_wins_and_the_file_is_the_fallback(
    proxy: AuthProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(OTHER_TOKEN)
    src = source(proxy.url, bearer_token_env="PROM_TOKEN", bearer_token_file=str(token_file))
    monkeypatch.setenv("PROM_TOKEN", TOKEN)
    assert src.read(utcnow()).value == 1.0 and proxy.seen[-1] == f"Bearer {TOKEN}"
    monkeypatch.delenv("PROM_TOKEN")
    proxy.token = OTHER_TOKEN
    assert src.read(utcnow()).value == 1.0 and proxy.seen[-1] == f"Bearer {OTHER_TOKEN}"


def test_a_missing_token_is_an_error_naming_where_it_was_looked_for(
    proxy: AuthProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROM_TOKEN_UNSET", raising=False)
    missing = tmp_path / "no-such-token"
    assert_failed(
        source(proxy.url, bearer_token_file=str(missing)).read(utcnow()),
        "prometheus source 'prom'",
        f"bearer token file {missing} does not exist",
    )
    assert_failed(
        source(proxy.url, bearer_token_env="PROM_TOKEN_UNSET", bearer_token_file=str(missing)).read(utcnow()),
        "environment variable PROM_TOKEN_UNSET (the bearer token) is not set and bearer token file",
    )
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    assert_failed(
        source(proxy.url, bearer_token_file=str(empty)).read(utcnow()), f"bearer token file {empty} is empty"
    )
    assert_failed(source(proxy.url, bearer_token_file=str(tmp_path)).read(utcnow()), "cannot be read")
    huge = tmp_path / "huge"
    huge.write_bytes(b"a" * 20000)
    assert_failed(source(proxy.url, bearer_token_file=str(huge)).read(utcnow()), "larger than 16384 bytes")
    latin1 = tmp_path / "latin1"
    latin1.write_bytes(b"tok\xe9n")
    assert_failed(source(proxy.url, bearer_token_file=str(latin1)).read(utcnow()), "is not UTF-8 text")
    assert proxy.seen == [], "no request is sent without a token"


@pytest.mark.parametrize("bad", ["XyZ9 qW8", "XyZ9\x00qW8", "XyZ9\u00f6qW8", "XyZ9\nqW8", "XyZ9\tqW8"])
def test_a_token_a_header_cannot_carry_is_refused_without_showing_it(
    proxy: AuthProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(bad, encoding="utf-8")
    failed = source(proxy.url, bearer_token_file=str(token_file)).read(utcnow())
    assert_failed(failed, f"bearer token file {token_file} holds a character a bearer token cannot contain")
    assert "XyZ9" not in failed.error and "qW8" not in failed.error
    if "\x00" not in bad:  # an environment variable cannot hold NUL
        monkeypatch.setenv("PROM_TOKEN", bad)
        failed = source(proxy.url, bearer_token_env="PROM_TOKEN").read(utcnow())
        assert_failed(failed, "environment variable PROM_TOKEN holds a character a bearer token cannot contain")
        assert "XyZ9" not in failed.error and "qW8" not in failed.error
    assert proxy.seen == [], "nothing is sent"
