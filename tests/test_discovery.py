"""Service discovery: ready endpoints in the API, the file_sd and nginx files the daemon writes, the reload
command, and real nginx (Debian's package) routing to two local backends standing in for instances.

The simulated cloud gives its instances loopback addresses (sim-000001 -> 127.0.0.2, ...), so a test server bound
to such an address on the pool's port *is* that instance as far as nginx is concerned.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from autoscaler import discovery
from autoscaler.api.app import create_app
from autoscaler.lifecycle import InstanceState
from autoscaler.policyfile import PolicyError, parse_policy
from autoscaler.store import Store
from autoscaler.store.migrate import downgrade, upgrade
from tests.api_support import TOKEN
from tests.daemon_harness import Harness


def _unavailable(reason: str) -> None:
    if os.environ.get("GPU_AUTOSCALER_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        _unavailable("nginx is not installed (Debian: apt-get install nginx-light)")
    assert found is not None
    return found


class Stats:
    """A tiny JSON stats endpoint for the pool's http metric source; the test sets the queue depth."""

    def __init__(self, depth: float) -> None:
        self.depth = depth
        stats = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"depth": stats.depth}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stats"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stats() -> Iterator[Stats]:
    s = Stats(80.0)
    yield s
    s.close()


def policy_text(stats_url: str, discovery_yaml: str = "{}", scale_down_window: float = 0) -> str:
    return f"""
daemon: {{id: disco, tick_seconds: 5}}
clouds:
  simulated:
    boot_seconds: 10
pools:
  - name: web
    max_capacity: 64
    metrics:
      - {{name: q, type: http, kind: queue, url: "{stats_url}", field: depth, timeout_seconds: 2}}
    targets: {{queue_per_unit: 5}}
    scaling: {{scale_down_window_seconds: {scale_down_window}, panic_window_seconds: 0}}
    drain_seconds: 30
    candidates:
      - {{cloud: simulated, instance_type: sim.a100x8, market: spot, throughput: 8}}
    discovery: {discovery_yaml}
"""


def serving(h: Harness) -> list[str]:
    return sorted(r.address or "?" for r in h.ready_records())


# ------------------------------------------------------------------ the API and the records


def test_ready_instances_are_endpoints_with_their_provider_address_and_a_draining_one_leaves(
    stats: Stats, tmp_path: Path
) -> None:
    h = Harness.start(policy_text(stats.url, "{port: 8081, metrics_port: 9500}"), tmp_path)
    client = TestClient(create_app(h.daemon, TOKEN))
    h.run(ticks=1)
    assert client.get("/v1/endpoints").json() == [], "booting instances are not endpoints yet"
    h.run(ticks=3)  # booted: 80 / 5 = 16 units = two 8-unit nodes
    listed = {i.cloud_id: i.address for i in h.cloud.list_instances()}
    eps = client.get("/v1/endpoints").json()
    assert len(eps) == 2
    for ep in eps:
        assert ep["address"] == listed[ep["cloud_id"]] and ep["address"].startswith("127.0.0.")
        assert (ep["pool"], ep["port"], ep["metrics_port"], ep["cloud"], ep["market"]) == (
            "web",
            8081,
            9500,
            "simulated",
            "spot",
        )
        assert ep["zone"] and ep["region"] and ep["instance_type"] == "sim.a100x8" and ep["capacity_units"] == 8
    assert client.get("/v1/pools/web/endpoints").json() == eps
    assert client.get("/v1/pools/nope/endpoints").status_code == 404

    stats.depth = 40.0  # half the demand: one node drains
    h.run(ticks=1)
    draining = [r for r in h.live_records() if r.state == InstanceState.DRAINING]
    assert len(draining) == 1
    eps = client.get("/v1/endpoints").json()
    assert [e["token"] for e in eps] == [r.token for r in h.ready_records()]
    assert draining[0].token not in {e["token"] for e in eps}, "a draining instance is no endpoint"


def test_addresses_survive_a_restart_and_an_address_learnt_later_is_recorded(stats: Stats, tmp_path: Path) -> None:
    h = Harness.start(policy_text(stats.url), tmp_path)
    h.run(ticks=4)
    before = serving(h)
    assert len(before) == 2 and "?" not in before
    h.restart()
    assert serving(h) == before, "the address is in the database"
    # A record whose address is unknown (an older database, a provider that learns it late) gets it from the
    # next listing.
    token = h.ready_records()[0].token
    h.store.set_addresses({token: None})
    assert h.store.get_instance(token).address is None  # type: ignore[union-attr]
    h.run(ticks=1)
    assert serving(h) == before


