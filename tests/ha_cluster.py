"""A cluster of real daemon processes sharing one PostgreSQL database and the fake EC2 server (tests/aws_fake.py),
for the high-availability tests and benchmarks/failover.py. Everything talks to 127.0.0.1 only.

Each daemon may reach PostgreSQL through its own `Proxy`, a small loopback TCP relay the test can cut (the
daemon is then cut off from the database: new connections are refused and open ones reset) and restore.
Cloud-side truth comes from the fake: every RunInstances call and its ClientToken (the launch intent's token),
and the instances that exist.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from tests.aws_fake import FakeEC2

REPO = Path(__file__).resolve().parents[1]
TOKEN = "ha-test-token"
POOL = "llm"
INSTANCE_TYPE = "g5.xlarge"
ZONE = "us-east-1a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def policy_text(fake: FakeEC2, database_url: str, *, lease: float, renew: float, tick: float = 1.0) -> str:
    return f"""
daemon:
  id: ha-test
  database_url: "{database_url}"
  tick_seconds: {tick}
  ha: {{lease_seconds: {lease}, renew_seconds: {renew}}}
clouds:
  aws:
    regions: {{us-east-1: [{ZONE}]}}
    endpoint_url: {fake.endpoint_url}
pools:
  - name: {POOL}
    min_capacity: 2
    max_capacity: 64
    launch_templates:
      aws: {{image: {fake.ami("us-east-1")}}}
    candidates:
      - {{cloud: aws, instance_type: {INSTANCE_TYPE}, market: on-demand, zones: [{ZONE}], throughput: 1}}
"""


class Proxy:
    """A loopback TCP relay to `target`; cut() refuses new connections and resets the open ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                # shutdown first: close() alone does not end a socket another thread is blocked in recv() on,
                # and the daemon would wait for an answer forever. Then linger 0: a reset, as a dropped path looks
                # once the daemon's TCP timeouts fire.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[str]
    url: str
    state: Path
    log: Path
    proxy: Proxy | None = None

    def health(self) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = httpx.get(f"{self.url}/healthz", timeout=2).json()
            return answer
        except (httpx.HTTPError, ValueError):
            return {}

    @property
    def role(self) -> str | None:
        return self.health().get("role") if self.alive and not self.stopped else None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP): /proc/<pid>/stat's state is T."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    fake: FakeEC2
    database_url: str  # postgresql+psycopg://...
    root: Path
    lease: float = 2.0
    renew: float = 0.5
    nodes: list[Node] = field(default_factory=list)

    def start(self, name: str, *, proxied: bool = False) -> Node:
        url = make_url(self.database_url)
        proxy = Proxy((url.host or "127.0.0.1", url.port or 5432)) if proxied else None
        db = url.set(port=proxy.port) if proxy else url
        state = self.root / name
        state.mkdir(parents=True, exist_ok=True)
        policy = state / "policy.yaml"
        policy.write_text(
            policy_text(self.fake, db.render_as_string(hide_password=False), lease=self.lease, renew=self.renew)
        )
        port = free_port()
        log = state / f"daemon-{len(self.nodes)}.log"  # a restarted node keeps its predecessor's log
        env = {
            **os.environ,
            "GPU_AUTOSCALER_TOKEN": TOKEN,
            "HA_TEST_STATE_DIR": str(state),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.ha_daemon", "run", "--policy", str(policy), "--state-dir", str(state),
                 "--admin", f"127.0.0.1:{port}"],
                stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
            )  # fmt: skip
        node = Node(name, proc, f"http://127.0.0.1:{port}", state, log, proxy)
        self.nodes.append(node)
        return node

    def leaders(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "leader"]

    def wait(self, what: str, check: Callable[[], object], timeout: float = 30.0) -> float:
        """Poll `check` every 50 ms; returns the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if check():
                return time.monotonic() - started
            time.sleep(0.05)
        for n in self.nodes:  # every thread's stack into each live daemon's log (tests/ha_daemon.py)
            if n.alive and not n.stopped:
                n.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        logs = "\n".join(f"--- {n.name} ({n.log}):\n{n.text()[-2500:]}" for n in self.nodes)
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{logs}")

    def one_leader(self, timeout: float = 30.0) -> Node:
        found: list[Node] = []

        def check() -> bool:
            found[:] = self.leaders()
            return len(found) == 1

        self.wait("exactly one leader", check, timeout)
        return found[0]

    # ---- cloud-side truth (the fake EC2 server)

    def launch_tokens(self) -> list[str]:
        """The ClientToken of every RunInstances call that reached the cloud, in order (retries included)."""
        return [c.params.get("ClientToken", "") for c in self.fake.log if c.action == "RunInstances"]

    def instances(self) -> list[dict[str, Any]]:
        """Every instance the cloud made for us, ended ones included."""
        pages = (
            self.fake.client("us-east-1")
            .get_paginator("describe_instances")
            .paginate(Filters=[{"Name": "tag:gpu-autoscaler-daemon", "Values": ["ha-test"]}])
        )
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def running(self) -> int:
        return sum(1 for i in self.instances() if i["State"]["Name"] in ("pending", "running"))

    def set_capacity(self, store: Any, units: float) -> None:
        """Demand, as an operator override written to the shared database (the leader reads it every tick)."""
        from datetime import UTC, datetime, timedelta

        from autoscaler.model import PoolControl

        until = datetime.now(UTC) + timedelta(hours=1)
        store.set_control(POOL, PoolControl(override_capacity=units, override_until=until))

    def stop_all(self) -> None:
        for n in self.nodes:
            if n.alive:
                if n.stopped:
                    n.proc.send_signal(signal.SIGCONT)
                n.proc.kill()
                n.proc.wait(timeout=10)
            if n.proxy is not None:
                n.proxy.close()


@contextlib.contextmanager
def cluster(fake: FakeEC2, database_url: str, root: Path, **kw: Any) -> Iterator[Cluster]:
    c = Cluster(fake, database_url, root, **kw)
    try:
        yield c
    finally:
        c.stop_all()
