"""Boot-to-ready times learned per offering from the instance history, and the lead they give a pool. Pure.

An instance's boot time is READY's `state_since` minus its `created_at` (the launch intent): what the pool waits
between asking for capacity and serving with it. `BootHistory` keeps the last `KEEP` of them per offering (fed
by gather from the store's records, and by the simulator from its own), and `stats()` gives each offering's
median and p90 for the Snapshot. A pool's **lead** is the slowest p90 among the offerings it would launch on
(its candidates') that have shown at least `MIN_SAMPLES` boots; until then `scaling.boot_seconds`. The scaling policy sizes its headroom and forecast over that lead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from autoscaler.config import Pool
from autoscaler.lifecycle import InstanceState
from autoscaler.model import BootStats, InstanceRecord, OfferingKey
from policies.placement import matches
from policies.rate import quantile

KEEP = 50
MIN_SAMPLES = 2


class BootHistory:
    """The last boots of each offering, taken from records seen READY (each record counted once)."""

    def __init__(self) -> None:
        self._boots: dict[OfferingKey, deque[float]] = {}
        self._seen: set[str] = set()
        self._stats: dict[OfferingKey, BootStats] = {}
        self._given: dict[OfferingKey, BootStats] | None = None  # what stats() last returned, while still true

    def observe(self, records: Iterable[InstanceRecord]) -> None:
        for rec in records:
            if rec.state == InstanceState.READY and rec.token not in self._seen:
                self._seen.add(rec.token)
                self.add(rec.offering, (rec.state_since - rec.created_at).total_seconds())

    def add(self, key: OfferingKey, seconds: float) -> None:
        if seconds < 0:
            return
        self._boots.setdefault(key, deque(maxlen=KEEP)).append(seconds)
        self._stats.pop(key, None)
        self._given = None

    def forget(self, tokens: Iterable[str]) -> None:
        """Records that ended: no need to remember that they were counted."""
        self._seen.difference_update(tokens)

    def forget_except(self, live: Iterable[str]) -> None:
        """Keep only the tokens of `live` records in mind (the others ended)."""
        self._seen.intersection_update(live)

    def stats(self) -> dict[OfferingKey, BootStats]:
        """Per offering, its boots' count, median and p90. The same dict while no boot was added since the last
        call (the simulator asks every tick): read it, do not change it."""
        if self._given is not None:
            return self._given
        for key, boots in self._boots.items():
            if key not in self._stats:
                values = list(boots)
                self._stats[key] = BootStats(len(values), quantile(values, 0.5), quantile(values, 0.9))
        self._given = dict(self._stats)
        return self._given


def lead_seconds(pool: Pool, boot_times: Mapping[OfferingKey, BootStats]) -> tuple[float, str]:
    """(the pool's lead in seconds, why): the slowest p90 among the candidates' offerings with enough boots."""
    lead = 0.0
    for key, st in boot_times.items():
        if st.samples >= MIN_SAMPLES and st.p90_seconds > lead:
            for c in pool.candidates:
                if matches(c, key):
                    lead = st.p90_seconds
                    break
    if lead <= 0:
        return pool.scaling.boot_seconds, f"boot lead {pool.scaling.boot_seconds:g}s (scaling.boot_seconds)"
    return lead, f"boot lead {lead:.0f}s (p90 learned from the pool's offerings' boots)"
