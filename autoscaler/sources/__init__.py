"""Metric sources: where each pool's demand signal (queue depth, latency) comes from.

`build_sources` makes the sources of a pool from its policy, `read_samples` reads all pools' sources in parallel
with per-source timeouts, `combine` turns one pool's samples into its Demand (or a hold). Every source's
`read(now)` returns a Sample and never raises; its error names the source and never carries a secret.
"""

from __future__ import annotations

from datetime import datetime

from autoscaler.config import HttpSource, Pool, PrometheusSource, SyntheticSource
from autoscaler.interfaces import MetricSource
from autoscaler.sources.combine import combine
from autoscaler.sources.http_json import HttpJson
from autoscaler.sources.prometheus import Prometheus
from autoscaler.sources.runner import read_samples
from autoscaler.sources.synthetic import Synthetic

__all__ = ["HttpJson", "Prometheus", "Synthetic", "build_sources", "combine", "read_samples"]


def build_sources(pool: Pool, started_at: datetime) -> list[MetricSource]:
    """The pool's sources in policy order. `started_at` is t = 0 of synthetic curves (the daemon's start)."""
    out: list[MetricSource] = []
    for cfg in pool.metrics:
        if isinstance(cfg, SyntheticSource):
            out.append(Synthetic(cfg, started_at))
        elif isinstance(cfg, PrometheusSource):
            out.append(Prometheus(cfg))
        elif isinstance(cfg, HttpSource):
            out.append(HttpJson(cfg))
        else:  # pragma: no cover - the policy's discriminated union admits nothing else
            raise TypeError(f"unknown metric source type {type(cfg).__name__}")
    return out
