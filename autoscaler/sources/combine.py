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
    if sample.error:
        # Errors from our sources name the source already.
        return sample.error if sample.source in sample.error else f"source {sample.source!r}: {sample.error}"
    why = _problem(sample, now, max_age_seconds)
    return f"source {sample.source!r}: {why}" if why else ""


def _problem(sample: Sample, now: datetime, max_age_seconds: float) -> str:
    """problem() of a sample without an error, without the source's name in front (named only when there is a
    problem: every tick asks)."""
    value = sample.value
    if value is None:
        return "no value"
    if math.isnan(value):
        return "value is NaN"
    if math.isinf(value):
        return "value is infinite"
    if value < 0:
        return f"value {value:g} is negative"
    if sample.observed_at is None:
        return "no observation time"
    age = (now - sample.observed_at).total_seconds()
    if age > max_age_seconds:
        return f"stale, observed {age:.0f} s ago (limit {max_age_seconds:g} s)"
    return ""


def combine(pool: Pool, samples: Sequence[Sample], now: datetime) -> Demand:
    """queue_depth = the sum of the queue samples, latency = the max of the latency samples, arrival_rate = the
    sum of the arrivals samples; a kind with any bad (or missing) sample is None and the Demand holds."""
    if not pool.metrics and not samples:
        return Demand(None, None)
    problems: list[str] = []
    bad_kinds: set[str] = set()
    got = {s.source for s in samples}
    for cfg in pool.metrics:
        if cfg.name not in got:
            problems.append(f"source {cfg.name!r}: no sample")
            bad_kinds.add(cfg.kind)
    max_age = pool.scaling.max_metric_age_seconds
    kinds: set[str] = {m.kind for m in pool.metrics}
    values: dict[str, list[float]] = {"queue": [], "latency": [], "arrivals": []}  # in the samples' order
    for s in samples:  # one pass (every tick of every pool)
        why = problem(s, now, max_age)
        if why:
            problems.append(why)
            bad_kinds.add(s.kind)
        kinds.add(s.kind)
        if s.value is not None and s.kind in values:
            values[s.kind].append(s.value)
    queue, latency, arrivals = values["queue"], values["latency"], values["arrivals"]
    queue_depth = float(sum(queue)) if "queue" in kinds and "queue" not in bad_kinds else None
    latency_seconds = max(latency) if latency and "latency" not in bad_kinds else None
    arrival_rate = float(sum(arrivals)) if "arrivals" in kinds and "arrivals" not in bad_kinds else None
    return Demand(queue_depth, latency_seconds, tuple(samples), "; ".join(problems), arrival_rate)
