"""The SQS metric source against moto's SQS server over real HTTP on 127.0.0.1, with test credentials in the
environment (moto accepts any). What moto cannot do (refuse credentials, answer garbage) is a small local HTTP
server answering the way SQS's JSON protocol does."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from autoscaler import config
from autoscaler.model import Market, Sample
from autoscaler.sources import build_sources, combine
from metrics_sources import sqs as sqs_source
from metrics_sources.sqs import SqsQueue
from tests.brokers import free_port, silent_server

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
SECRET_KEY = "sqs-secret-Wm4@kingfisher"  # the test secret access key: must never appear in an error
TIMEOUT = 0.5
BOUND = TIMEOUT + 1.5


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials from the environment, and nothing from this machine's AWS config or an instance role."""
    for var in (
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def sqs(endpoint: str) -> Any:
    return boto3.client("sqs", region_name="us-east-1", endpoint_url=endpoint)


@pytest.fixture
def queue(sqs: Any) -> Iterator[tuple[str, str]]:
    """(name, URL) of a fresh queue, deleted afterwards."""
    name = f"test-source-{uuid.uuid4().hex[:12]}"
    url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
    yield name, url
    sqs.delete_queue(QueueUrl=url)


def source(queue: str, **kw: Any) -> SqsQueue:
    return sqs_source.build(config.SqsSource(type="sqs", name="jobs", queue=queue, **kw))


def assert_value(sample: Sample, value: float) -> None:
    assert sample.error == ""
    assert sample.value == value
    assert isinstance(sample.value, float)
    assert sample.observed_at == NOW


def assert_error(sample: Sample, *fragments: str) -> None:
    assert sample.value is None
    assert sample.observed_at is None
    assert sample.error.startswith("sqs source 'jobs' ("), sample.error
    for fragment in fragments:
        assert fragment in sample.error, sample.error
    assert SECRET_KEY not in sample.error


def fill(sqs: Any, url: str) -> None:
    """5 visible, then 2 of them received (in flight), and 1 delayed: visible 3, in flight 2, delayed 1."""
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=300)
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=300)
    assert len(got["Messages"]) == 2


def test_counts_by_name_and_by_url(sqs: Any, queue: tuple[str, str], endpoint: str) -> None:
    name, url = queue
    assert_value(source(name, endpoint_url=endpoint).read(NOW), 0.0)
    fill(sqs, url)
    assert_value(source(name, endpoint_url=endpoint).read(NOW), 5.0)  # visible + in flight
    assert_value(source(url, endpoint_url=endpoint).read(NOW), 5.0)
    assert_value(source(url, endpoint_url=endpoint, include_in_flight=False).read(NOW), 3.0)
    assert_value(source(name, endpoint_url=endpoint, include_delayed=True).read(NOW), 6.0)
    only_visible = source(name, endpoint_url=endpoint, include_in_flight=False, include_delayed=False)
    assert_value(only_visible.read(NOW), 3.0)


def test_the_queue_url_is_looked_up_once(sqs: Any, queue: tuple[str, str], endpoint: str) -> None:
    name, url = queue
    src = source(name, endpoint_url=endpoint)
    assert_value(src.read(NOW), 0.0)
    calls: list[str] = []
    src._client.meta.events.register("before-call.sqs.*", lambda model, **kw: calls.append(model.name))
    sqs.send_message(QueueUrl=url, MessageBody="x")
    assert_value(src.read(NOW), 1.0)
    assert_value(src.read(NOW), 1.0)
    assert calls == ["GetQueueAttributes", "GetQueueAttributes"]
    by_url = source(url, endpoint_url=endpoint)
    by_url.read(NOW)
    by_url._client.meta.events.register("before-call.sqs.*", lambda model, **kw: calls.append(model.name))
    calls.clear()
    assert_value(by_url.read(NOW), 1.0)
    assert calls == ["GetQueueAttributes"]
    by_url.close()
    assert_value(by_url.read(NOW), 1.0)  # a new client after close()


def test_a_missing_queue_is_an_error_and_is_found_once_created(sqs: Any, endpoint: str) -> None:
    name = f"test-source-later-{uuid.uuid4().hex[:12]}"
    src = source(name, endpoint_url=endpoint)
    assert_error(src.read(NOW), f"queue {name!r} in us-east-1", "the queue does not exist")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    try:
        sqs.send_message(QueueUrl=url, MessageBody="x")
        assert_value(src.read(NOW), 1.0)
    finally:
        sqs.delete_queue(QueueUrl=url)
    assert_error(src.read(NOW), "the queue does not exist")  # deleted: the cached URL is forgotten


