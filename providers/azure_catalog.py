"""Azure prices: a shipped, dated catalog of on-demand and spot $/hour per (VM size, location), overlaid by the
prices `gpu-autoscaler prices refresh` read from the public Retail Prices API (providers/azure_prices.py).

The shipped file is `providers/data/azure_prices.csv`, one row per (size, location): the Linux pay-as-you-go
price, the Linux spot price (empty: unknown, so no spot offering is made from the catalog), the GPU count and
name, where the row was taken from (`repository@commit:path`) and the date of that data.

About the shipped rows: they come from skypilot-org/skypilot-catalog at commit 098741e7 (catalogs/v6/azure/
vms.csv), the snapshot the project's price extract (/work/shared/data/prices/gpu_prices_extract.csv) names. Its
commit date could not be learnt; the rows carry 2024-05-07, the only date that extract names, as the AWS rows
do. Corrections to the source, per the extract's caveats: the H100 v5 rows list a spot price equal to the
on-demand price (a data error), shipped as unknown spot; Standard_ND96isr_H100_v5 lists 12 GPUs, shipped as 8
(the VM has 8 H100). The source has US locations only: other locations (westeurope, ...) get prices from
`prices refresh`, and no offering before that.

The overlay is `<state_dir>/prices/azure_prices.csv`, same columns; its rows win over shipped rows of the same
(size, location). A malformed overlay row is skipped with a warning; a malformed shipped row raises (a packaging
bug). No cloud SDK is imported here.
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

COLUMNS = ("vm_size", "region", "on_demand_usd_per_hour", "spot_usd_per_hour", "gpus", "gpu", "source", "as_of")
CATALOG_FILE = "azure_prices.csv"  # shipped under providers/data/, refreshed under <state_dir>/prices/

Key = tuple[str, str]  # (VM size, location)


@dataclass(frozen=True)
class AzurePrice:
    on_demand_usd_per_hour: float
    spot_usd_per_hour: float | None  # None: not known (or not sold)
    gpus: int
    gpu: str
    source: str
    as_of: date


def overlay_path(state_dir: Path) -> Path:
    return _catalog_files.overlay_path(state_dir, CATALOG_FILE)


def _positive(text: str | None, what: str) -> float:
    value = float(text or "")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number")
    return value


def parse_row(row: Mapping[str, str | None]) -> tuple[Key, AzurePrice]:
    """One CSV row -> ((size, location), price). Raises CatalogFormatError on a missing or impossible value."""
    try:
        size = (row["vm_size"] or "").strip()
        region = (row["region"] or "").strip()
        on_demand = _positive(row["on_demand_usd_per_hour"], "on_demand_usd_per_hour")
        spot_text = (row["spot_usd_per_hour"] or "").strip()
        spot = _positive(spot_text, "spot_usd_per_hour") if spot_text else None
        gpus = int(row["gpus"] or "")
        gpu = (row["gpu"] or "").strip()
        source = (row["source"] or "").strip()
        as_of = date.fromisoformat((row["as_of"] or "").strip())
    except (KeyError, ValueError) as exc:
        raise CatalogFormatError(f"bad catalog row {dict(row)!r}: {exc}") from None
    if not size or not region or not source:
        raise CatalogFormatError(f"bad catalog row {dict(row)!r}: empty vm_size, region or source")
    if gpus < 0:
        raise CatalogFormatError(f"bad catalog row {dict(row)!r}: negative gpus")
    if spot is not None and spot >= on_demand:
        raise CatalogFormatError(f"bad catalog row {dict(row)!r}: a spot price must be below on-demand")
    return (size, region), AzurePrice(on_demand, spot, gpus, gpu, source, as_of)


def read_rows(text: str, *, where: str, strict: bool) -> dict[Key, AzurePrice]:
    """Parse a catalog CSV. `strict`: any bad or duplicate row raises; otherwise bad rows are logged and skipped
    (a later duplicate wins). A missing column always raises."""
    return _catalog_files.read_rows(text, COLUMNS, parse_row, where=where, strict=strict, log=log)


def format_rows(prices: Mapping[Key, AzurePrice]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for (size, region), p in sorted(prices.items()):
        spot = "" if p.spot_usd_per_hour is None else repr(p.spot_usd_per_hour)
        writer.writerow(
            [size, region, repr(p.on_demand_usd_per_hour), spot, p.gpus, p.gpu, p.source, p.as_of.isoformat()]
        )
    return buf.getvalue()


def write_overlay(state_dir: Path, prices: Mapping[Key, AzurePrice]) -> Path:
    """Replace the overlay atomically (a reader sees the old file or the new one, never half of one)."""
    return _catalog_files.write_atomically(overlay_path(state_dir), format_rows(prices))


def shipped_text() -> str:
    return _catalog_files.shipped_text(CATALOG_FILE)


def read_overlay(state_dir: Path) -> dict[Key, AzurePrice]:
    """The refreshed prices under `state_dir` ({} when there are none or the file cannot be used)."""
    return _catalog_files.read_overlay(state_dir, CATALOG_FILE, COLUMNS, parse_row, log=log)


class AzureCatalog:
    """On-demand and spot prices by (VM size, location)."""

    def __init__(self, prices: Mapping[Key, AzurePrice]) -> None:
        self._prices: dict[Key, AzurePrice] = dict(prices)

    @classmethod
    def shipped(cls) -> AzureCatalog:
        return cls(_catalog_files.read_shipped(CATALOG_FILE, COLUMNS, parse_row, log=log))

    @classmethod
    def load(cls, state_dir: Path | None) -> AzureCatalog:
        """The shipped catalog overlaid by `<state_dir>/prices/azure_prices.csv` where that exists."""
        prices = cls.shipped()._prices
        if state_dir is not None:
            prices.update(read_overlay(state_dir))
        return cls(prices)

    def price(self, vm_size: str, region: str) -> AzurePrice | None:
        return self._prices.get((vm_size, region))

    def sizes(self) -> set[str]:
        return {s for s, _ in self._prices}

    def regions(self, sizes: Iterable[str] | None = None) -> set[str]:
        wanted = None if sizes is None else set(sizes)
        return {r for s, r in self._prices if wanted is None or s in wanted}

    def items(self) -> Iterator[tuple[Key, AzurePrice]]:
        return iter(sorted(self._prices.items()))

    def __len__(self) -> int:
        return len(self._prices)
