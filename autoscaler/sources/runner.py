"""Read every pool's metric sources at once, each bounded by its own timeout.

One slow or hung source must not delay the tick: every read runs in a thread pool and is waited for only until
its source's `timeout_seconds` (plus a little grace; the source's own HTTP timeout normally fires first). A read
still running then becomes an error Sample and its thread is left to finish on its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime

from autoscaler.interfaces import MetricSource
from autoscaler.model import Sample

DEFAULT_TIMEOUT_SECONDS = 5.0
GRACE_SECONDS = 0.25


def timeout_of(source: MetricSource) -> float:
    value = getattr(source, "timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    return float(value) if isinstance(value, int | float) and value > 0 else DEFAULT_TIMEOUT_SECONDS


def _safe_read(source: MetricSource, now: datetime) -> Sample:
    try:
        return source.read(now)
    except Exception as exc:  # the protocol says read() never raises; a source that does still must not
        return Sample(source.name, source.kind, None, None, f"source {source.name!r} failed: {type(exc).__name__}")


def read_samples(
    sources: Mapping[str, Sequence[MetricSource]], now: datetime, max_workers: int = 8
) -> dict[str, list[Sample]]:
    """pool -> its samples, in the order of its sources. Returns within about the longest source timeout
    (reads beyond `max_workers` wait for a thread, and that wait counts against their timeout)."""
    jobs = [(pool, src) for pool, srcs in sources.items() for src in srcs]
    out: dict[str, list[Sample]] = {pool: [] for pool in sources}
    if not jobs:
        return out
    started = time.monotonic()
    executor = ThreadPoolExecutor(max_workers=min(max_workers, len(jobs)), thread_name_prefix="metric-source")
    try:
        futures: list[tuple[str, MetricSource, Future[Sample]]] = [
            (pool, src, executor.submit(_safe_read, src, now)) for pool, src in jobs
        ]
        for pool, src, future in futures:
            limit = timeout_of(src)
            remaining = started + limit + GRACE_SECONDS - time.monotonic()
            try:
                sample = future.result(timeout=max(0.0, remaining))
            except FutureTimeout:
                future.cancel()  # if it never started, it never will
                error = f"source {src.name!r} gave no answer within {limit:g} s"
                sample = Sample(src.name, src.kind, None, None, error)
            out[pool].append(sample)
    finally:
        # Do not wait for hung reads: their threads end when their own HTTP timeouts fire.
        executor.shutdown(wait=False, cancel_futures=True)
    return out
