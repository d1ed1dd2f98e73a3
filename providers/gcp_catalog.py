"""GCE prices: a shipped, dated catalog in two parts, overlaid by what `gpu-autoscaler prices refresh` fetched.

Compute Engine bills a GPU VM in parts: the host (vCPUs and memory) and, separately, each GPU. That holds for the
accelerator-optimized families (a2, a3, g2: their GPUs come with the machine type but are billed as GPUs) and for
N1 with attached GPUs (guestAccelerators). So the catalog has two files under `providers/data/`:

- `gcp_machine_types.csv`: one row per (machine type, region) with its shape (vcpus, memory_gib), the GPUs that
  come with it (gpus, gpu: the GCE accelerator type, e.g. nvidia-l4), the on-demand and spot $/hour, and
  `price_covers`: `host` when the GPUs are billed separately (every shipped row), `host+gpus` when the price
  already includes them.
- `gcp_accelerators.csv`: one row per (accelerator type, region) with the on-demand and spot $/hour of one GPU.

An offering's price is the host price plus gpus x the GPU price, in the same market; if either part has no price
there, the offering has none (never a guess). Compute Engine has no spot price history API: spot prices come from
this catalog too. Each row carries its source (`repository@commit:path`) and the date of its data; an offering's
price is as old as its older part.

Instance types. An accelerator-optimized type is its machine type name (`g2-standard-8`, `a3-highgpu-8g`). An N1
host with attached GPUs is written `<machine type>+<accelerator>[x<count>]`, e.g. `n1-standard-8+nvidia-tesla-t4`
(one GPU) or `n1-standard-16+nvidia-tesla-v100x2`, so that each combination is its own offering with its own
price, GPU count and capacity memory (a T4 stockout does not block V100s).

About the shipped dates: the rows come from skypilot-org/skypilot-catalog at commit 04895829 (catalogs/v6/gcp/
vms.csv), whose commit date could not be learnt. Like the AWS catalog they carry 2024-05-07, the only date the
project's price extract names; the snapshot is newer (it lists a3-ultragpu and TPU v6e), so the age is overstated,
never understated. Caveat found while copying: that snapshot prices H100 GPUs in us-central1/us-west1 at about
half the us-east4 rate and A100s in europe-west4 below us-central1; they are shipped as the source has them, and
`prices refresh` (Cloud Billing Catalog API) replaces them with current list prices.

The overlay is `<state_dir>/prices/gcp_machine_types.csv` and `gcp_accelerators.csv` (same columns), written by
the refresh (providers/gcp_prices.py); its rows win over shipped rows of the same key. A malformed overlay row is
skipped with a warning; a malformed shipped row is a packaging bug and raises. No cloud SDK is imported here.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TypeVar

from autoscaler.model import Market
from providers import _catalog_files
from providers._catalog_files import CatalogFormatError as CatalogFormatError
from providers._catalog_files import RowParser
from providers._catalog_files import overlay_path as overlay_path

log = logging.getLogger(__name__)

MACHINE_COLUMNS = (
    "machine_type",
    "region",
    "vcpus",
    "memory_gib",
    "gpus",
    "gpu",
    "price_covers",
    "on_demand_usd_per_hour",
    "spot_usd_per_hour",
    "source",
    "as_of",
)
ACCELERATOR_COLUMNS = ("accelerator", "region", "on_demand_usd_per_hour", "spot_usd_per_hour", "source", "as_of")
MACHINES_FILE = "gcp_machine_types.csv"
ACCELERATORS_FILE = "gcp_accelerators.csv"
# Families whose GPUs come with the machine type: an instance of them lists no "+accelerator" in its type name.
BUNDLED_GPU_FAMILIES = ("a2-", "a3-", "a4-", "g2-", "g4-")
_TYPE = re.compile(
    r"^(?P<machine>[a-z][a-z0-9-]*[a-z0-9])(?:\+(?P<acc>[a-z][a-z0-9-]*?)(?:x(?P<count>[1-9][0-9]?))?)?$"
)

Key = tuple[str, str]  # (machine type or accelerator, region)
_R = TypeVar("_R")


@dataclass(frozen=True)
class GcpType:
    """An instance type as the policy names it: a machine type, maybe with attached GPUs."""

    machine_type: str
    accelerator: str | None = None
    count: int = 0

    @property
    def name(self) -> str:
        """The canonical spelling (a count of 1 is left out)."""
        if self.accelerator is None:
            return self.machine_type
        return f"{self.machine_type}+{self.accelerator}" + (f"x{self.count}" if self.count != 1 else "")


def parse_type(text: str) -> GcpType:
    """`g2-standard-8`, `n1-standard-8+nvidia-tesla-t4`, `n1-standard-16+nvidia-tesla-v100x2`. Raises ValueError."""
    m = _TYPE.match(text.strip())
    if m is None or (m["acc"] and not m["count"] and re.search(r"(x[0-9]+|-)$", m["acc"])):  # x0, x100, t4-
        raise ValueError(
            f"{text!r} is not a GCE instance type: a machine type (g2-standard-8) or a machine type with "
            "attached GPUs (n1-standard-8+nvidia-tesla-t4, n1-standard-16+nvidia-tesla-v100x2)"
        )
    if m["acc"] is None:
        return GcpType(m["machine"])
    return GcpType(m["machine"], m["acc"], int(m["count"] or 1))


def type_of_instance(machine_type: str, accelerators: Iterable[tuple[str, int]]) -> GcpType:
    """The instance type a VM was launched as, from its machine type and guestAccelerators."""
    attached = [(a, n) for a, n in accelerators if n > 0]
    if machine_type.startswith(BUNDLED_GPU_FAMILIES) or not attached:
        return GcpType(machine_type)
    (acc, count), *_ = attached
    return GcpType(machine_type, acc, count)


def region_of(zone: str) -> str:
    """us-central1-a -> us-central1."""
    return zone.rsplit("-", 1)[0]


@dataclass(frozen=True)
class Part:
    """One row's prices: on-demand, and spot where the source has one."""

    on_demand: float
    spot: float | None
    source: str
    as_of: date

    def usd(self, market: Market) -> float | None:
        return self.on_demand if market == Market.ON_DEMAND else self.spot


