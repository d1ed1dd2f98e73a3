"""systemd's notify protocol (autoscaler.sdnotify and the runner): the test binds the datagram socket that systemd
would bind and reads what the daemon sends, both from a real `gpu-autoscaler run` process on the simulated cloud
(READY after the first good tick, WATCHDOG at the tick rate, STOPPING on SIGTERM) and from the runner in this
process (no READY while ticks fail). Talks only to local sockets and 127.0.0.1."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autoscaler.model import Launch
from autoscaler.runner import Runner
from autoscaler.sdnotify import Notifier, socket_address
from tests.daemon_harness import Harness
from tests.test_run_process import free_port


class Listener:
    """A bound AF_UNIX datagram socket, as systemd's manager has one, recording (monotonic time, message)."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = socket_address(address)
        assert bound is not None
        self.sock.bind(bound)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times_of(self, assignment: str) -> list[float]:
        return [t for t, m in list(self.messages) if assignment in m.split("\n")]

    def wait_for(self, assignment: str, timeout: float, log: Path | None = None) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.times_of(assignment):
                return found[0]
            time.sleep(0.02)
        text = log.read_text()[-3000:] if log is not None else ""
        raise AssertionError(f"no {assignment} within {timeout}s; got {self.messages}\n{text}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@contextlib.contextmanager
def listening(address: str) -> Iterator[Listener]:
    listener = Listener(address)
    try:
        yield listener
    finally:
        listener.close()


def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == b"\0abstract/name"
    assert socket_address("") is None
    assert socket_address("@") is None
    assert socket_address("relative/path") is None  # systemd never hands out such a value


def test_notifier_sends_to_path_and_abstract_sockets_and_is_silent_without_one() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # AF_UNIX paths are limited to 107 bytes
        with listening(f"{short}/notify") as path_listener:
            assert Notifier(path_listener.env_value).ready("first tick done")
            path_listener.wait_for("READY=1", timeout=5)
            assert path_listener.messages[0][1] == "READY=1\nSTATUS=first tick done"
        # The manager went away: the send fails quietly and says so.
        assert not Notifier(f"{short}/notify").watchdog()
    abstract = f"@gpu-autoscaler-test/{uuid.uuid4().hex}"
    with listening(abstract) as abstract_listener:
        notifier = Notifier(abstract)
        assert notifier.enabled
        assert notifier.status("two\nlines")  # a STATUS value cannot span lines: the protocol is line-based
        assert notifier.stopping()
        abstract_listener.wait_for("STOPPING=1", timeout=5)
        assert [m for _, m in abstract_listener.messages] == ["STATUS=two lines", "STOPPING=1"]
    silent = Notifier("")
    assert not silent.enabled and not silent.ready()
    assert Notifier("/x", watchdog_usec="30000000").watchdog_seconds == 30.0
    assert Notifier("/x", watchdog_usec="").watchdog_seconds is None


POLICY = """\
daemon: {tick_seconds: 1}
clouds:
  simulated: {boot_seconds: 1}
pools:
  - name: web
    min_capacity: 2
    max_capacity: 4
    candidates:
      - {cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}
"""


def test_run_process_sends_ready_after_first_good_tick_watchdog_each_tick_and_stopping(tmp_path: Path) -> None:
    """The whole protocol from `gpu-autoscaler run`, on an abstract socket (what systemd uses since v250 is a
    path; both forms must work). The admin token comes from $CREDENTIALS_DIRECTORY, as with LoadCredential=."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "admin-token").write_text("token-from-credential\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_AUTOSCALER_TOKEN", "WATCHDOG_USEC")}
    with listening(f"@gpu-autoscaler-test/{uuid.uuid4().hex}") as listener, log.open("w") as out:
        env.update(NOTIFY_SOCKET=listener.env_value, CREDENTIALS_DIRECTORY=str(credentials))
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoscaler.cli", "run", "--policy", str(policy),
             "--state-dir", str(tmp_path / "state"), "--admin", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            ready_at = listener.wait_for("READY=1", timeout=30, log=log)
            # READY means a tick has completed without error: the readiness probe agrees at once.
            answer = httpx.get(f"{url}/readyz", timeout=5)
            assert answer.status_code == 200, answer.text
            ready_message = next(m for t, m in listener.messages if t == ready_at)
            assert "STATUS=1 pool(s):" in ready_message
            assert len(listener.times_of("READY=1")) == 1
            # WATCHDOG at the tick rate (1 s): about three in three seconds, never a long gap.
            time.sleep(3.2)
            beats = [t for t in listener.times_of("WATCHDOG=1") if t >= ready_at]
            assert 2 <= len(beats) <= 5, listener.messages
            gaps = [b - a for a, b in itertools.pairwise(beats)]
            assert max(gaps) < 2.0, gaps
            assert len(listener.times_of("READY=1")) == 1  # READY once, not every tick
            # The token came from the credentials directory: a mutating call with it is accepted.
            auth = {"Authorization": "Bearer token-from-credential"}
            assert httpx.post(f"{url}/v1/pools/web/pause", headers=auth, timeout=5).status_code == 200
            assert httpx.post(f"{url}/v1/pools/web/pause", timeout=5).status_code == 401
            # ExecReload sends SIGHUP: the reload's outcome becomes the status line.
            proc.send_signal(signal.SIGHUP)
            listener.wait_for("STATUS=policy unchanged", timeout=10, log=log)
            assert not listener.times_of("STOPPING=1")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            stopping = listener.wait_for("STOPPING=1", timeout=5)
            assert stopping > ready_at
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert time.monotonic() - started < 30
    assert "Traceback" not in log.read_text()


class Flaky(Exception):
    pass


def test_runner_sends_no_ready_while_ticks_fail_and_pets_the_watchdog_anyway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick that fails is not a good tick: no READY (systemd keeps the unit `activating`), but WATCHDOG still
    goes out (the loop is alive); the first good tick sends READY, with the status in STATUS=."""
    failing = {"on": True}

    def crash(point: str, launch: Launch) -> None:
        if failing["on"] and point == "before_intent":
            raise Flaky("the store went away")

    harness = Harness.start(POLICY, tmp_path, crash_hook=crash)
    with tempfile.TemporaryDirectory(dir="/tmp") as short, listening(f"{short}/notify") as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", listener.env_value)
        runner = Runner(harness.daemon, "127.0.0.1", free_port(), None)  # the API is not started here
        for _ in range(2):
            runner._tick()
            harness.clock.advance(1)
        deadline = time.monotonic() + 5
        while len(listener.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [m.split("\n")[0] for _, m in listener.messages] == ["WATCHDOG=1", "WATCHDOG=1"]
        assert "STATUS=last tick failed: Flaky: the store went away" in listener.messages[0][1]
        failing["on"] = False
        runner._tick()
        listener.wait_for("READY=1", timeout=5)
        runner._tick()
        deadline = time.monotonic() + 5
        while len(listener.messages) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        firsts = [m.split("\n")[0] for _, m in listener.messages]
        assert firsts == ["WATCHDOG=1", "WATCHDOG=1", "READY=1", "WATCHDOG=1", "WATCHDOG=1"]
        assert "STATUS=1 pool(s): 0/2 capacity units ready" in listener.messages[2][1]
    harness.store.close()


@pytest.mark.parametrize("api_dies", [False, True])
def test_wait_reports_a_clean_stop_or_the_admin_api_dying(tmp_path: Path, api_dies: bool) -> None:
    """`run` exits 1 when the API died (so Restart=on-failure restarts it), 0 on a stop signal."""
    harness = Harness.start(POLICY, tmp_path)
    runner = Runner(harness.daemon, "127.0.0.1", free_port(), None)
    runner.start()
    if api_dies:
        runner.server.should_exit = True  # the API's thread ends on its own
    else:
        runner.stop.set()  # what SIGTERM does
    assert runner.wait() is not api_dies
    assert not runner._server_thread.is_alive()


pytestmark = pytest.mark.timeout(60)
