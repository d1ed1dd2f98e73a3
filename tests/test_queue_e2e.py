"""End to end on real brokers: a producer fills a queue faster than the pool's ready capacity drains it; the daemon
scales up on the queue's depth, the queue drains, and after the scale-down window the pool shrinks back. And a
broker that stops mid-run: the pool holds (no scale-in on missing data), then resumes when the broker returns.

The daemon runs on a fake clock with the simulated cloud; the queue is a real Redis list or RabbitMQ queue. Each
step: the producer adds `arrivals` messages, the consumer takes `per_unit` messages per ready capacity unit, the
daemon ticks, the clock moves 5 s.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.brokers import free_port, require_rabbitmq, require_redis, require_redis_server_binary
from tests.daemon_harness import Harness

POLICY = """
daemon: {{id: e2e, tick_seconds: 5}}
clouds:
  simulated:
    boot_seconds: 10
pools:
  - name: workers
    min_capacity: 1
    max_capacity: 20
    drain_seconds: 0
    targets: {{queue_per_unit: 10}}
    scaling: {{scale_down_window_seconds: 60, max_metric_age_seconds: 30}}
    metrics:
      - {source}
    candidates:
      - {{cloud: simulated, instance_type: sim.l4x1, market: on-demand, throughput: 1}}
"""


def ready_units(h: Harness) -> float:
    return sum(r.capacity_units for r in h.ready_records())


def drive(
    h: Harness, steps: int, produce: Callable[[int], None], consume: Callable[[int], None], arrivals: int
) -> list[tuple[float, float]]:
    """Run `steps` ticks of producer, consumer and daemon; returns (ready units, desired) after each tick."""
    trace = []
    for _ in range(steps):
        produce(arrivals)
        consume(int(ready_units(h) * 8))  # one ready unit serves 8 messages per 5 s step
        plan = h.daemon.tick()
        trace.append((ready_units(h), plan.decisions["workers"].desired))
        h.clock.advance(5)
    return trace


def assert_scaled_up_drained_and_shrank(h: Harness, depth: Callable[[], int], trace_up: list[tuple[float, float]],
                                        trace_down: list[tuple[float, float]]) -> None:  # fmt: skip
    peak = max(ready for ready, _ in trace_up)
    assert peak >= 6, f"the pool scaled up on the backlog: {trace_up}"
    assert depth() == 0, "the queue drained"
    assert trace_down[-1][0] <= 2, f"after the scale-down window the pool shrank back: {trace_down}"
    assert trace_down[-1][1] == 1


@pytest.fixture
def redis_key() -> Iterator[tuple[str, str]]:
    require_redis()
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    key = f"e2e-{uuid.uuid4().hex[:12]}"
    yield "redis://127.0.0.1:6379/0", key
    client.delete(key)
    client.close()


def test_redis_list_backlog_scales_up_drains_and_scales_back_down(
    tmp_path: Path, redis_key: tuple[str, str]
) -> None:
    import redis

    url, key = redis_key
    client = redis.Redis(host="127.0.0.1", port=6379)
    source = f"{{name: jobs, type: redis, mode: list, url: '{url}', key: {key}}}"
    h = Harness.start(POLICY.format(source=source), tmp_path)

    def produce(n: int) -> None:
        if n:
            client.rpush(key, *[b"job"] * n)

    def consume(n: int) -> None:
        if n:
            client.lpop(key, n)

    up = drive(h, 30, produce, consume, arrivals=40)  # 40 arrivals / 5 s needs 5 units at 8 per unit
    down = drive(h, 40, produce, consume, arrivals=0)
    assert_scaled_up_drained_and_shrank(h, lambda: int(client.llen(key)), up, down)
    client.close()


def test_rabbitmq_queue_backlog_scales_up_drains_and_scales_back_down(tmp_path: Path) -> None:
    require_rabbitmq()
    import pika

    queue = f"e2e-{uuid.uuid4().hex[:12]}"
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    channel.queue_declare(queue=queue, auto_delete=False)
    try:
        source = f"{{name: jobs, type: rabbitmq, via: amqp, queue: {queue}}}"
        h = Harness.start(POLICY.format(source=source), tmp_path)

        def produce(n: int) -> None:
            for _ in range(n):
                channel.basic_publish(exchange="", routing_key=queue, body=b"job")

        def consume(n: int) -> None:
            for _ in range(n):
                method, _, _ = channel.basic_get(queue=queue, auto_ack=True)
                if method is None:
                    return

        def depth() -> int:
            return int(channel.queue_declare(queue=queue, passive=True).method.message_count)

        up = drive(h, 30, produce, consume, arrivals=40)
        down = drive(h, 40, produce, consume, arrivals=0)
        assert_scaled_up_drained_and_shrank(h, depth, up, down)
    finally:
        channel.queue_delete(queue=queue)
        connection.close()


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    binary = require_redis_server_binary()  # skips, or fails under GPU_AUTOSCALER_REQUIRE_SERVICES=1
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the private redis-server did not start")


def test_broker_stopped_mid_run_holds_the_pool_then_scaling_resumes(tmp_path: Path) -> None:
    import redis

    port = free_port()
    server = start_redis(port, tmp_path)
    try:
        key = "jobs"
        client = redis.Redis(host="127.0.0.1", port=port)
        source = (
            f"{{name: jobs, type: redis, url: 'redis://127.0.0.1:{port}/0', key: {key}, timeout_seconds: 0.5}}"
        )
        h = Harness.start(POLICY.format(source=source), tmp_path)
        client.rpush(key, *[b"job"] * 80)  # 80 / 10 per unit: 8 units
        for _ in range(6):
            h.daemon.tick()
            h.clock.advance(5)
        assert ready_units(h) == 8

        server.terminate()
        server.wait(timeout=10)
        decisions = []
        for _ in range(20):  # 100 s without the broker: longer than the 60 s scale-down window
            plan = h.daemon.tick()
            decisions.append(plan.decisions["workers"])
            h.clock.advance(5)
        assert all(d.signal == "hold" for d in decisions), [d.reasons for d in decisions]
        assert all(d.desired == 8 for d in decisions), "no scale-in on missing data"
        assert ready_units(h) == 8
        assert "jobs" in decisions[-1].reasons[0] or any("jobs" in r for r in decisions[-1].reasons)

        server = start_redis(port, tmp_path)  # the broker returns, empty: scaling resumes, down to the minimum
        for _ in range(20):
            h.daemon.tick()
            h.clock.advance(5)
        last = h.store.decisions(pool="workers", limit=1)[0].decision
        assert last.signal != "hold" and last.desired == 1
        assert ready_units(h) <= 2
    finally:
        server.terminate()
        server.wait(timeout=10)