@dataclass(frozen=True)
class MachineRow:
    vcpus: float
    memory_gib: float
    gpus: int
    gpu: str
    covers_gpus: bool  # the price includes the GPUs (price_covers = host+gpus)
    price: Part


@dataclass(frozen=True)
class TypePrice:
    """What an instance type costs in a region and market, host and GPUs added up."""

    usd_per_hour: float
    gpus: int
    gpu: str
    source: str
    as_of: date


def _float(text: str | None, *, optional: bool = False) -> float | None:
    text = (text or "").strip()
    if not text and optional:
        return None
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a non-negative number")
    return value


def _part(row: Mapping[str, str | None]) -> Part:
    on_demand = _float(row["on_demand_usd_per_hour"])
    spot = _float(row["spot_usd_per_hour"], optional=True)
    source = (row["source"] or "").strip()
    if on_demand is None or on_demand <= 0 or (spot is not None and spot <= 0):
        raise ValueError("prices must be positive")
    if not source:
        raise ValueError("no source")
    return Part(on_demand, spot, source, date.fromisoformat((row["as_of"] or "").strip()))


def parse_machine_row(row: Mapping[str, str | None]) -> tuple[Key, MachineRow]:
    covers = (row["price_covers"] or "").strip()
    if covers not in ("host", "host+gpus"):
        raise ValueError(f"price_covers must be 'host' or 'host+gpus', not {covers!r}")
    gpus = int(row["gpus"] or "0")
    if gpus < 0:
        raise ValueError("negative gpus")
    key = ((row["machine_type"] or "").strip(), (row["region"] or "").strip())
    if not all(key):
        raise ValueError("empty machine_type or region")
    vcpus, memory = _float(row["vcpus"]), _float(row["memory_gib"])
    assert vcpus is not None and memory is not None
    return key, MachineRow(vcpus, memory, gpus, (row["gpu"] or "").strip(), covers == "host+gpus", _part(row))


def parse_accelerator_row(row: Mapping[str, str | None]) -> tuple[Key, Part]:
    key = ((row["accelerator"] or "").strip(), (row["region"] or "").strip())
    if not all(key):
        raise ValueError("empty accelerator or region")
    return key, _part(row)


