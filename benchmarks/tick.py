"""Time reconcile() -- the pure decision of one tick -- at fleet scale, and print JSON.

    python benchmarks/tick.py [--pools 100] [--offerings 5000] [--instances 10000] [--repeat 20]

The snapshot: `pools` pools with 5 ranked candidates each; `offerings` offerings (instance types x zones x
markets on the simulated cloud); `instances` records, all listed by the cloud and ready; every pool's demand moves
each tick so that a tenth of the pools scale up (placement runs over the offerings), a tenth scale down
(disruption runs), and the rest hold. Some offerings are blocked in capacity memory. Nothing here does I/O, so the
figure is the CPU cost of the decision itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

from autoscaler.config import (
    Candidate,
    Clouds,
    DaemonSettings,
    Limits,
    Policy,
    Pool,
    SimInstanceType,
    SimulatedCloud,
    SyntheticSource,
    Targets,
)
from autoscaler.lifecycle import InstanceState
from autoscaler.model import (
    TAG_DAEMON,
    TAG_INTENT,
    TAG_POOL,
    Block,
    CloudInstance,
    CloudState,
    Demand,
    FailureKind,
    InstanceRecord,
    Market,
    Offering,
    OfferingKey,
    Scope,
    Snapshot,
)
from autoscaler.reconcile import reconcile

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def build(pools: int, offerings: int, instances: int) -> tuple[Policy, Snapshot]:
    zones = [f"z{z:02d}" for z in range(25)]
    n_types = max(offerings // (len(zones) * 2), 1)
    types = [f"sim.t{t:03d}" for t in range(n_types)]
    combos = [(t, z, m) for t in types for z in zones for m in Market][:offerings]
    offers = [
        Offering(OfferingKey("simulated", "r", zone, t, market), 1.0 + (i % 17), 1 + (i % 8), NOW)
        for i, (t, zone, market) in enumerate(combos)
    ]
    sim = SimulatedCloud(
        regions={"r": zones},
        instance_types={
            t: SimInstanceType(gpus=1, on_demand_usd_per_hour=2.0, spot_usd_per_hour=1.0) for t in types
        },
    )
    pool_cfgs = []
    for p in range(pools):
        cands = [
            Candidate(
                cloud="simulated",
                instance_type=types[(p + k) % n_types],
                market=list(Market)[k % 2],
                throughput=1 + k,
            )
            for k in range(5)
        ]
        queue = SyntheticSource(name="queue", type="synthetic")  # only its kind matters: demand is in the snapshot
        pool_cfgs.append(
            Pool(
                name=f"pool-{p:03d}",
                max_capacity=10_000,
                metrics=[queue],
                candidates=cands,
                targets=Targets(queue_per_unit=1),
            )
        )
    policy = Policy(
        daemon=DaemonSettings(limits=Limits(max_instances=1_000_000, max_gpus=10_000_000, max_usd_per_hour=1e9)),
        clouds=Clouds(simulated=sim),
        pools=pool_cfgs,
    )
    per_pool = instances // pools
    records, listed = [], []
    demand: dict[str, Demand] = {}
    for p, pool in enumerate(pool_cfgs):
        cand = pool.candidates[0]
        units = 0.0
        for i in range(per_pool):
            key = OfferingKey("simulated", "r", zones[i % len(zones)], cand.instance_type, cand.market)
            token = f"{pool.name}-{i}"
            cloud_id = f"i-{p:03d}-{i:05d}"
            records.append(
                InstanceRecord(
                    token, pool.name, key, InstanceState.READY, cand.throughput, 1, 1.0, NOW, NOW, cloud_id
                )
            )
            tags = {TAG_DAEMON: "default", TAG_POOL: pool.name, TAG_INTENT: token}
            listed.append(CloudInstance(cloud_id, key, CloudState.RUNNING, NOW, tags))
            units += cand.throughput
        factor = 1.2 if p % 10 == 0 else (0.8 if p % 10 == 1 else 1.0)
        demand[pool.name] = Demand(queue_depth=units * factor, latency_seconds=None)
    blocks = [
        Block("simulated", "r", zones[b % len(zones)], types[b % n_types], Market.SPOT, Scope.ZONE,
              FailureKind.CAPACITY, 1, NOW + timedelta(minutes=3), NOW)
        for b in range(200)
    ]  # fmt: skip
    snapshot = Snapshot(
        now=NOW,
        records=tuple(records),
        cloud_instances={"simulated": tuple(listed)},
        offerings=tuple(offers),
        blocks=tuple(blocks),
        demand=demand,
        scaling_state={},
        controls={},
        tick="bench",
    )
    return policy, snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--offerings", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    policy, snapshot = build(args.pools, args.offerings, args.instances)
    plan = reconcile(snapshot, policy)  # warm-up, and a sanity check that the scenario does work
    launches = sum(1 for i in plan.intents if type(i).__name__ == "Launch")
    removals = sum(1 for i in plan.intents if type(i).__name__ in ("Transition", "Terminate"))
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        reconcile(snapshot, policy)
        times.append((time.perf_counter() - t0) * 1000)
    tracemalloc.start()
    reconcile(snapshot, policy)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        json.dumps(
            {
                "benchmark": "reconcile",
                "pools": args.pools,
                "offerings": len(snapshot.offerings),
                "instances": len(snapshot.records),
                "launches_per_tick": launches,
                "removals_per_tick": removals,
                "repeat": args.repeat,
                "ms_median": round(statistics.median(times), 2),
                "ms_p95": round(sorted(times)[int(0.95 * (len(times) - 1))], 2),
                "ms_min": round(min(times), 2),
                "peak_alloc_mib": round(peak / 2**20, 2),
                "python": platform.python_version(),
                "machine": f"{platform.machine()}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
