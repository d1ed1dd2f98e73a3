"""Time one tick's metric reads for 100 pools, on real servers on this machine, and print JSON.

    python benchmarks/sources.py [--pools 100] [--repeat 20] [--workers 8]

Each pool has two sources: a Redis list (LLEN on the local Redis, 127.0.0.1:6379) and an HTTP JSON endpoint (a
small threaded server this script runs on 127.0.0.1). `read_samples` reads them all the way the daemon's gather
does: in parallel, `--workers` at a time, each with its own timeout. Reported: wall time per tick. One more run
adds a source that never answers (a port that accepts and stays silent) to every tenth pool, to show that a slow
broker costs its own timeout once, not the tick's time per pool.
"""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import statistics
import threading
import time
from datetime import UTC, datetime

import redis

from autoscaler.config import Pool
from autoscaler.sources import build_sources, read_samples


class _Answer(http.server.BaseHTTPRequestHandler):
    # Buffered writes: unbuffered, http.server sends each header line in its own packet, and Nagle's algorithm
    # with delayed ACKs then adds ~40 ms to every answer, which would measure this stand-in, not the daemon.
    wbufsize = -1
    protocol_version = "HTTP/1.1"  # keep-alive, as a real endpoint would

    def do_GET(self) -> None:
        body = b'{"queue": {"depth": 12}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def pool(i: int, http_url: str, silent_port: int | None) -> Pool:
    metrics: list[dict[str, object]] = [
        {
            "name": "redis",
            "type": "redis",
            "url": "redis://127.0.0.1:6379/0",
            "key": f"bench-{i}",
            "timeout_seconds": 2,
        },
        {"name": "http", "type": "http", "url": http_url, "field": "queue.depth", "timeout_seconds": 2},
    ]
    if silent_port is not None:
        metrics.append(
            {"name": "silent", "type": "http", "url": f"http://127.0.0.1:{silent_port}/", "field": "x",
             "timeout_seconds": 1}
        )  # fmt: skip
    return Pool.model_validate(
        {
            "name": f"pool-{i:03d}",
            "max_capacity": 10,
            "targets": {"queue_per_unit": 10},
            "metrics": metrics,
            "candidates": [{"cloud": "simulated", "instance_type": "sim.l4x1", "market": "spot", "throughput": 1}],
        }
    )


def measure(pools: list[Pool], repeat: int, workers: int) -> dict[str, float]:
    now = datetime.now(UTC)
    sources = {p.name: build_sources(p, now) for p in pools}
    read_samples(sources, now, max_workers=workers)  # warm-up: connections opened
    times, errors = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        samples = read_samples(sources, datetime.now(UTC), max_workers=workers)
        times.append((time.perf_counter() - t0) * 1000)
        errors = sum(1 for ss in samples.values() for s in ss if s.error)
    return {
        "sources": sum(len(s) for s in sources.values()),
        "ms_median": round(statistics.median(times), 1),
        "ms_max": round(max(times), 1),
        "error_samples_per_tick": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    client = redis.Redis(host="127.0.0.1", port=6379)
    for i in range(args.pools):
        client.delete(f"bench-{i}")
        client.rpush(f"bench-{i}", *[b"x"] * (i + 1))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    http_url = f"http://127.0.0.1:{server.server_address[1]}/stats"
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1024)  # accepts connections, never answers
    try:
        healthy = measure([pool(i, http_url, None) for i in range(args.pools)], args.repeat, args.workers)
        port = silent.getsockname()[1]
        slow_pools = [pool(i, http_url, port if i % 10 == 0 else None) for i in range(args.pools)]
        slow = measure(slow_pools, max(args.repeat // 4, 2), args.workers)
    finally:
        server.shutdown()
        silent.close()
        for i in range(args.pools):
            client.delete(f"bench-{i}")
    print(
        json.dumps(
            {
                "benchmark": "metric_reads_per_tick",
                "pools": args.pools,
                "workers": args.workers,
                "all_healthy": healthy,
                "one_silent_source_in_every_tenth_pool": slow,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
