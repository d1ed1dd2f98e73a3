"""AWS on-demand prices: a shipped, dated catalog overlaid by the prices `gpu-autoscaler prices refresh` fetched.

The shipped file is `providers/data/aws_on_demand.csv`: one row per (instance type, region) with the on-demand
Linux $/hour, the GPU count and name, where the row was taken from (`repository@commit:path`) and the date of that
data. Every price carries its date, so a consumer can tell how old it is.

About the shipped dates: the rows come from skypilot-org/skypilot-catalog at commit 001367d2, whose commit date
could not be learnt; they carry 2024-05-07, the only date the project's price extract names (an older snapshot of
the same catalog). The snapshot is newer than that (it lists g6e and p5en), so the age is overstated, never
understated. `prices refresh` replaces them with dated prices from the AWS Price List API.

The overlay is `<state_dir>/prices/aws_on_demand.csv` with the same columns, written by the refresh
(providers/aws_prices.py). Its rows win over shipped rows of the same (type, region). A malformed overlay row is
skipped with a warning (the daemon keeps running on the shipped price); a malformed shipped row is a packaging bug
and raises.

No cloud SDK is imported here: the daemon reads prices without boto3's import cost.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from providers import _catalog_files
from providers._catalog_files import CatalogFormatError as CatalogFormatError

log = logging.getLogger(__name__)

COLUMNS = ("instance_type", "region", "on_demand_usd_per_hour", "gpus", "gpu", "source", "as_of")
CATALOG_FILE = "aws_on_demand.csv"  # shipped under providers/data/, refreshed under <state_dir>/prices/


@dataclass(frozen=True)
class CatalogPrice:
    usd_per_hour: float
    gpus: int
    gpu: str
    source: str
    as_of: date

    def age_days(self, today: date) -> int:
        """Whole days between the price's date and `today` (0 for a price of today or a later date)."""
        return max(0, (today - self.as_of).days)


Key = tuple[str, str]  # (instance type, region)


def overlay_path(state_dir: Path) -> Path:
    """Where `prices refresh` writes, and the daemon reads, refreshed prices."""
    return _catalog_files.overlay_path(state_dir, CATALOG_FILE)


def parse_row(row: Mapping[str, str | None]) -> tuple[Key, CatalogPrice]:
    """One CSV row -> ((type, region), price). Raises CatalogFormatError on a missing or impossible value."""
    try:
        itype = (row["instance_type"] or "").strip()
        region = (row["region"] or "").strip()
        price = float(row["on_demand_usd_per_hour"] or "")
        gpus = int(row["gpus"] or "")
        gpu = (row["gpu"] or "").strip()
        source = (row["source"] or "").strip()
        as_of = date.fromisoformat((row["as_of"] or "").strip())
    except (KeyError, ValueError) as exc:
        raise CatalogFormatError(f"bad catalog row {dict(row)!r}: {exc}") from None
    if not itype or not region:
        raise CatalogFormatError(f"bad catalog row {dict(row)!r}: empty instance_type or region")
    if not math.isfinite(price) or price <= 0:
        raise CatalogFormatError(f"bad catalog row {dict(row)!r}: price must be a positive number")
    if gpus < 0:
        raise CatalogFormatError(f"bad catalog row {dict(row)!r}: negative gpus")
    if not source:
        raise CatalogFormatError(f"bad catalog row {dict(row)!r}: no source")
    return (itype, region), CatalogPrice(price, gpus, gpu, source, as_of)


def read_rows(text: str, *, where: str, strict: bool) -> dict[Key, CatalogPrice]:
    """Parse a catalog CSV. `strict`: any bad row raises; otherwise bad rows are logged and skipped. A missing
    column always raises. A (type, region) listed twice: the later row wins (strict: raises)."""
    return _catalog_files.read_rows(text, COLUMNS, parse_row, where=where, strict=strict, log=log)


def format_rows(prices: Mapping[Key, CatalogPrice]) -> str:
    """The CSV text of `prices` (sorted by type, then region), in the shipped file's format."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for (itype, region), p in sorted(prices.items()):
        writer.writerow([itype, region, repr(p.usd_per_hour), p.gpus, p.gpu, p.source, p.as_of.isoformat()])
    return buf.getvalue()


def write_overlay(state_dir: Path, prices: Mapping[Key, CatalogPrice]) -> Path:
    """Replace the overlay file atomically (a reader sees the old file or the new one, never half of one)."""
    return _catalog_files.write_atomically(overlay_path(state_dir), format_rows(prices))


def shipped_text() -> str:
    return _catalog_files.shipped_text(CATALOG_FILE)


def read_overlay(state_dir: Path) -> dict[Key, CatalogPrice]:
    """The refreshed prices under `state_dir` ({} when there are none or the file cannot be used)."""
    return _catalog_files.read_overlay(state_dir, CATALOG_FILE, COLUMNS, parse_row, log=log)


class AwsCatalog:
    """On-demand prices by (instance type, region)."""

    def __init__(self, prices: Mapping[Key, CatalogPrice]) -> None:
        self._prices: dict[Key, CatalogPrice] = dict(prices)

    @classmethod
    def shipped(cls) -> AwsCatalog:
        """The catalog that ships with the package, without any refreshed prices."""
        return cls(_catalog_files.read_shipped(CATALOG_FILE, COLUMNS, parse_row, log=log))

    @classmethod
    def load(cls, state_dir: Path | None) -> AwsCatalog:
        """The shipped catalog overlaid by `<state_dir>/prices/aws_on_demand.csv` where that exists."""
        prices = cls.shipped()._prices
        if state_dir is not None:
            prices.update(read_overlay(state_dir))
        return cls(prices)

    def price(self, instance_type: str, region: str) -> CatalogPrice | None:
        return self._prices.get((instance_type, region))

    def instance_types(self) -> set[str]:
        return {t for t, _ in self._prices}

    def regions(self, instance_types: Iterable[str] | None = None) -> set[str]:
        """Regions with a price for any of `instance_types` (None: for any type)."""
        wanted = None if instance_types is None else set(instance_types)
        return {r for t, r in self._prices if wanted is None or t in wanted}

    def oldest_as_of(self) -> date:
        """The date of the oldest price. Raises ValueError for an empty catalog."""
        if not self._prices:
            raise ValueError("the catalog has no prices")
        return min(p.as_of for p in self._prices.values())

    def items(self) -> Iterator[tuple[Key, CatalogPrice]]:
        return iter(sorted(self._prices.items()))

    def as_dict(self) -> dict[Key, CatalogPrice]:
        return dict(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __contains__(self, key: object) -> bool:
        return key in self._prices
