"""`gpu-autoscaler prices refresh` for GCP: list prices from the Cloud Billing Catalog API, where credentials allow.

The Compute Engine service (`services/6F81-5844-456A`) lists SKUs per resource, not per machine type: "N1
Predefined Instance Core running in Americas" ($/vCPU-hour), "... Ram ..." ($/GiB-hour), "Nvidia Tesla T4 GPU
running in Americas" ($/GPU-hour), each with `serviceRegions`, `category.usageType` (OnDemand, or Preemptible for
spot) and a price in `pricingInfo[0].pricingExpression.tieredRates`. So a host price is computed from the
machine type's shape in the catalog: vcpus x core rate + memory_gib x RAM rate; a GPU price is its SKU's rate.
Only the families below are matched (HOST_SKUS, GPU_SKUS); a part the API does not price unambiguously (no SKU,
or several SKUs with different prices for the same region) keeps its earlier price, and the report says why.

The prices read are written to the overlay `<state_dir>/prices/gcp_machine_types.csv` and `gcp_accelerators.csv`
(atomically, merged with an earlier refresh's rows) with source "gcp-cloud-billing-catalog-api" and the refresh's
date; the daemon reads them over the shipped catalog (providers/gcp_catalog.py). A row is refreshed only when
each of its markets could be (a catalog row with a spot price needs a spot rate too): a row never mixes dates.

Credentials: `clouds.gcp.credentials_file`, else application default credentials (scope cloud-platform; the
Billing Catalog API needs no role beyond an enabled API). Without usable credentials, or when the API cannot be
reached, nothing changes: the catalog stays, and the report says why. google-auth is imported only when run.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoscaler import config
from autoscaler.model import Market
from providers._catalog_files import write_atomically
from providers._refresh_report import RefreshReport, RegionRefresh
from providers.gcp_catalog import (
    ACCELERATORS_FILE,
    MACHINES_FILE,
    GcpCatalog,
    Key,
    MachineRow,
    Part,
    format_accelerators,
    format_machines,
    overlay_path,
    parse_type,
    read_overlay,
)

if TYPE_CHECKING:
    from rich.console import Console

SOURCE = "gcp-cloud-billing-catalog-api"
ENDPOINT = "https://cloudbilling.googleapis.com"
SERVICE = "services/6F81-5844-456A"  # Compute Engine
PAGE_SIZE = 5000
MAX_PAGES = 40
TIMEOUT_SECONDS = 30.0
# machine type prefix -> the SKU description's family ("<family> Core|Ram running in ...")
HOST_SKUS = {"n1-": "N1 Predefined Instance", "a2-": "A2 Instance", "a3-highgpu-": "A3 Instance",
             "g2-": "G2 Instance"}  # fmt: skip
# accelerator type -> the SKU description's name ("Nvidia <name> GPU running in ...")
GPU_SKUS = {"nvidia-tesla-t4": "Tesla T4", "nvidia-tesla-v100": "Tesla V100", "nvidia-tesla-p100": "Tesla P100",
            "nvidia-tesla-p4": "Tesla P4", "nvidia-l4": "L4", "nvidia-tesla-a100": "Tesla A100",
            "nvidia-a100-80gb": "Tesla A100 80GB", "nvidia-h100-80gb": "H100 80GB"}  # fmt: skip
_MARKETS = {"OnDemand": Market.ON_DEMAND, "Preemptible": Market.SPOT}
_HOST = re.compile(r"^(?:spot preemptible )?(?P<family>.+?) (?P<kind>core|ram) running in ", re.IGNORECASE)
_GPU = re.compile(r"^(?:spot preemptible )?nvidia (?P<name>.+?) gpu (?:attached to spot preemptible vms )?running in ",
                  re.IGNORECASE)  # fmt: skip
Fetch = Callable[[str, Mapping[str, str]], dict[str, Any]]
RateKey = tuple[str, str, Market, str]  # (kind: core|ram|gpu, family or accelerator, market, region)


class RefreshFailure(Exception):
    """Reading the Billing Catalog failed: nothing can be refreshed."""


def fetch_skus(fetch: Fetch, endpoint: str = ENDPOINT) -> list[dict[str, Any]]:
    """Every Compute Engine SKU, page by page."""
    url = f"{endpoint.rstrip('/')}/v1/{SERVICE}/skus"
    skus: list[dict[str, Any]] = []
    token = ""
    for _ in range(MAX_PAGES):
        params = {"currencyCode": "USD", "pageSize": str(PAGE_SIZE), **({"pageToken": token} if token else {})}
        page = fetch(url, params)
        skus.extend(s for s in page.get("skus", []) if isinstance(s, dict))
        token = str(page.get("nextPageToken") or "")
        if not token:
            return skus
    raise RefreshFailure(f"more than {MAX_PAGES} pages of SKUs: giving up")


def rates(skus: Iterable[Mapping[str, Any]]) -> dict[RateKey, set[float]]:
    """The hourly USD rates of the SKUs we can read, by (kind, family or accelerator, market, region)."""
    families = {f.lower(): f for f in HOST_SKUS.values()}
    gpus = {name.lower(): acc for acc, name in GPU_SKUS.items()}
    out: dict[RateKey, set[float]] = defaultdict(set)
    for sku in skus:
        category = sku.get("category") or {}
        market = _MARKETS.get(str(category.get("usageType", "")))
        if market is None or category.get("resourceFamily") != "Compute":
            continue
        description = str(sku.get("description", ""))
        what: tuple[str, str] | None = None
        if (m := _GPU.match(description)) and m["name"].lower() in gpus:
            what, unit = ("gpu", gpus[m["name"].lower()]), "h"
        elif (m := _HOST.match(description)) and m["family"].lower() in families:
            kind = m["kind"].lower()
            what, unit = (kind, families[m["family"].lower()]), "GiBy.h" if kind == "ram" else "h"
        usd = _unit_price(sku, unit) if what else None
        if what is None or usd is None:
            continue
        for region in sku.get("serviceRegions") or []:
            out[(what[0], what[1], market, str(region))].add(usd)
    return out


def _unit_price(sku: Mapping[str, Any], unit: str) -> float | None:
    try:
        expression = sku["pricingInfo"][0]["pricingExpression"]
        if expression.get("usageUnit") != unit:
            return None
        tier = min(expression["tieredRates"], key=lambda t: float(t.get("startUsageAmount", 0)))
        price = tier["unitPrice"]
        return int(price.get("units") or 0) + int(price.get("nanos") or 0) / 1e9
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _one(found: Mapping[RateKey, set[float]], key: RateKey) -> tuple[float | None, str]:
    values = found.get(key, set())
    if len(values) == 1:
        return next(iter(values)), ""
    kind, what, market, region = key
    if not values:
        return None, f"no {market} {what} {kind} SKU for {region}"
    return None, f"{len(values)} different {market} {what} {kind} prices for {region}"


def _priced(
    market_usd: Callable[[Market], tuple[float | None, str]], old: Part, as_of: date
) -> tuple[Part | None, str]:
    """A refreshed part: on-demand always, spot too when the old row had one."""
    on_demand, why = market_usd(Market.ON_DEMAND)
    spot, spot_why = market_usd(Market.SPOT) if on_demand is not None else (None, "")
    if on_demand is None or (old.spot is not None and spot is None):
        return None, why or spot_why
    return Part(round(on_demand, 6), None if spot is None else round(spot, 6), SOURCE, as_of), ""


def refresh(
    state_dir: Path, catalog: GcpCatalog, regions: Iterable[str], machines: Iterable[str], accelerators: Iterable[str],
    skus: Iterable[Mapping[str, Any]] | None, failure: str | None, as_of: date,
) -> RefreshReport:  # fmt: skip
    """Refresh every (machine type or accelerator, region) from `skus`; `failure` (no SKUs) keeps them all."""
    found = rates(skus or [])
    machines, accelerators = set(machines), set(accelerators)
    new_machines: dict[Key, MachineRow] = {}
    new_accelerators: dict[Key, Part] = {}
    results = []
    for region in sorted(set(regions)):
        done: list[str] = []
        kept: list[str] = []
        missing: list[str] = []
        reasons: list[str] = []
        for name in sorted(machines) + sorted(accelerators):
            if name in machines:
                row = catalog.machines.get((name, region))
                known, why = row is not None, failure or _machine(found, name, region, row, as_of, new_machines)
            else:
                acc = catalog.accelerators.get((name, region))
                known, why = (
                    acc is not None,
                    failure or _accelerator(found, name, region, acc, as_of, new_accelerators),
                )
            if not why:
                done.append(name)
                continue
            (kept if known else missing).append(name)
            if why not in reasons:
                reasons.append(why)
        results.append(RegionRefresh(region, tuple(done), tuple(kept), tuple(missing), tuple(reasons)))
    return RefreshReport(as_of, tuple(results), _save(state_dir, new_machines, new_accelerators))


def _machine(found: Mapping[RateKey, set[float]], name: str, region: str, row: MachineRow | None, as_of: date,
             out: dict[Key, MachineRow]) -> str:  # fmt: skip
    """Refresh one host price into `out`; the reason when it cannot be ("" when it was)."""
    if row is None:
        return f"{name}: not in the catalog for {region} (its shape is unknown)"
    family = next((f for prefix, f in HOST_SKUS.items() if name.startswith(prefix)), None)
    if family is None:
        return f"{name}: no Billing Catalog SKU rule for this family"

    def usd(market: Market) -> tuple[float | None, str]:
        core, why = _one(found, ("core", family, market, region))
        ram, ram_why = _one(found, ("ram", family, market, region))
        if core is None or ram is None:
            return None, why or ram_why
        return row.vcpus * core + row.memory_gib * ram, ""

    part, why = _priced(usd, row.price, as_of)
    if part is not None:
        out[(name, region)] = replace(row, price=part)
    return why


def _accelerator(found: Mapping[RateKey, set[float]], name: str, region: str, old: Part | None, as_of: date,
                 out: dict[Key, Part]) -> str:  # fmt: skip
    if name not in GPU_SKUS:
        return f"{name}: no Billing Catalog SKU rule for this GPU"
    if old is None:
        return f"{name}: not in the catalog for {region}"
    part, why = _priced(lambda market: _one(found, ("gpu", name, market, region)), old, as_of)
    if part is not None:
        out[(name, region)] = part
    return why


def _save(
    state_dir: Path, machines: Mapping[Key, MachineRow], accelerators: Mapping[Key, Part]
) -> tuple[Path, ...]:
    """Merge the refreshed rows into the overlay files (an earlier refresh's other rows stay)."""
    written: list[Path] = []
    old_machines, old_accelerators = read_overlay(state_dir)
    if machines:
        rows = {**old_machines, **machines}
        written.append(write_atomically(overlay_path(state_dir, MACHINES_FILE), format_machines(rows)))
    if accelerators:
        parts = {**old_accelerators, **accelerators}
        written.append(write_atomically(overlay_path(state_dir, ACCELERATORS_FILE), format_accelerators(parts)))
    return tuple(written)


def refresh_targets(
    policy: config.Policy, catalog: GcpCatalog
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(regions, machine types, accelerators, notes) to refresh: the parts of the policy's GCP candidates (without
    any: the whole catalog) in the regions of `clouds.gcp` (else the candidates', else the catalog's)."""
    notes: list[str] = []
    candidates = [c for p in policy.pools for c in p.candidates if c.cloud == "gcp"]
    machines: set[str] = set()
    accelerators: set[str] = set()
    for cand in candidates:
        try:
            t = parse_type(cand.instance_type)
        except ValueError as exc:
            notes.append(f"skipped: {exc}")
            continue
        machines.add(t.machine_type)
        if t.accelerator:
            accelerators.add(t.accelerator)
        accelerators |= {row.gpu for (m, _), row in catalog.machines.items() if m == t.machine_type and row.gpu}
    if not candidates:
        machines = catalog.machine_types()
        accelerators = {a for a, _ in catalog.accelerators}
        notes.append("the policy has no GCP candidates: refreshing every type of the catalog")
    gcp = policy.clouds.gcp
    regions = sorted(gcp.regions) if gcp is not None and gcp.regions else []
    regions = regions or sorted({r for c in candidates for r in c.regions or []})
    if not regions:
        regions = sorted(catalog.regions())
        notes.append("the policy names no GCP regions: refreshing every region of the catalog")
    return regions, sorted(machines), sorted(accelerators), notes


def session_fetch(cfg: config.GcpCloud | None) -> Fetch:
    """A fetch over an AuthorizedSession with the daemon's GCP credentials (raises RefreshFailure without)."""
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import AuthorizedSession

    scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    try:
        if cfg is not None and cfg.credentials_file is not None:
            from google.oauth2 import service_account

            from_file: Any = service_account.Credentials.from_service_account_file  # untyped in google-auth
            credentials = from_file(str(cfg.credentials_file), scopes=scopes)
        else:
            credentials, _ = google.auth.default(scopes=scopes)
    except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
        raise RefreshFailure(f"no usable GCP credentials ({type(exc).__name__}): {exc}") from None
    authorized: Any = AuthorizedSession  # untyped in google-auth
    return fetch_with(authorized(credentials))


def fetch_with(session: Any) -> Fetch:
    """A fetch over a requests-like session (an AuthorizedSession in production, a plain one in tests)."""

    def fetch(url: str, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            response = session.get(url, params=dict(params), timeout=TIMEOUT_SECONDS)
        except Exception as exc:  # no network, a token that cannot be refreshed
            raise RefreshFailure(f"the Billing Catalog API is unreachable ({type(exc).__name__}): {exc}") from None
        return _answer(int(response.status_code), str(response.text), response.json)

    return fetch


def _answer(status: int, text: str, as_json: Callable[[], Any]) -> dict[str, Any]:
    if status in (401, 403):
        raise RefreshFailure(f"the credentials may not read the Billing Catalog (HTTP {status}): {text[:200]}")
    if status >= 400:
        raise RefreshFailure(f"Billing Catalog API error (HTTP {status}): {text[:200]}")
    try:
        answer = as_json()
    except ValueError as exc:
        raise RefreshFailure(f"unreadable Billing Catalog answer: {exc}") from None
    if not isinstance(answer, dict):
        raise RefreshFailure("unreadable Billing Catalog answer: not an object")
    return answer


def run_refresh(
    policy: config.Policy, state_dir: Path, console: Console, *, fetch: Fetch | None = None,
    endpoint: str = ENDPOINT, now: datetime | None = None,
) -> int:  # fmt: skip
    """`gpu-autoscaler prices refresh`: refresh, print a row per region, and return the exit code: 0 when at least
    one requested price can be had (refreshed, or kept from the catalog), 1 when none can."""
    from rich.table import Table

    catalog = GcpCatalog.load(state_dir)
    regions, machines, accelerators, notes = refresh_targets(policy, catalog)
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    when = now if now is not None else datetime.now(UTC)
    skus: list[dict[str, Any]] | None = None
    failure: str | None = None
    try:
        skus = fetch_skus(fetch or session_fetch(policy.clouds.gcp), endpoint)
    except RefreshFailure as exc:
        failure = str(exc)
    except ImportError as exc:
        failure = f"google-auth is not installed ({exc.name}): pip install 'gpu-autoscaler[gcp]'"
    report = refresh(
        state_dir, catalog, regions, machines, accelerators, skus, failure, when.astimezone(UTC).date()
    )

    table = Table(
        title=f"GCP prices ({len(machines)} machine types, {len(accelerators)} GPUs x {len(regions)} regions)"
    )
    for column in ("region", "refreshed", "kept from catalog", "no price", "why"):
        table.add_column(column, overflow="fold")
    for r in report.regions:
        table.add_row(
            r.region, _count(r.refreshed), _count(r.kept), _count(r.missing), "; ".join(r.reasons) or "-"
        )
    console.print(table)
    if report.written:
        console.print(f"Saved {report.refreshed} refreshed prices (as of {report.as_of}) to "
                      f"{', '.join(str(p) for p in report.written)}")  # fmt: skip
    else:
        console.print("No price was refreshed: the daemon keeps using the catalog it has.")
    return 0 if report.refreshed + report.kept > 0 else 1


def _count(names: Iterable[str]) -> str:
    found = list(names)
    return f"{len(found)} ({', '.join(found)})" if 0 < len(found) <= 3 else str(len(found))
