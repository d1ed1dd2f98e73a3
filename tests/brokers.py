"""The local Redis and RabbitMQ servers the broker-source tests use, and small TCP stand-ins for broken servers.

`require_redis()` / `require_rabbitmq()` end the test when the server is not reachable: a skip, or a failure with
the same reason when GPU_AUTOSCALER_REQUIRE_SERVICES=1 (CI sets it), so that a CI run can never pass by skipping
the broker half. The probes are cached: one per test session. The fixtures `redis_service` and
`rabbitmq_service` do the same for tests that ask for them; register them with
`pytest_plugins = ["tests.brokers"]` in a conftest, or import them into a test module.

Starting the servers on a machine where they are down:
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \\
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    rabbitmq-server -detached
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import NoReturn

import pytest

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
RABBITMQ_HOST = "127.0.0.1"
RABBITMQ_PORT = 5672
RABBITMQ_USER = "guest"
RABBITMQ_PASSWORD = "guest"  # the broker's default account, accepted from localhost only
RABBITMQ_URL = f"amqp://{RABBITMQ_USER}@{RABBITMQ_HOST}:{RABBITMQ_PORT}/%2F"
REQUIRE_SERVICES = "GPU_AUTOSCALER_REQUIRE_SERVICES"


def _end_test(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_SERVICES) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@functools.cache
def _probe_redis() -> str:
    """ "" when a PING answers, else why not."""
    try:
        import redis
    except ImportError as exc:
        return f"the redis package is not installed ({exc})"
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host=REDIS_HOST, port=REDIS_PORT, socket_timeout=3, socket_connect_timeout=3, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return ""


@functools.cache
def _probe_rabbitmq() -> str:
    """ "" when an AMQP connection as guest opens, else why not."""
    try:
        import pika  # type: ignore[import-untyped]
    except ImportError as exc:
        return f"the pika package is not installed ({exc})"
    params = pika.ConnectionParameters(
        RABBITMQ_HOST,
        RABBITMQ_PORT,
        credentials=pika.PlainCredentials(RABBITMQ_USER, RABBITMQ_PASSWORD),
        socket_timeout=3,
        stack_timeout=5,
        connection_attempts=1,
    )
    try:
        pika.BlockingConnection(params).close()
    except Exception as exc:  # pika's connection errors have no single base class
        return repr(exc)
    return ""


def require_redis() -> None:
    """End the test unless the Redis server at 127.0.0.1:6379 answers (see the module docstring)."""
    error = _probe_redis()
    if error:
        _end_test(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}: {error}")


def require_rabbitmq() -> None:
    """End the test unless RabbitMQ at 127.0.0.1:5672 accepts guest/guest over AMQP (see the module docstring)."""
    error = _probe_rabbitmq()
    if error:
        _end_test(f"RabbitMQ not reachable at {RABBITMQ_HOST}:{RABBITMQ_PORT}: {error}")


def require_redis_server_binary() -> str:
    """The path of redis-server, for tests that start a private server (TLS, a password); same skip/fail rule."""
    path = shutil.which("redis-server")
    if path is None:
        _end_test("redis-server is not on PATH (needed to start a private Redis server)")
    return path


@pytest.fixture
def redis_service() -> None:
    require_redis()


@pytest.fixture
def rabbitmq_service() -> None:
    require_rabbitmq()


# ---------------------------------------------------------------- stand-ins for broken servers


def free_port() -> int:
    """A loopback port nothing listens on (bound and released: nothing will be there when it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)  # accept() wakes up to see the stop flag: closing alone does not wake it
    return listener


def _accept(listener: socket.socket, stop: threading.Event) -> socket.socket | None:
    """The next connection, or None once `stop` is set or the listener is closed."""
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return None
        conn.settimeout(None)
        return conn
    return None


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word: every client read times out. Nobody calls
    accept(): the kernel completes the handshakes into the listen backlog, which is all a client sees."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@contextmanager
def garbage_server(
    answer: bytes = b"HTTP/1.1 200 OK\r\n\r\n<html>not what you expected</html>\r\n",
) -> Iterator[int]:
    """A port that answers every connection with `answer`, whatever was asked, and then hangs up."""
    listener = _listener()
    stop = threading.Event()

    def serve() -> None:
        while (conn := _accept(listener, stop)) is not None:
            with conn:
                try:
                    conn.settimeout(0.2)
                    with suppress(TimeoutError):
                        conn.recv(65536)
                    conn.sendall(answer)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


class FreezableProxy:
    """A TCP proxy to 127.0.0.1:`target_port` that can stop forwarding (`freeze`) while keeping connections
    open: a server that accepted the connection and then stopped answering."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = _listener()
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def cut(self) -> None:
        """Drop every connection made so far (as a restarting server or a NAT timeout would); keep listening."""
        sockets, self._sockets = self._sockets, []
        for s in sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop.set()
        self.frozen.clear()
        self._thread.join(timeout=2)
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while (client := _accept(self._listener, self._stop)) is not None:
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                with suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            while self.frozen.is_set() and not self._stop.is_set():
                self._stop.wait(0.02)
            try:
                dst.sendall(data)
            except OSError:
                return
