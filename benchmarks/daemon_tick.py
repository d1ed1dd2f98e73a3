"""Time whole ticks of the daemon -- gather, reconcile, actuate, store writes -- on SQLite (or a URL) and the
simulated cloud, and print JSON.

    python benchmarks/daemon_tick.py [--pools 10] [--units 100] [--database-url URL]

Each pool's demand jumps from zero to `units` capacity units (1 unit per instance) at the first tick: that tick
launches pools x units instances (the scale-up burst: every intent committed, every launch answered and
recorded). Booting then finishes and later ticks are the steady state: every instance listed, matched, counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from autoscaler.clock import FakeClock
from autoscaler.config import SimulatedCloud
from autoscaler.daemon import Daemon
from autoscaler.policyfile import parse_policy
from autoscaler.store import Store
from providers.simulated import SimulatedProvider


def policy_text(pools: int, units: int) -> str:
    lines = [
        "daemon: {tick_seconds: 15, max_parallel_cloud_calls: 8,",
        "         limits: {max_instances: 1000000, max_gpus: 1000000, max_usd_per_hour: 10000000}}",
        "clouds: {simulated: {boot_seconds: 30}}",
        "pools:",
    ]
    for p in range(pools):
        lines += [
            f"  - name: pool-{p}",
            f"    max_capacity: {units}",
            "    targets: {queue_per_unit: 1}",
            f"    metrics: [{{name: q, type: synthetic, base: {units}}}]",
            "    candidates: [{cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}]",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--steady-ticks", type=int, default=10)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        loaded = parse_policy(policy_text(args.pools, args.units), "bench.yaml")
        clock = FakeClock()
        sim = loaded.policy.clouds.simulated
        assert isinstance(sim, SimulatedCloud)
        cloud = SimulatedProvider(sim, clock, loaded.policy.daemon.id)
        store = Store.open(url)
        daemon = Daemon(loaded, store=store, clock=clock, provider_factory=lambda _p: {"simulated": cloud})
        t0 = time.perf_counter()
        daemon.tick()
        burst_ms = (time.perf_counter() - t0) * 1000
        launched = len(cloud.all_instances())
        clock.advance(60)
        daemon.tick()  # booted -> ready: one transition per instance
        steady = []
        for _ in range(args.steady_ticks):
            clock.advance(15)
            t0 = time.perf_counter()
            daemon.tick()
            steady.append((time.perf_counter() - t0) * 1000)
        ready = sum(1 for r in store.instances() if r.state.value == "ready")
        store.close()
    print(
        json.dumps(
            {
                "benchmark": "daemon_tick",
                "database": url.split(":")[0],
                "pools": args.pools,
                "instances": launched,
                "ready_after": ready,
                "burst_tick_ms": round(burst_ms, 1),
                "launches_per_second": round(launched / (burst_ms / 1000), 1),
                "steady_tick_ms_median": round(statistics.median(steady), 1),
                "steady_tick_ms_max": round(max(steady), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
