"""Count the EC2 API calls the daemon makes per tick: 3 regions, 50 instances, real boto3 against moto's EC2
server behind the test suite's fake (tests/aws_fake.py), and print JSON.

    python benchmarks/aws_calls.py [--instances 50] [--ticks 60]

Ticks are 15 s apart on a fake clock. Reported: the first tick (offerings read, 50 launches), the steady ticks
(nothing to do but look), and a tick where the 10-minute offering refresh falls (spot prices re-read; where
types are offered is cached for an hour).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoscaler.clock import FakeClock
from autoscaler.daemon import Daemon
from autoscaler.policyfile import parse_policy
from autoscaler.store import Store
from providers import build_providers
from tests.aws_fake import FakeEC2

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


def policy(fake: FakeEC2, instances: int) -> str:
    regions = ", ".join(f"{r}: []" for r in REGIONS)
    candidates = "\n".join(
        f"      - {{cloud: aws, instance_type: g5.xlarge, market: on-demand, regions: [{r}], throughput: 1}}"
        for r in REGIONS
    )
    return f"""
daemon: {{id: bench, tick_seconds: 15}}
clouds:
  aws: {{regions: {{{regions}}}, endpoint_url: {fake.endpoint_url}}}
pools:
  - name: llm
    min_capacity: {instances}
    max_capacity: {instances}
    launch_templates:
      aws: {{image: {fake.ami(REGIONS[0])}}}
    candidates:
{candidates}
"""


def snapshot(fake: FakeEC2) -> Counter[str]:
    return Counter({f"{action} {region}": n for (action, region), n in fake.calls.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--ticks", type=int, default=60)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with FakeEC2() as fake, tempfile.TemporaryDirectory() as tmp:
        for region in REGIONS:
            fake.ami(region)
        loaded = parse_policy(policy(fake, args.instances), "bench.yaml")
        clock = FakeClock()
        store = Store.open(f"sqlite:///{Path(tmp) / 'bench.db'}")
        daemon = Daemon(loaded, store=store, clock=clock, provider_factory=lambda p: build_providers(p, clock))
        per_tick: list[Counter[str]] = []
        for _ in range(args.ticks):
            before = snapshot(fake)
            daemon.tick()
            per_tick.append(snapshot(fake) - before)
            clock.advance(15)
        live = len(store.instances())
        store.close()
    steady = [t for i, t in enumerate(per_tick[1:], 1) if i * 15 % 600 != 0]
    refresh = [t for i, t in enumerate(per_tick[1:], 1) if i * 15 % 600 == 0]
    steady_totals = sorted(sum(t.values()) for t in steady)
    print(
        json.dumps(
            {
                "benchmark": "aws_calls_per_tick",
                "regions": len(REGIONS),
                "instances": live,
                "ticks": args.ticks,
                "first_tick": dict(sorted(per_tick[0].items())),
                "steady_tick_calls_max": steady_totals[-1],
                "steady_tick_calls_min": steady_totals[0],
                "steady_tick_example": dict(sorted(steady[-1].items())),
                "offering_refresh_tick": dict(sorted(refresh[0].items())) if refresh else {},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