def test_the_address_column_migrates_up_and_down_keeping_the_rows(database_url: str) -> None:
    with Store.open(database_url) as store:
        downgrade(store.engine, "0001")
        assert "address" not in {c["name"] for c in inspect(store.engine).get_columns("instances")}
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO instances (token, pool, cloud, region, zone, instance_type, market, state, "
                    "capacity_units, gpus, price_usd_per_hour, created_at, state_since, cloud_id, reason) VALUES "
                    "('t1', 'web', 'simulated', 'r', 'z', 'x', 'spot', 'ready', 8, 8, 1.5, "
                    "'2025-01-01 00:00:00+00:00', '2025-01-01 00:00:00+00:00', 'sim-1', 'old row')"
                )
            )
            conn.execute(
                text(
                    'INSERT INTO instance_history (token, frm, "to", at, reason, edge) VALUES '
                    "('t1', NULL, 'ready', '2025-01-01 00:00:00+00:00', 'made', 'created')"
                )
            )
        upgrade(store.engine)
        record = store.get_instance("t1")
        assert record is not None and record.address is None and record.reason == "old row"
        assert len(store.history("t1")) == 1, "the history row survived (no table rebuild cascading to it)"
        assert store.set_addresses({"t1": "10.0.0.7", "unknown": "10.0.0.8"}) == 1
        assert store.set_addresses({"t1": "10.0.0.7"}) == 0
        assert store.get_instance("t1").address == "10.0.0.7"  # type: ignore[union-attr]


def test_two_pools_may_not_write_the_same_file() -> None:
    text_ = """
pools:
  - {name: a, max_capacity: 1, candidates: [{cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}],
     discovery: {nginx_upstream_path: /tmp/up.conf}}
  - {name: b, max_capacity: 1, candidates: [{cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}],
     discovery: {file_sd_path: /tmp/up.conf}}
"""
    with pytest.raises(PolicyError, match="already written by pool 'a'"):
        parse_policy(text_, "p.yaml")


# ------------------------------------------------------------------ files and the reload command


def test_files_are_written_atomically_only_when_they_change_and_reload_runs_once_per_change(
    stats: Stats, tmp_path: Path
) -> None:
    out = tmp_path / "sd"
    marker = tmp_path / "reloads"
    script = tmp_path / "reload.sh"
    script.write_text(f"#!/bin/sh\necho reload >> {marker}\n")
    script.chmod(0o755)
    disco = (
        f"{{file_sd_path: {out}/web.json, nginx_upstream_path: {out}/web.conf, reload_command: [{script}], "
        "file_sd_labels: {env: test}, nginx_server_options: max_fails=2}"
    )
    h = Harness.start(policy_text(stats.url, disco), tmp_path)
    h.run(ticks=1)
    conf = (out / "web.conf").read_text()
    assert "server 127.0.0.1:9 down;" in conf, "no ready instance yet: a valid upstream that sends nowhere"
    assert json.loads((out / "web.json").read_text()) == []
    assert marker.read_text().count("reload") == 1
    h.run(ticks=3)
    groups = json.loads((out / "web.json").read_text())
    addresses = serving(h)
    assert sorted(g["targets"][0] for g in groups) == [f"{a}:9400" for a in addresses]
    labels = groups[0]["labels"]
    assert labels["pool"] == "web" and labels["env"] == "test" and labels["market"] == "spot"
    assert labels["capacity_units"] == "8" and labels["cloud"] == "simulated" and labels["zone"]
    conf = (out / "web.conf").read_text()
    assert "upstream gpu_autoscaler_web {" in conf
    for a in addresses:
        assert f"server {a}:8000 weight=8 max_fails=2;" in conf
    reloads = marker.read_text().count("reload")
    assert reloads == 2, "one reload for the first file, one when the instances became ready"
    inode = (out / "web.conf").stat().st_ino
    h.run(ticks=3)  # nothing changed: no rewrite, no reload
    assert (out / "web.conf").stat().st_ino == inode
    assert marker.read_text().count("reload") == reloads
    assert sorted(p.name for p in out.iterdir()) == ["web.conf", "web.json"], "no temporary file left"
    assert oct((out / "web.conf").stat().st_mode & 0o777) == "0o644"


