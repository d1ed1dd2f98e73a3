"""Faults from the clouds, the long version of tests/test_faults_clouds.py: the daemon on a fake clock drives one pool
over AWS, GCP and Azure (real SDKs, local fakes), each behind tests/fault_proxy.py, which injects throttling (each
cloud's shape), 5xx, held connections past the client's timeout, slow answers and malformed answers into `rate`
of all calls, on every cloud at once (and then one cloud failing every call), for a window of `--ticks` ticks (15 s apart) while the pool's demand moves
between 1 and 6 units. Then the faults end and the daemon ticks until the fleet has converged. Prints JSON.

    python benchmarks/faults.py [--rates 0.1,0.3,0.5] [--ticks 60] [--seed 7]

Per rate: ticks run, exceptions escaped from a tick (must be 0), wall seconds and the slowest tick, faults
injected per cloud and kind, breaker openings per cloud, launches per cloud, instances made twice for one launch
token (must be 0), and the ticks it took to converge after the window (must be <= 2): every live record ready,
the desired units live, and every tagged instance the clouds list recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})

from autoscaler.breaker import breakers
from autoscaler.model import TAG_INTENT, CloudState
from tests.aws_fake import FakeEC2
from tests.azure_fake import FakeARM
from tests.fault_proxy import KINDS, FaultProxy
from tests.gcp_fake import FakeGCE
from tests.test_faults_clouds import CLIENT_TIMEOUT, TICK, Clouds, Run, start

DEMAND = (1, 2, 4, 6, 6, 5, 3, 2, 1, 1, 3, 6)  # units, each held for 5 ticks, repeating


def one_rate(c: Clouds, rate: float, ticks: int, workdir: Path, faulty: list[str]) -> dict[str, object]:
    run: Run = start(c, workdir, ["aws", "gcp", "azure"])
    run.tick()  # offerings and the first instance, without faults
    for cloud, proxy in c.proxies.items():
        proxy.injected.clear()
        if cloud in faulty:
            # A dark cloud fails every call: no slow-but-good answers among its faults.
            proxy.faults(rate, [k for k in KINDS if k != "slow"] if rate >= 1.0 else KINDS)
    escaped: list[str] = []
    slowest = 0.0
    started = time.perf_counter()
    for n in range(ticks):
        run.want(DEMAND[(n // 5) % len(DEMAND)])
        t0 = time.perf_counter()
        try:
            run.daemon.tick()
        except Exception as exc:  # what the daemon must never let out of a tick
            escaped.append(f"{type(exc).__name__}: {exc}")
        slowest = max(slowest, time.perf_counter() - t0)
        run.clock.advance(TICK)
    wall = time.perf_counter() - started
    for proxy in c.proxies.values():
        proxy.clear()
    run.clock.advance(120)  # past any breaker's cool-down
    to_converge = run.ticks_to_converge(limit=10)
    tokens: Counter[str] = Counter(
        i.tags.get(TAG_INTENT, "")
        for p in run.raw.values()
        for i in p.list_instances()
        if i.state in (CloudState.PENDING, CloudState.RUNNING)
    )
    launched = Counter(r.offering.cloud for r in run.store.instances(live_only=False) if r.cloud_id)
    live = Counter(r.offering.cloud for r in run.store.instances(live_only=True))
    result = {
        "rate": rate,
        "faulty_clouds": faulty,
        "ticks": ticks,
        "exceptions_escaped": len(escaped),
        "first_escaped": escaped[:3],
        "tick_failures_recorded": run.daemon.last_tick_error,
        "wall_seconds": round(wall, 1),
        "slowest_tick_seconds": round(slowest, 2),
        "faults_injected": {cloud: dict(p.injected) for cloud, p in c.proxies.items()},
        "requests": {cloud: p.requests for cloud, p in c.proxies.items()},
        "breaker_openings": {
            cloud: b.status().times_opened for cloud, b in breakers(run.daemon.providers).items()
        },
        "instances_launched": dict(launched),
        "live_after": dict(live),
        "tokens_made_twice": sum(1 for t, n in tokens.items() if t and n > 1),
        "ticks_to_converge_after": to_converge,
    }
    run.store.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="0.1,0.3,0.5")
    parser.add_argument("--ticks", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--dark", default="aws", help="also run this cloud failing every call (rate 1.0) alone; '' to skip"
    )
    args = parser.parse_args()
    runs = [(float(r), ["aws", "gcp", "azure"]) for r in args.rates.split(",")]
    if args.dark:
        runs.append((1.0, [args.dark]))
    out = []
    with FakeEC2() as ec2:
        gce, arm = FakeGCE().start(), FakeARM().start()
        try:
            for i, (rate, faulty) in enumerate(runs):
                ec2.reset()
                gce.reset()
                arm.reset()
                hold = CLIENT_TIMEOUT + 0.3
                proxies = {
                    "aws": FaultProxy(ec2.endpoint_url, "aws", seed=args.seed + 10 * i, hold_seconds=hold),
                    "gcp": FaultProxy(gce.endpoint, "gcp", seed=args.seed + 10 * i + 1, hold_seconds=hold),
                    "azure": FaultProxy(
                        arm.url, "azure", seed=args.seed + 10 * i + 2, upstream_ca=arm.ca_path, hold_seconds=hold
                    ),
                }
                for proxy in proxies.values():
                    proxy.start()
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        out.append(one_rate(Clouds(ec2, gce, arm, proxies), rate, args.ticks, Path(tmp), faulty))
                finally:
                    for proxy in proxies.values():
                        proxy.stop()
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        finally:
            gce.stop()
            arm.stop()
    print(json.dumps({"benchmark": "faults", "client_timeout_seconds": CLIENT_TIMEOUT, "runs": out}, indent=2))
    ok = all(r["exceptions_escaped"] == 0 and r["tokens_made_twice"] == 0 for r in out)
    ok = ok and all(r["ticks_to_converge_after"] is not None and r["ticks_to_converge_after"] <= 2 for r in out)  # type: ignore[operator]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
