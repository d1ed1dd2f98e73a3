"""The tick end to end on a fake clock: scale-up, same-tick fallback, capacity memory, scale-in, preemption,
reload, and a loop that survives cloud errors."""

from __future__ import annotations

import http.server
import logging
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from autoscaler.errors import TransientError
from autoscaler.lifecycle import InstanceState
from autoscaler.model import Market
from autoscaler.policyfile import default_policy_text
from tests.daemon_harness import Harness

SYNTHETIC = """
daemon: {id: t, tick_seconds: 5}
clouds:
  simulated:
    boot_seconds: 10
    capacity:
      - {instance_type: sim.h100x8, market: spot, available: 0}
pools:
  - name: llm
    min_capacity: 0
    max_capacity: 64
    metrics:
      - {name: q, type: synthetic, kind: queue, base: 80}
    targets: {queue_per_unit: 5}
    scaling: {scale_down_window_seconds: 60}
    drain_seconds: 10
    candidates:
      - {cloud: simulated, instance_type: sim.h100x8, market: spot, throughput: 16}
      - {cloud: simulated, instance_type: sim.a100x8, market: spot, throughput: 8}
      - {cloud: simulated, instance_type: sim.a100x8, market: on-demand, throughput: 8}
"""


def test_default_policy_scales_up_falls_back_and_blocks_within_a_minute(tmp_path: Path) -> None:
    h = Harness.start(default_policy_text(), tmp_path)
    plan = h.daemon.tick()
    decision = plan.decisions["demo-llm"]
    # the first tick already wants capacity, tries H100 spot, is refused, and falls back in the same tick
    assert decision.desired >= 8
    assert any("fallback round" in c and "sim.a100x8/spot" in c for c in decision.chosen), decision.chosen
    blocks = h.store.blocks(now=h.clock.now())
    assert [(b.instance_type, b.market) for b in blocks] == [("sim.h100x8", Market.SPOT)] * len(blocks)
    assert blocks, "the refused offering is in capacity memory"
    h.clock.advance(5)
    h.run(ticks=11)  # 60 s of ticks: booted, burst at 15 s
    ready = h.ready_records()
    assert ready and all(r.offering.instance_type == "sim.a100x8" for r in ready)
    last = h.store.decisions(pool="demo-llm", limit=1)[0].decision
    assert last.desired > decision.desired, "the burst raised the desired capacity"
    body, _ = h.daemon.metrics.render()
    text = body.decode()
    assert 'gpu_autoscaler_pool_desired_capacity{pool="demo-llm"}' in text
    assert 'instance_type="sim.h100x8"' in text and "gpu_autoscaler_blocked_offerings" in text


def test_scale_up_counts_booting_capacity_and_does_not_launch_twice(tmp_path: Path) -> None:
    h = Harness.start(SYNTHETIC, tmp_path)
    h.run(ticks=1, seconds=1)
    launched = len(h.cloud.all_instances())
    assert launched == 2  # 80 / 5 = 16 units = 2 x a100x8 (8 units each)
    h.run(ticks=3, seconds=1)  # still booting: nothing more is launched
    assert len(h.cloud.all_instances()) == launched
    h.run(ticks=3, seconds=5)
    assert sum(r.capacity_units for r in h.ready_records()) == 16


def test_blocked_offering_is_not_retried_until_the_block_expires(tmp_path: Path) -> None:
    h = Harness.start(SYNTHETIC, tmp_path)
    h.run(ticks=1)
    refused = h.cloud.calls["launch"]
    h.cloud.set_capacity("sim.a100x8", Market.SPOT, None, 2)  # room for exactly what runs now
    h.run(ticks=5)
    # H100 spot was refused once per zone in the first tick and is not asked again while blocked
    h100_events = [e for e in h.store.capacity_events(limit=50) if e.offering.instance_type == "sim.h100x8"]
    assert 1 <= len(h100_events) <= 2
    assert h.cloud.calls["launch"] == refused


def test_scale_in_drains_then_terminates(tmp_path: Path) -> None:
    h = Harness.start(
        SYNTHETIC.replace("base: 80", "base: 80, bursts: [{after_seconds: 0, duration_seconds: 60, value: 80}]"),
        tmp_path,
    )
    h.run(ticks=6)
    assert sum(r.capacity_units for r in h.ready_records()) == 32
    h.run(ticks=30)  # burst over at 60 s, down-window 60 s, drain 10 s
    ready = h.ready_records()
    assert sum(r.capacity_units for r in ready) == 16
    ended = [r for r in h.store.instances(live_only=False) if r.state == InstanceState.TERMINATED]
    assert len(ended) == 2
    history = [e.to for e in h.store.history(ended[0].token)]
    assert history[-3:] == [InstanceState.DRAINING, InstanceState.TERMINATING, InstanceState.TERMINATED]


