"""What a `gpu-autoscaler prices refresh` did, per region: the same report for every cloud's refresher."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path


@dataclass(frozen=True)
class RegionRefresh:
    """One region's refresh. `kept`: types whose earlier price (shipped or refreshed before) stays; `missing`:
    types with no price at all; `reasons`: why anything was not refreshed (empty if all were)."""

    region: str
    refreshed: tuple[str, ...]
    kept: tuple[str, ...]
    missing: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def why(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class RefreshReport:
    as_of: date
    regions: tuple[RegionRefresh, ...]
    written: tuple[
        Path, ...
    ]  # the overlay files written; none when nothing was refreshed (files left as they were)

    @property
    def overlay(self) -> Path | None:
        """The (first) overlay file written, or None."""
        return self.written[0] if self.written else None

    @property
    def refreshed(self) -> int:
        return sum(len(r.refreshed) for r in self.regions)

    @property
    def kept(self) -> int:
        return sum(len(r.kept) for r in self.regions)

    @property
    def missing(self) -> int:
        return sum(len(r.missing) for r in self.regions)

    def region(self, name: str) -> RegionRefresh | None:
        return next((r for r in self.regions if r.region == name), None)