def read_rows(
    text: str, columns: tuple[str, ...], parse: RowParser[_R], *, where: str, strict: bool
) -> dict[Key, _R]:
    """Parse a catalog CSV. `strict`: a bad or repeated row raises; otherwise it is logged and skipped (a later
    row of the same key wins). A missing column always raises."""
    return _catalog_files.read_rows(text, columns, parse, where=where, strict=strict, log=log)


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(value)


def format_machines(rows: Mapping[Key, MachineRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MACHINE_COLUMNS)
    for (mt, region), r in sorted(rows.items()):
        p = r.price
        writer.writerow(
            [
                mt,
                region,
                _fmt(r.vcpus),
                _fmt(r.memory_gib),
                r.gpus,
                r.gpu,
                "host+gpus" if r.covers_gpus else "host",
                _fmt(p.on_demand),
                _fmt(p.spot),
                p.source,
                p.as_of.isoformat(),
            ]
        )
    return buf.getvalue()


def format_accelerators(rows: Mapping[Key, Part]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ACCELERATOR_COLUMNS)
    for (acc, region), p in sorted(rows.items()):
        writer.writerow([acc, region, _fmt(p.on_demand), _fmt(p.spot), p.source, p.as_of.isoformat()])
    return buf.getvalue()


def read_overlay(state_dir: Path) -> tuple[dict[Key, MachineRow], dict[Key, Part]]:
    """The refreshed rows under `state_dir` (empty where there are none or a file cannot be used)."""
    return (
        _catalog_files.read_overlay(state_dir, MACHINES_FILE, MACHINE_COLUMNS, parse_machine_row, log=log),
        _catalog_files.read_overlay(
            state_dir, ACCELERATORS_FILE, ACCELERATOR_COLUMNS, parse_accelerator_row, log=log
        ),
    )


class GcpCatalog:
    """Host prices by (machine type, region) and GPU prices by (accelerator type, region)."""

    def __init__(self, machines: Mapping[Key, MachineRow], accelerators: Mapping[Key, Part]) -> None:
        self.machines: dict[Key, MachineRow] = dict(machines)
        self.accelerators: dict[Key, Part] = dict(accelerators)

    @classmethod
    def shipped(cls) -> GcpCatalog:
        return cls(
            _catalog_files.read_shipped(MACHINES_FILE, MACHINE_COLUMNS, parse_machine_row, log=log),
            _catalog_files.read_shipped(ACCELERATORS_FILE, ACCELERATOR_COLUMNS, parse_accelerator_row, log=log),
        )

    @classmethod
    def load(cls, state_dir: Path | None) -> GcpCatalog:
        """The shipped catalog overlaid by the refreshed prices under `state_dir`, where there are any."""
        catalog = cls.shipped()
        if state_dir is not None:
            machines, accelerators = read_overlay(state_dir)
            catalog.machines.update(machines)
            catalog.accelerators.update(accelerators)
        return catalog

    def price(self, instance_type: str | GcpType, region: str, market: Market) -> TypePrice | None:
        """Host plus GPUs in `market`; None when a part has no price there (or the type name is not valid)."""
        try:
            t = instance_type if isinstance(instance_type, GcpType) else parse_type(instance_type)
        except ValueError:
            return None
        host = self.machines.get((t.machine_type, region))
        if host is None or (host_usd := host.price.usd(market)) is None:
            return None
        parts = [host.price]
        gpu, gpus = (t.accelerator, t.count) if t.accelerator else (host.gpu, host.gpus)
        usd = host_usd
        if t.accelerator or (gpus and not host.covers_gpus):
            acc = self.accelerators.get((gpu, region))
            if acc is None or (gpu_usd := acc.usd(market)) is None:
                return None
            usd += gpus * gpu_usd
            parts.append(acc)
        sources = list(dict.fromkeys(p.source for p in parts))
        return TypePrice(round(usd, 6), gpus, gpu, " + ".join(sources), min(p.as_of for p in parts))

    def regions(self) -> set[str]:
        return {r for _, r in self.machines}

    def machine_types(self) -> set[str]:
        return {m for m, _ in self.machines}
