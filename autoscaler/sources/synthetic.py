"""A made-up demand curve: a sine wave plus bursts, so the default daemon and demos have something to scale on."""

from __future__ import annotations

import math
from datetime import datetime

from autoscaler.config import SyntheticSource
from autoscaler.model import Sample


class Synthetic:
    def __init__(self, cfg: SyntheticSource, started_at: datetime) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self.kind: str = cfg.kind
        self.timeout_seconds: float = cfg.timeout_seconds
        self.started_at = started_at

    def value_at(self, t: float) -> float:
        """The curve `t` seconds after the start. Never below zero: a queue or a latency cannot be negative,
        and a curve that dips below would make the pool hold instead of following the demo's demand."""
        cfg = self.cfg
        value = cfg.base + cfg.amplitude * math.sin(2 * math.pi * t / cfg.period_seconds)
        value += sum(b.value for b in cfg.bursts if b.after_seconds <= t < b.after_seconds + b.duration_seconds)
        return max(0.0, value)

    def read(self, now: datetime) -> Sample:
        t = (now - self.started_at).total_seconds()
        return Sample(self.name, self.kind, self.value_at(t), now)
