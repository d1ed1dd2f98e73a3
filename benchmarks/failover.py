"""Forced failovers of a three-daemon cluster on this machine's PostgreSQL and the fake EC2 server; prints JSON.

    python benchmarks/failover.py [--failovers 30] [--kinds kill,stop,cut] [--lease 2] [--renew 0.5] [--seed 7]

Each round raises the desired capacity by one (an operator override in the shared database), waits a random
0-1.5 s so that the blow lands at a different moment of the leader's tick each time (deciding, writing intents,
calling the cloud), then strikes the leader, in turn with each kind:

- kill: SIGKILL, then a new process is started in its place (it joins as a follower);
- stop: SIGSTOP; once another daemon leads, SIGCONT (the woken one must follow, its stale writes refused);
- cut:  its loopback proxy to PostgreSQL is cut; once another daemon leads, restored.

Takeover = from the blow until another daemon reports itself leader on /healthz; converged = until the cloud
has exactly the desired number of instances. Desired capacity only grows, so every instance the cloud ever made
should be needed: double_launches = instances made - final desired (and distinct launch tokens must match).
Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

from autoscaler.store import Store
from tests.aws_fake import FakeEC2
from tests.conftest import POSTGRES_HOST, POSTGRES_PORT, _probe_postgres
from tests.ha_cluster import Cluster, Node


def create_database() -> tuple[str, str, str]:
    import psycopg

    user, error = _probe_postgres()
    if user is None:
        raise SystemExit(f"PostgreSQL is needed at {POSTGRES_HOST}:{POSTGRES_PORT}: {error}")
    name = f"bench_failover_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname="postgres", autocommit=True
    ) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return user, name, f"postgresql+psycopg://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"


def drop_database(user: str, name: str) -> None:
    import psycopg

    with psycopg.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname="postgres", autocommit=True
    ) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failovers", type=int, default=30)
    parser.add_argument("--kinds", default="kill,stop,cut")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--renew", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    rng = random.Random(args.seed)
    user, name, url = create_database()
    root = Path(tempfile.mkdtemp(prefix="failover-"))
    takeovers: dict[str, list[float]] = {k: [] for k in kinds}
    converged: list[float] = []
    with FakeEC2() as fake, Store.open(url) as store:
        c = Cluster(fake, url, root, lease=args.lease, renew=args.renew)
        try:
            for n in ("a", "b", "c"):
                c.start(n, proxied="cut" in kinds)
            c.one_leader(timeout=60)
            desired = 2
            c.wait("the initial fleet", lambda: c.running() == 2, 60)
            for i in range(args.failovers):
                kind = kinds[i % len(kinds)]
                leader = c.one_leader(timeout=30)
                desired += 1
                c.set_capacity(store, desired)
                time.sleep(rng.uniform(0.0, 1.5))
                takeovers[kind].append(strike(c, leader, kind))
                start = time.monotonic()
                c.wait(f"{desired} instances", lambda d=desired: c.running() >= d, 60)  # type: ignore[misc]
                converged.append(time.monotonic() - start)
            time.sleep(3 * args.renew + 2)  # a few more ticks: anything late would show now
            made = c.instances()
            tokens = set(c.launch_tokens())
            stale = sum(log.read_text(errors="replace").count("fenced off") for log in root.glob("*/daemon-*.log"))
            report = {
                "failovers": args.failovers,
                "kinds": {k: len(v) for k, v in takeovers.items()},
                "lease_seconds": args.lease,
                "renew_seconds": args.renew,
                "tick_seconds": 1.0,
                "takeover_seconds": {
                    k: {"p50": pct(v, 0.5), "max": round(max(v), 3) if v else 0.0} for k, v in takeovers.items()
                },
                "takeover_seconds_all": {
                    "p50": pct([t for v in takeovers.values() for t in v], 0.5),
                    "p90": pct([t for v in takeovers.values() for t in v], 0.9),
                    "max": round(max(t for v in takeovers.values() for t in v), 3),
                },
                "converged_after_takeover_seconds": {"p50": pct(converged, 0.5), "max": round(max(converged), 3)},
                "final_desired": desired,
                "instances_made": len(made),
                "instances_running": c.running(),
                "distinct_launch_tokens": len(tokens),
                "run_instances_calls": len(c.launch_tokens()),
                "double_launches": len(made) - desired,
                "stale_leader_refusals": stale,
                "seed": args.seed,
            }
        finally:
            c.stop_all()
            drop_database(user, name)
    print(json.dumps(report, indent=2))


def strike(c: Cluster, leader: Node, kind: str) -> float:
    started = time.monotonic()
    if kind == "kill":
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(timeout=10)
    elif kind == "stop":
        leader.proc.send_signal(signal.SIGSTOP)
    elif kind == "cut":
        assert leader.proxy is not None
        leader.proxy.cut()
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    c.wait("another leader", lambda: [n for n in c.leaders() if n is not leader], 60)
    took = time.monotonic() - started
    if kind == "kill":
        c.start(leader.name, proxied=leader.proxy is not None)
        if leader.proxy is not None:
            leader.proxy.close()
    elif kind == "stop":
        leader.proc.send_signal(signal.SIGCONT)
        c.wait("the woken one to follow", lambda: leader.role == "follower", 30)
    else:
        assert leader.proxy is not None
        leader.proxy.restore()
        c.wait("the cut one to follow", lambda: leader.role == "follower", 30)
    return took


if __name__ == "__main__":
    main()