def test_preempted_spot_instance_is_replaced_and_its_zone_blocked(tmp_path: Path) -> None:
    h = Harness.start(SYNTHETIC, tmp_path)
    h.run(ticks=4)
    victim = h.ready_records()[0]
    h.cloud.preempt(victim.cloud_id or "")
    h.run(ticks=1)
    rec = h.store.get_instance(victim.token)
    assert rec is not None and rec.state == InstanceState.TERMINATED
    kinds = {(e.kind.value, e.offering.zone) for e in h.store.capacity_events(limit=10)}
    assert ("preemption", victim.offering.zone) in kinds
    h.run(ticks=4)
    assert sum(r.capacity_units for r in h.ready_records()) == 16
    # the replacement went elsewhere: the preempted zone's spot offering is blocked
    replacement = [r for r in h.ready_records() if r.token != victim.token]
    assert all(
        not (r.offering.zone == victim.offering.zone and r.offering.market == Market.SPOT)
        for r in replacement
        if r.created_at > victim.created_at
    )


def test_cloud_errors_never_stop_the_loop(tmp_path: Path) -> None:
    h = Harness.start(SYNTHETIC, tmp_path)
    h.cloud.inject_call_error("list_instances", TransientError("503 from the API"), times=3)
    h.cloud.inject_call_error("launch", TransientError("throttled"), times=2)
    for _ in range(10):
        h.daemon.run_tick()
        h.clock.advance(5)
    assert sum(r.capacity_units for r in h.ready_records()) == 16
    assert len(h.cloud.all_instances()) == 2


def test_reload_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(SYNTHETIC)
    h = Harness.start(SYNTHETIC, tmp_path, policy_path=path)
    path.write_text(SYNTHETIC.replace("max_capacity: 64", "max_capacitty: 64"))
    accepted, message = h.daemon.reload_policy()
    assert not accepted
    assert "policy.yaml:11:5: pools[0].max_capacitty: unknown key" in message
    assert h.daemon.policy().policy.pools[0].max_capacity == 64
    h.run(ticks=1)  # still ticking on the old policy
    path.write_text(SYNTHETIC.replace("max_capacity: 64", "max_capacity: 8"))
    accepted, message = h.daemon.reload_policy()
    assert accepted, message
    h.run(ticks=1)
    assert h.store.decisions(pool="llm", limit=1)[0].decision.desired == 8
    revisions = h.store.policy_revisions(limit=10)
    assert [r.accepted for r in revisions][:2] == [True, False]


def test_history_is_pruned_so_the_database_stays_bounded(tmp_path: Path) -> None:
    policy = SYNTHETIC.replace("daemon: {id: t, tick_seconds: 5}", "daemon: {id: t, history_retention_days: 0.01}")
    h = Harness.start(policy, tmp_path)  # 0.01 days = 864 s of history
    h.run(ticks=400, seconds=30)  # 200 minutes: pruned at 0, 60, 120, 180 minutes
    kept = h.store.decisions(pool="llm", limit=500)
    assert 29 <= len(kept) <= 29 + 120, len(kept)  # 864 s of 30 s ticks, plus up to an hour since the last prune
    oldest = min(d.at for d in kept)
    assert h.clock.now() - oldest <= timedelta(seconds=864 + 3600 + 30)
    assert h.ready_records(), "pruning never touches live instances"


def test_a_refused_request_blocks_the_offering_and_falls_back_in_the_same_tick(tmp_path: Path) -> None:
    """A bad image (config error) on the preferred offering must not stall the pool: block it, use the next."""
    policy = SYNTHETIC.replace(
        "    boot_seconds: 10\n",
        "    boot_seconds: 10\n    faults: [{instance_type: sim.a100x8, market: spot, error: config, times: 100}]\n",
    )
    h = Harness.start(policy, tmp_path)
    plan = h.daemon.tick()
    chosen = plan.decisions["llm"].chosen
    assert any("fallback round" in c and "sim.a100x8/on-demand" in c for c in chosen), chosen
    blocks = {
        (b.instance_type, str(b.market), str(b.scope), str(b.kind)) for b in h.store.blocks(now=h.clock.now())
    }
    assert ("sim.a100x8", "spot", "cloud", "config") in blocks
    launches = h.cloud.calls["launch"]
    h.run(ticks=6)
    assert sum(r.capacity_units for r in h.ready_records()) == 16
    assert h.cloud.calls["launch"] == launches, "the refused offering is not asked again while blocked"


def test_a_failing_source_is_logged_once_and_its_recovery_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answer = {"body": b"not json"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/stats"
    policy = SYNTHETIC.replace(
        "      - {name: q, type: synthetic, kind: queue, base: 80}",
        f"      - {{name: q, type: http, kind: queue, url: '{url}', field: depth, timeout_seconds: 2}}",
    )
    h = Harness.start(policy, tmp_path)
    try:
        with caplog.at_level(logging.INFO, logger="autoscaler.gather"):
            h.run(ticks=4)
            assert h.store.decisions(pool="llm", limit=1)[0].decision.signal == "hold"
            answer["body"] = b'{"depth": 40}'
            h.run(ticks=3)
    finally:
        server.shutdown()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "metric source q of pool llm is failing" in m]) == 1
    assert len([m for m in messages if "pool llm holds its capacity" in m]) == 1
    assert len([m for m in messages if "metric source q of pool llm answers again" in m]) == 1
    assert len([m for m in messages if "pool llm scales on its signals again" in m]) == 1
    assert h.store.decisions(pool="llm", limit=1)[0].decision.signal == "queue"
