"""Metric sources: where each pool's demand signal (queue depth, latency) comes from.

`build_sources` makes the sources of a pool from its policy, `read_samples` reads all pools' sources in parallel
with per-source timeouts, `combine` turns one pool's samples into its Demand (or a hold). Every source's
`read(now)` returns a Sample and never raises; its error names the source and never carries a secret.
"""

from __future__ import annotations

import importlib
from datetime import datetime

from autoscaler.config import HttpSource, MetricSourceConfig, Pool, PrometheusSource, SyntheticSource
from autoscaler.errors import ConfigError
from autoscaler.interfaces import MetricSource
from autoscaler.sources.combine import combine
from autoscaler.sources.http_json import HttpJson
from autoscaler.sources.prometheus import Prometheus
from autoscaler.sources.runner import read_samples
from autoscaler.sources.synthetic import Synthetic

__all__ = ["HttpJson", "Prometheus", "Synthetic", "build_sources", "combine", "read_samples"]


# Source types whose module lives in metrics_sources/ (they need a client library), with the extra to install.
LIBRARY_SOURCES = {"redis": "redis", "rabbitmq": "rabbitmq", "sqs": "aws"}


def build_sources(pool: Pool, started_at: datetime) -> list[MetricSource]:
    """The pool's sources in policy order. `started_at` is t = 0 of synthetic curves (the daemon's start).
    Raises ConfigError when a source's client library is not installed."""
    out: list[MetricSource] = []
    for cfg in pool.metrics:
        if isinstance(cfg, SyntheticSource):
            out.append(Synthetic(cfg, started_at))
        elif isinstance(cfg, PrometheusSource):
            out.append(Prometheus(cfg))
        elif isinstance(cfg, HttpSource):
            out.append(HttpJson(cfg))
        else:
            out.append(_library_source(cfg))
    return out


def _library_source(cfg: MetricSourceConfig) -> MetricSource:
    try:
        module = importlib.import_module(f"metrics_sources.{cfg.type}")
    except ImportError as exc:
        if (exc.name or "").startswith(
            "metrics_sources"
        ):  # our own module: a broken installation, not a missing extra
            raise ConfigError(
                f"metric source type {cfg.type!r} is missing from this installation: {exc}"
            ) from None
        extra = LIBRARY_SOURCES.get(cfg.type, cfg.type)
        raise ConfigError(
            f"metric source {cfg.name!r} ({cfg.type}) needs the {exc.name} package: "
            f"pip install 'gpu-autoscaler[{extra}]'"
        ) from None
    source: MetricSource = module.build(cfg)
    return source
