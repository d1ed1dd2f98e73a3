"""`gpu-autoscaler run` as a real process: the newcomer's first minute, SIGHUP with a bad and a good file, the
reload endpoint, and SIGTERM. Talks only to 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "test-token-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    url: str
    log: Path

    def wait_until(self, what: str, check: object, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():  # type: ignore[operator]
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"daemon exited: {self.log.read_text()}"
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log.read_text()[-3000:]}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@contextlib.contextmanager
def start(tmp_path: Path, *args: str) -> Iterator[Daemon]:
    port = free_port()
    log = tmp_path / "daemon.log"
    env = {**os.environ, "GPU_AUTOSCALER_TOKEN": TOKEN}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoscaler.cli", "run", "--state-dir", str(tmp_path / "state"),
             "--admin", f"127.0.0.1:{port}", *args],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
    daemon = Daemon(proc, f"http://127.0.0.1:{port}", log)
    try:
        yield daemon
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and all((k, labels[k]) in ls for k in labels))


def test_default_run_scales_up_falls_back_blocks_and_explains_within_a_minute(tmp_path: Path) -> None:
    with start(tmp_path) as d:
        started = time.monotonic()

        def fallen_back() -> bool:
            m = d.metrics()
            return (
                value(m, "gpu_autoscaler_pool_ready_capacity", pool="demo-llm") > 0
                and value(m, "gpu_autoscaler_launches_total", instance_type="sim.a100x8", market="spot") > 0
                and value(m, "gpu_autoscaler_blocked_offerings", instance_type="sim.h100x8", market="spot") > 0
            )

        d.wait_until("ready capacity on the fallback offering and the first one blocked", fallen_back)
        first = value(d.metrics(), "gpu_autoscaler_pool_desired_capacity", pool="demo-llm")
        d.wait_until(
            "the burst to raise desired capacity",
            lambda: value(d.metrics(), "gpu_autoscaler_pool_desired_capacity", pool="demo-llm") > first,
        )
        assert time.monotonic() - started < 60
        status = subprocess.run(
            [sys.executable, "-m", "autoscaler.cli", "status", "--admin", d.url],
            capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "demo-llm" in status.stdout and "sim.h100x8" in status.stdout and "capacity" in status.stdout
        explain = subprocess.run(
            [sys.executable, "-m", "autoscaler.cli", "explain", "demo-llm", "--admin", d.url],
            capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert explain.returncode == 0, explain.stderr
        assert "queue" in explain.stdout and "sim.h100x8" in explain.stdout
        assert d.stop() == 0


GOOD = """\
daemon: {tick_seconds: 1}
pools:
  - name: web
    min_capacity: 2
    max_capacity: 8
    candidates:
      - {cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}
"""


def test_sighup_and_reload_endpoint_keep_the_last_good_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(GOOD)
    with start(tmp_path, "--policy", str(policy)) as d:
        d.wait_until("ready", lambda: httpx.get(f"{d.url}/readyz", timeout=5).status_code == 200)
        sha = httpx.get(f"{d.url}/v1/policy", timeout=5).json()["sha256"]

        policy.write_text(GOOD.replace("max_capacity: 8", "max_capacity: -8"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_until("the rejection in the log", lambda: "policy reload rejected" in d.log.read_text())
        assert f"{policy}:5:5: pools[0].max_capacity: Input should be greater than 0 (got -8)" in d.log.read_text()
        assert httpx.get(f"{d.url}/v1/policy", timeout=5).json()["sha256"] == sha

        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = httpx.post(f"{d.url}/v1/policy/reload", headers=auth, timeout=10)
        assert answer.status_code == 422
        assert "max_capacity" in answer.json()["error"]
        assert httpx.post(f"{d.url}/v1/policy/reload", timeout=10).status_code == 401

        policy.write_text(GOOD.replace("min_capacity: 2", "min_capacity: 3"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_until(
            "the good policy in force", lambda: httpx.get(f"{d.url}/v1/policy", timeout=5).json()["sha256"] != sha
        )
        d.wait_until(
            "the new minimum applied",
            lambda: value(d.metrics(), "gpu_autoscaler_pool_ready_capacity", pool="web") == 3,
        )
        assert d.stop() == 0
        assert "Traceback" not in d.log.read_text()


def test_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "autoscaler.cli", "run", "--state-dir", str(tmp_path), "--admin", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"could not listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


pytestmark = pytest.mark.timeout(120)
