"""The RabbitMQ metric source. Over AMQP against the real broker on 127.0.0.1:5672 (guest/guest); over the
management HTTP API against a local fake that answers the API's real shape, because the management plugin is not
enabled on the test machine and enabling it would change a shared broker for good (and its queue statistics lag
by up to 5 s, which a test would have to wait out)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika  # type: ignore[import-untyped]
import pytest

from autoscaler import config
from autoscaler.errors import ConfigError
from autoscaler.model import Market, Sample
from autoscaler.sources import build_sources, combine
from metrics_sources import rabbitmq as rabbitmq_source
from metrics_sources.rabbitmq import RabbitMQQueue
from tests.brokers import (
    RABBITMQ_PORT,
    FreezableProxy,
    free_port,
    garbage_server,
    require_rabbitmq,
    silent_server,
)

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
WRONG = "wrong-pw-Rb7%albatross"
MGMT_PASSWORD = "mgmt-pw-Qq2&heron"
SECRETS = (WRONG, MGMT_PASSWORD)
TIMEOUT = 0.5
BOUND = TIMEOUT + 1.5


def source(queue: str, **kw: Any) -> RabbitMQQueue:
    cfg = config.RabbitMQSource(type="rabbitmq", name="work", queue=queue, **kw)
    return rabbitmq_source.build(cfg)


def assert_value(sample: Sample, value: float) -> None:
    assert sample.error == ""
    assert sample.value == value
    assert isinstance(sample.value, float)
    assert sample.observed_at == NOW


def assert_error(sample: Sample, *fragments: str) -> None:
    assert sample.value is None
    assert sample.observed_at is None
    assert sample.error.startswith("rabbitmq source 'work' ("), sample.error
    for fragment in fragments:
        assert fragment in sample.error, sample.error
    for secret in SECRETS:
        assert secret not in sample.error


# ---------------------------------------------------------------- AMQP, the real broker


@pytest.fixture
def channel() -> Iterator[Any]:
    """A channel to the broker with publisher confirms, so that a published message is in the queue (and in its
    counts) when basic_publish returns."""
    require_rabbitmq()
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", RABBITMQ_PORT))
    ch = connection.channel()
    ch.confirm_delivery()
    yield ch
    connection.close()


@pytest.fixture
def queue(channel: Any) -> Iterator[str]:
    name = f"test-source-{uuid.uuid4().hex[:12]}"
    channel.queue_declare(name, auto_delete=False)
    yield name
    channel.queue_delete(name)


def publish(channel: Any, queue: str, n: int) -> None:
    for i in range(n):
        channel.basic_publish("", queue, f"m{i}".encode())


def test_ready_count_and_consumers_over_amqp(channel: Any, queue: str) -> None:
    src = source(queue)
    assert_value(src.read(NOW), 0.0)
    assert src.consumers == 0
    publish(channel, queue, 3)
    assert_value(src.read(NOW), 3.0)

    # A consumer takes one message and does not acknowledge it: AMQP counts it out of "ready".
    consumer = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", RABBITMQ_PORT))
    try:
        cch = consumer.channel()
        cch.basic_qos(prefetch_count=1)
        got: list[bytes] = []
        cch.basic_consume(queue, lambda ch, method, props, body: got.append(body), auto_ack=False)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            consumer.process_data_events(0.05)
        assert got
        assert_value(src.read(NOW), 2.0)
        assert src.consumers == 1
    finally:
        consumer.close()


def test_the_connection_is_kept_and_replaced_when_lost(channel: Any, queue: str) -> None:
    publish(channel, queue, 2)
    proxy = FreezableProxy(RABBITMQ_PORT)
    try:
        src = source(queue, url=f"amqp://guest@127.0.0.1:{proxy.port}/%2F")
        assert_value(src.read(NOW), 2.0)
        connection = src._connection
        assert_value(src.read(NOW), 2.0)
        assert src._connection is connection  # kept across reads

        proxy.cut()  # the broker restarts, or a NAT forgets the connection
        time.sleep(0.05)
        assert_value(src.read(NOW), 2.0)
        assert src._connection is not connection
    finally:
        src.close()
        proxy.close()


def test_a_broker_that_stops_answering_is_an_error_within_the_timeout(channel: Any, queue: str) -> None:
    publish(channel, queue, 1)
    proxy = FreezableProxy(RABBITMQ_PORT)
    try:
        src = source(queue, url=f"amqp://guest@127.0.0.1:{proxy.port}/%2F", timeout_seconds=TIMEOUT)
        assert_value(src.read(NOW), 1.0)
        stuck = src._connection
        proxy.freeze()
        started = time.monotonic()
        assert_error(src.read(NOW), "no answer within 0.5 s")
        assert time.monotonic() - started < BOUND
        assert stuck.is_closed  # dropped, its socket closed: not left for the garbage collector
        proxy.thaw()
        assert_value(src.read(NOW), 1.0)  # a new connection
    finally:
        src.close()
        proxy.close()


def test_a_missing_queue_is_an_error_naming_it(channel: Any) -> None:
    name = f"test-source-missing-{uuid.uuid4().hex[:12]}"
    src = source(name)
    assert_error(src.read(NOW), f"queue {name!r} does not exist in vhost '/'")
    connection = src._connection
    assert_error(src.read(NOW), "does not exist")  # a new channel on the same connection
    channel.queue_declare(name)
    try:
        publish(channel, name, 1)
        assert_value(src.read(NOW), 1.0)
        assert src._connection is connection
    finally:
        channel.queue_delete(name)
        src.close()


def test_a_wrong_password_is_an_error_without_it(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_RABBITMQ_PW", WRONG)
    sample = source(queue, password=config.Secret(env="TEST_RABBITMQ_PW")).read(NOW)
    assert_error(sample, "authentication failed for user 'guest'")


def test_the_password_from_an_environment_variable_or_a_file(
    queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_RABBITMQ_PW", "guest")
    assert_value(source(queue, password=config.Secret(env="TEST_RABBITMQ_PW")).read(NOW), 0.0)
    (tmp_path / "pw").write_text("guest\n")
    assert_value(source(queue, password=config.Secret(file=tmp_path / "pw")).read(NOW), 0.0)
    monkeypatch.delenv("TEST_RABBITMQ_PW_UNSET", raising=False)
    unset = source(queue, password=config.Secret(env="TEST_RABBITMQ_PW_UNSET")).read(NOW)
    assert_error(unset, "environment variable TEST_RABBITMQ_PW_UNSET (the RabbitMQ password) is not set")
    unreadable = source(queue, password=config.Secret(file=tmp_path / "nope")).read(NOW)
    assert_error(unreadable, f"from file {tmp_path / 'nope'}: No such file or directory")


def test_an_unknown_vhost_is_an_error(queue: str) -> None:
    assert_error(source(queue, url="amqp://127.0.0.1/no-such-vhost").read(NOW), "vhost 'no-such-vhost'", "refused")


def test_url_and_fields_that_disagree_are_refused_when_built() -> None:
    with pytest.raises(ConfigError, match="url names user 'alice' but username is 'bob'"):
        source("q", url="amqp://alice@127.0.0.1/%2F", username="bob")
    with pytest.raises(ConfigError, match="url must be amqp://HOST"):
        source("q", url="http://127.0.0.1:5672/")
    with pytest.raises(ConfigError, match="url names vhost 'a' but vhost is 'b'"):
        source("q", url="amqp://127.0.0.1/a", vhost="b")
    # Without a clash: the URL's user and vhost when the fields are left alone, the fields when it has none.
    assert (
        source("q", url="amqp://alice@127.0.0.1/a").username,
        source("q", url="amqp://alice@127.0.0.1/a").vhost,
    ) == (
        "alice",
        "a",
    )
    fields = source("q", url="amqp://127.0.0.1", username="bob", vhost="b")
    assert (fields.username, fields.vhost) == ("bob", "b")


def test_server_down_is_an_error_at_once() -> None:
    started = time.monotonic()
    sample = source("q", url=f"amqp://127.0.0.1:{free_port()}/", timeout_seconds=TIMEOUT).read(NOW)
    assert time.monotonic() - started < BOUND
    assert_error(sample, "cannot connect", "Connection refused")


def test_a_server_that_never_answers_times_out() -> None:
    with silent_server() as port:
        started = time.monotonic()
        sample = source("q", url=f"amqp://127.0.0.1:{port}/", timeout_seconds=TIMEOUT).read(NOW)
        assert time.monotonic() - started < BOUND
    assert_error(sample, "cannot connect within 0.5 s")


def test_a_server_answering_garbage_is_an_error() -> None:
    with garbage_server() as port:
        sample = source("q", url=f"amqp://127.0.0.1:{port}/", timeout_seconds=TIMEOUT).read(NOW)
    assert_error(sample, "cannot connect")


def test_a_read_still_running_is_not_joined() -> None:
    src = source("q")
    with src._busy:  # as if the runner had given up on a read that is still blocked
        assert_error(src.read(NOW), "the previous read is still running")


def test_build_sources_loads_the_module_and_a_failure_holds_the_pool() -> None:
    pool = config.Pool(
        name="p",
        max_capacity=4,
        targets=config.Targets(queue_per_unit=10),
        metrics=[
            config.RabbitMQSource(type="rabbitmq", name="work", queue="q", url=f"amqp://127.0.0.1:{free_port()}")
        ],
        candidates=[
            config.Candidate(cloud="simulated", instance_type="sim.l4x1", market=Market.ON_DEMAND, throughput=1)
        ],
    )
    (src,) = build_sources(pool, NOW)
    assert isinstance(src, RabbitMQQueue)
    demand = combine(pool, [src.read(NOW)], NOW)
    assert demand.hold and "'work'" in demand.hold_reason and "cannot connect" in demand.hold_reason


# ---------------------------------------------------------------- the management API, a local fake


@dataclass
class FakeManagement:
    """GET /api/queues/{vhost}/{name} as the management plugin answers it (fields trimmed to the ones that
    matter plus a few neighbours; the 401 and 404 bodies are the plugin's)."""

    users: dict[str, str] = field(default_factory=lambda: {"guest": "guest"})
    queues: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    raw: bytes | None = None  # answer this instead, with status 200
    seen: list[tuple[str, str]] = field(default_factory=list)  # (raw path, user:password)
    url: str = ""

    def queue(self, vhost: str, name: str, ready: int, unacked: int, consumers: int) -> None:
        self.queues[(vhost, name)] = {
            "name": name,
            "vhost": vhost,
            "durable": True,
            "state": "running",
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
            "messages_details": {"rate": 0.0},
            "consumers": consumers,
            "consumer_utilisation": None,
        }


@pytest.fixture
def mgmt() -> Iterator[FakeManagement]:
    from urllib.parse import unquote

    fake = FakeManagement()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            auth = self.headers.get("Authorization", "")
            creds = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
            fake.seen.append((self.path, creds))
            user, _, password = creds.partition(":")
            if fake.users.get(user) != password or not user:
                return self._send(401, {"error": "not_authorized", "reason": "Login failed"})
            if fake.raw is not None:
                return self._send_bytes(200, fake.raw)
            parts = self.path.split("/")
            if len(parts) != 5 or parts[1:3] != ["api", "queues"]:
                return self._send(404, {"error": "Object Not Found", "reason": "Not Found"})
            found = fake.queues.get((unquote(parts[3]), unquote(parts[4])))
            if found is None:
                return self._send(404, {"error": "Object Not Found", "reason": "Not Found"})
            return self._send(200, found)

        def _send(self, status: int, obj: Any) -> None:
            self._send_bytes(status, json.dumps(obj).encode())

        def _send_bytes(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def mgmt_source(fake: FakeManagement, queue: str, **kw: Any) -> RabbitMQQueue:
    return source(queue, via="management", management_url=fake.url + "/", **kw)


def test_management_ready_plus_unacked_and_consumers(mgmt: FakeManagement) -> None:
    mgmt.queue("/", "jobs", ready=7, unacked=3, consumers=2)
    src = mgmt_source(mgmt, "jobs")
    assert_value(src.read(NOW), 10.0)
    assert src.consumers == 2
    assert mgmt.seen[-1] == ("/api/queues/%2F/jobs", "guest:guest")  # the default vhost, encoded
    assert_value(mgmt_source(mgmt, "jobs", include_unacked=False).read(NOW), 7.0)


def test_management_names_are_encoded_and_the_password_is_a_secret(
    mgmt: FakeManagement, monkeypatch: pytest.MonkeyPatch
) -> None:
    mgmt.users["watcher"] = MGMT_PASSWORD
    mgmt.queue("prod/eu", "jobs #1", ready=4, unacked=0, consumers=0)
    monkeypatch.setenv("TEST_RABBITMQ_PW", MGMT_PASSWORD)
    src = mgmt_source(
        mgmt, "jobs #1", vhost="prod/eu", username="watcher", password=config.Secret(env="TEST_RABBITMQ_PW")
    )
    assert_value(src.read(NOW), 4.0)
    assert mgmt.seen[-1] == ("/api/queues/prod%2Feu/jobs%20%231", f"watcher:{MGMT_PASSWORD}")


def test_management_errors(mgmt: FakeManagement, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_error(mgmt_source(mgmt, "nope").read(NOW), "queue 'nope' does not exist in vhost '/' (HTTP 404)")
    monkeypatch.setenv("TEST_RABBITMQ_PW", WRONG)
    wrong = mgmt_source(mgmt, "nope", password=config.Secret(env="TEST_RABBITMQ_PW")).read(NOW)
    assert_error(wrong, "authentication failed for user 'guest' (HTTP 401)")

    mgmt.queues[("/", "new")] = {"name": "new", "vhost": "/", "consumers": 0}  # declared, no statistics yet
    assert_error(mgmt_source(mgmt, "new").read(NOW), "the answer has no messages_ready")
    mgmt.raw = b"<html>a login page</html>"
    assert_error(mgmt_source(mgmt, "new").read(NOW), "not JSON")
    mgmt.raw = b'{"messages_ready": "many", "messages_unacknowledged": 0, "consumers": 1}'
    assert_error(mgmt_source(mgmt, "new").read(NOW), "messages_ready is 'many', not a count")


def test_management_server_down_or_silent() -> None:
    started = time.monotonic()
    down = source("q", via="management", management_url=f"http://127.0.0.1:{free_port()}", timeout_seconds=TIMEOUT)
    assert_error(down.read(NOW), "request failed")
    with silent_server() as port:
        silent = source("q", via="management", management_url=f"http://127.0.0.1:{port}", timeout_seconds=TIMEOUT)
        assert_error(silent.read(NOW), "timed out after 0.5 s")
    assert time.monotonic() - started < 2 * BOUND