def test_a_failing_or_hanging_reload_is_bounded_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = parse_policy(
        f"""
pools:
  - name: web
    max_capacity: 4
    candidates: [{{cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}}]
    discovery:
      nginx_upstream_path: {tmp_path}/web.conf
      reload_command: [sleep, "5"]
      reload_timeout_seconds: 0.3
""",
        "p.yaml",
    )
    caplog.set_level(logging.INFO, logger="autoscaler.discovery")
    writer = discovery.DiscoveryWriter()
    started = time.monotonic()
    writer.publish(loaded.policy, [])
    assert time.monotonic() - started < 3, "the reload command was killed at its timeout"
    assert "timed out after 0.3s" in writer.last_errors["web"]
    assert writer.reloads == 0
    assert any("reload command 'sleep 5' failed" in r.getMessage() for r in caplog.records)

    # Retried after every tick although the file did not change, logged once per distinct failure, until it works.
    calls: list[tuple[str, ...]] = []

    def runner(argv: object, timeout: float) -> tuple[bool, str]:
        calls.append(tuple(argv))  # type: ignore[arg-type]
        return (len(calls) > 2, "" if len(calls) > 2 else "exit status 1: nginx: [emerg] bad config")

    writer.runner = runner
    caplog.clear()
    writer.publish(loaded.policy, [])
    writer.publish(loaded.policy, [])
    assert "exit status 1" in writer.last_errors["web"]
    assert len([r for r in caplog.records if "bad config" in r.getMessage()]) == 1
    writer.publish(loaded.policy, [])
    assert calls == [("sleep", "5")] * 3 and writer.reloads == 1 and writer.last_errors == {}
    assert any("works again" in r.getMessage() for r in caplog.records)
    writer.publish(loaded.policy, [])
    assert len(calls) == 3, "nothing changed and the last reload worked: no reload"
    ok, why = discovery.run_command(["/nonexistent/nginx"], 1.0)
    assert not ok and "No such file" in why


def test_an_unwritable_path_is_logged_and_the_tick_goes_on(stats: Stats, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    h = Harness.start(policy_text(stats.url, f"{{nginx_upstream_path: {blocker}/sub/web.conf}}"), tmp_path)
    h.run(ticks=4)
    assert len(h.ready_records()) == 2
    assert "writing" in h.daemon.discovery.last_errors["web"]


def test_dry_run_writes_no_file(stats: Stats, tmp_path: Path) -> None:
    h = Harness.start(
        policy_text(stats.url, f"{{nginx_upstream_path: {tmp_path}/web.conf}}"), tmp_path, dry_run=True
    )
    h.run(ticks=2)
    assert not (tmp_path / "web.conf").exists()


# ------------------------------------------------------------------ real nginx


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Backend:
    """A tiny HTTP server on one instance's address that answers with that address."""

    def __init__(self, address: str, port: int) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = address.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, port), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _nginx_conf(prefix: Path, listen: int, include: Path) -> Path:
    user = "user root root;\n" if os.geteuid() == 0 else ""  # as root, workers would run as nobody otherwise
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    include {include};
    server {{
        listen 127.0.0.1:{listen};
        location / {{ proxy_pass http://gpu_autoscaler_web; proxy_connect_timeout 2s; }}
    }}
}}
"""
    )
    return conf


def test_rendered_upstreams_pass_nginx_config_test(tmp_path: Path) -> None:
    nginx = _nginx()
    loaded = parse_policy(
        """
pools:
  - name: web
    max_capacity: 4
    candidates: [{cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}]
    discovery: {nginx_server_options: max_fails=3 fail_timeout=10s}
