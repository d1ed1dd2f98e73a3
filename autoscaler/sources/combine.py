"""Turn one pool's samples into its Demand, or into a hold when the data cannot be trusted.

Scaling on bad data is worse than not scaling: a queue source that failed reads as "no queue", which would
scale the pool to its minimum. So any missing, failed, non-finite, negative or stale sample holds the pool at
its current capacity, and the hold reason names each source and what was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from autoscaler.config import Pool
from autoscaler.model import Demand, Sample


def problem(sample: Sample, now: datetime, max_age_seconds: float) -> str:
    """What makes the sample unusable, or "" when it is fine."""
    name = f"source {sample.source!r}"
    if sample.error:
        # Errors from our sources name the source already.
        return sample.error if sample.source in sample.error else f"{name}: {sample.error}"
    value = sample.value
    if value is None:
        return f"{name}: no value"
    if math.isnan(value):
        return f"{name}: value is NaN"
    if math.isinf(value):
        return f"{name}: value is infinite"
    if value < 0:
        return f"{name}: value {value:g} is negative"
    if sample.observed_at is None:
        return f"{name}: no observation time"
    age = (now - sample.observed_at).total_seconds()
    if age > max_age_seconds:
        return f"{name}: stale, observed {age:.0f} s ago (limit {max_age_seconds:g} s)"
    return ""


def combine(pool: Pool, samples: Sequence[Sample], now: datetime) -> Demand:
    """queue_depth = the sum of the queue samples, latency = the max of the latency samples; a kind with any bad
    (or missing) sample is None and the Demand holds."""
    if not pool.metrics and not samples:
        return Demand(None, None)
    problems: list[str] = []
    bad_kinds: set[str] = set()
    got = {s.source for s in samples}
    for cfg in pool.metrics:
        if cfg.name not in got:
            problems.append(f"source {cfg.name!r}: no sample")
            bad_kinds.add(cfg.kind)
    for s in samples:
        why = problem(s, now, pool.scaling.max_metric_age_seconds)
        if why:
            problems.append(why)
            bad_kinds.add(s.kind)
    queue = [s.value for s in samples if s.kind == "queue" and s.value is not None]
    latency = [s.value for s in samples if s.kind == "latency" and s.value is not None]
    kinds = {s.kind for s in samples} | {m.kind for m in pool.metrics}
    queue_depth = float(sum(queue)) if "queue" in kinds and "queue" not in bad_kinds else None
    latency_seconds = max(latency) if latency and "latency" not in bad_kinds else None
    return Demand(queue_depth, latency_seconds, tuple(samples), "; ".join(problems))