def test_no_credentials_or_an_unknown_profile(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = source("q", endpoint_url=endpoint, profile="no-such-profile").read(NOW)
    assert_error(unknown, "AWS profile 'no-such-profile' is not configured")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert_error(source("q", endpoint_url=endpoint).read(NOW), "no AWS credentials found")


def test_server_down_is_an_error_at_once() -> None:
    started = time.monotonic()
    sample = source("q", endpoint_url=f"http://127.0.0.1:{free_port()}", timeout_seconds=TIMEOUT).read(NOW)
    assert time.monotonic() - started < BOUND
    assert_error(sample, "cannot connect")


def test_a_server_that_never_answers_times_out() -> None:
    with silent_server() as port:
        started = time.monotonic()
        sample = source("q", endpoint_url=f"http://127.0.0.1:{port}", timeout_seconds=TIMEOUT).read(NOW)
        assert time.monotonic() - started < BOUND
    assert_error(sample, "no answer within 0.5 s")


@pytest.fixture
def fake_sqs() -> Iterator[dict[str, Any]]:
    """A local endpoint answering every call with answer["status"], answer["headers"], answer["body"]."""
    answer: dict[str, Any] = {"status": 200, "headers": {}, "body": b"{}"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body: bytes = answer["body"]
            self.send_response(answer["status"])
            for k, v in {"Content-Type": "application/x-amz-json-1.0", **answer["headers"]}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    answer["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield answer
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_refused_credentials_are_an_error_without_the_secret(fake_sqs: dict[str, Any]) -> None:
    fake_sqs["status"] = 400
    fake_sqs["body"] = json.dumps(
        {
            "__type": "com.amazon.coral.service#InvalidClientTokenId",
            "message": "The security token included in the request is invalid.",
        }
    ).encode()
    fake_sqs["headers"] = {"x-amzn-query-error": "InvalidClientTokenId;Sender"}
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"
    sample = source(url, endpoint_url=fake_sqs["url"]).read(NOW)
    assert_error(sample, "AWS refused the credentials or the permission: InvalidClientTokenId", "security token")
    # Should AWS ever echo the secret key, it is blanked.
    fake_sqs["body"] = json.dumps(
        {"__type": "com.amazon.coral.service#SignatureDoesNotMatch", "message": f"signed with {SECRET_KEY}?"}
    ).encode()
    fake_sqs["headers"] = {"x-amzn-query-error": "SignatureDoesNotMatch;Sender"}
    assert_error(source(url, endpoint_url=fake_sqs["url"]).read(NOW), "SignatureDoesNotMatch: signed with ***?")


def test_answers_that_are_not_sqs_are_errors(fake_sqs: dict[str, Any]) -> None:
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"
    fake_sqs["body"] = b"<html>a captive portal</html>"
    assert_error(source(url, endpoint_url=fake_sqs["url"]).read(NOW))
    fake_sqs["body"] = json.dumps({"Attributes": {"ApproximateNumberOfMessages": "many"}}).encode()
    assert_error(source(url, endpoint_url=fake_sqs["url"]).read(NOW), "ApproximateNumberOfMessages is 'many'")
    fake_sqs["body"] = json.dumps({"Attributes": {"ApproximateNumberOfMessages": "4"}}).encode()
    assert_error(
        source(url, endpoint_url=fake_sqs["url"]).read(NOW),
        "the answer has no ApproximateNumberOfMessagesNotVisible",
    )
    assert_value(source(url, endpoint_url=fake_sqs["url"], include_in_flight=False).read(NOW), 4.0)


def test_build_sources_loads_the_module_and_a_failure_holds_the_pool() -> None:
    pool = config.Pool(
        name="p",
        max_capacity=4,
        targets=config.Targets(queue_per_unit=10),
        metrics=[
            config.SqsSource(type="sqs", name="jobs", queue="q", endpoint_url=f"http://127.0.0.1:{free_port()}")
        ],
        candidates=[
            config.Candidate(cloud="simulated", instance_type="sim.l4x1", market=Market.ON_DEMAND, throughput=1)
        ],
    )
    (src,) = build_sources(pool, NOW)
    assert isinstance(src, SqsQueue)
    demand = combine(pool, [src.read(NOW)], NOW)
    assert demand.hold and "'jobs'" in demand.hold_reason and "cannot connect" in demand.hold_reason