""",
        "p.yaml",
    )
    pool = loaded.policy.pools[0]
    include = tmp_path / "upstream.conf"
    conf = _nginx_conf(tmp_path, _free_port(), include)
    for eps in ([], _sample_endpoints()):  # none ready (the `down` placeholder); IPv4, IPv6, fractional units
        include.write_text(discovery.render_nginx_upstream(pool, eps))
        check = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    assert "server [fd00::7]:8000 weight=1 max_fails=3 fail_timeout=10s;" in include.read_text()


def _sample_endpoints() -> list[discovery.Endpoint]:
    from autoscaler.model import Market, OfferingKey

    key = OfferingKey("aws", "us-east-1", "us-east-1a", "p5.48xlarge", Market.SPOT)
    return [
        discovery.Endpoint("web", "t1", "i-1", "10.0.0.5", 8000, 9400, key, 8.0),
        discovery.Endpoint("web", "t2", "i-2", "fd00::7", 8000, 9400, key, 0.4),
    ]


@contextlib.contextmanager
def running_nginx(nginx: str, prefix: Path, conf: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # listening, and the pid file written (`nginx -s reload` needs it)
            if (prefix / "nginx.pid").exists():
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            assert proc.poll() is None, f"nginx exited: {proc.stderr.read() if proc.stderr else ''}"
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _workers(master: int) -> set[int]:
    """The nginx master's worker processes (Linux /proc)."""
    return {int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()}


def _wait_for_old_workers_to_exit(master: int, old: set[int]) -> None:
    """A graceful reload keeps the old workers accepting for a moment: wait until they are gone."""
    deadline = time.monotonic() + 10
    while old & _workers(master):
        assert time.monotonic() < deadline, "nginx's old workers did not exit after the reload"
        time.sleep(0.05)


def _hits(port: int, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                seen[r.read().decode()] += 1
        except urllib.error.HTTPError as exc:
            seen[f"HTTP {exc.code}"] += 1
    return seen


def _wait_for(port: int, done: Callable[[Counter[str]], bool]) -> None:
    """Until a batch of requests through nginx looks as wanted: a reload takes effect when the new workers run."""
    deadline = time.monotonic() + 10
    while not done(seen := _hits(port, 4)):
        assert time.monotonic() < deadline, f"nginx routes {dict(seen)}"
        time.sleep(0.05)


def test_nginx_routes_to_the_ready_instances_and_stops_sending_to_a_draining_one(
    stats: Stats, tmp_path: Path
) -> None:
    nginx = _nginx()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    include = tmp_path / "lb" / "web.conf"
    listen, backend_port = _free_port(), _free_port()
    conf = _nginx_conf(prefix, listen, include)
    reload_cmd = json.dumps([nginx, "-p", str(prefix), "-c", str(conf), "-s", "reload"])
    disco = f"{{port: {backend_port}, nginx_upstream_path: {include}, reload_command: {reload_cmd}}}"
    h = Harness.start(policy_text(stats.url, disco), tmp_path)
    h.run(ticks=1)  # launched, booting: the upstream file exists, with no server up
    assert "down;" in include.read_text()
    backends: list[Backend] = []
    try:
        with running_nginx(nginx, prefix, conf, listen) as master:
            assert _hits(listen, 2) == Counter({"HTTP 502": 2}), "no instance is ready yet"
            first_workers = _workers(master.pid)
            h.run(ticks=3)  # both instances ready: the file lists them and the reload command tells nginx
            addresses = serving(h)
            assert len(addresses) == 2
            backends = [Backend(a, backend_port) for a in addresses]
            _wait_for_old_workers_to_exit(master.pid, first_workers)
            # one reload per tick that changed the file: wait for the last generation alone (round robin)
            _wait_for(
                listen,
                lambda seen: seen == Counter(dict.fromkeys(addresses, 2)) and len(_workers(master.pid)) == 1,
            )
            seen = _hits(listen, 20)
            assert set(seen) == set(addresses), seen
            assert all(n >= 5 for n in seen.values()), seen

            stats.depth = 40.0  # half the demand: one instance drains
            reloads = h.daemon.discovery.reloads
            old_workers = _workers(master.pid)
            h.run(ticks=1)
            draining = [r for r in h.live_records() if r.state == InstanceState.DRAINING]
            assert len(draining) == 1, "the instance drains before it is terminated"
            assert h.daemon.discovery.reloads == reloads + 1, h.daemon.discovery.last_errors
            gone, kept = draining[0].address, serving(h)
            assert kept == [a for a in addresses if a != gone]
            assert f"server {gone}:" not in include.read_text()
            # nginx reloads gracefully (old workers finish what they serve); then only the kept one is used
            _wait_for_old_workers_to_exit(master.pid, old_workers)
            _wait_for(listen, lambda seen: seen == Counter({kept[0]: len(kept) * 4}))
            assert _hits(listen, 20) == Counter({kept[0]: 20})
            assert draining[0].token in {r.token for r in h.live_records()}, "drained, not yet terminated"
    finally:
        for b in backends:
            b.close()
