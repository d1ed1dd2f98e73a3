"""`gpu-autoscaler prices refresh` for Azure: on-demand and spot prices from the public Retail Prices API.

One query per location (`GET https://prices.azure.com/api/retail/prices?$filter=...`, no credentials), for the
sizes wanted: serviceName 'Virtual Machines', priceType 'Consumption', the location's armRegionName, the sizes'
armSkuName; pages follow `NextPageLink`. Of the items, only Linux hourly USD meters count: a productName with
"Windows" is the Windows price, a skuName with "Spot" the spot price, "Low Priority" (the old spot) is ignored.
Where several meters give different prices, the primary meter region's wins; still several: the size is skipped
(reported, not guessed). A spot price at or above on-demand is not a spot price: it is written as unknown.

The prices read are written to the overlay `<state_dir>/prices/azure_prices.csv` (atomically, merged with the
rows an earlier refresh wrote) with source "azure-retail-prices-api" and the refresh's date; the daemon reads
them over the shipped catalog (providers/azure_catalog.py). Nothing here raises for a network failure: what
could not be read keeps its earlier price and the report says why. An unreachable API stops the whole refresh;
an error answer stops that location only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from autoscaler import config
from providers._refresh_report import RefreshReport, RegionRefresh
from providers.azure_catalog import AzureCatalog, AzurePrice, Key, overlay_path, read_overlay, write_overlay

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)

RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
API_VERSION = "2023-01-01-preview"
SOURCE = "azure-retail-prices-api"
TIMEOUT = httpx.Timeout(20.0, connect=5.0)
MAX_PAGES = 20  # a location's query for a few sizes is a page or two; more means the filter is wrong


class _Failure(Exception):
    def __init__(self, reason: str, *, fatal: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal


def price_filter(region: str, sizes: Sequence[str]) -> str:
    names = " or ".join(f"armSkuName eq '{s}'" for s in sizes)
    return (
        f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and armRegionName eq '{region}' "
        f"and ({names})"
    )


def _items(client: httpx.Client, url: str, region: str, sizes: Sequence[str]) -> list[dict[str, Any]]:
    params: dict[str, str] | None = {"api-version": API_VERSION, "currencyCode": "USD",
                                     "$filter": price_filter(region, sizes)}  # fmt: skip
    out: list[dict[str, Any]] = []
    next_url: str | None = url
    for _ in range(MAX_PAGES):
        if next_url is None:
            return out
        try:
            response = client.get(next_url, params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Failure(f"the Retail Prices API is unreachable: {exc}", fatal=True) from None
        except httpx.HTTPError as exc:
            raise _Failure(f"Retail Prices API call failed ({type(exc).__name__}): {exc}", fatal=False) from None
        if response.status_code != 200:
            raise _Failure(f"Retail Prices API answered HTTP {response.status_code}", fatal=False)
        try:
            page = response.json()
            items = page.get("Items")
            if not isinstance(items, list):
                raise ValueError("no Items list")
        except (ValueError, AttributeError) as exc:
            raise _Failure(f"unreadable Retail Prices API answer: {exc}", fatal=False) from None
        out.extend(i for i in items if isinstance(i, dict))
        next_url, params = page.get("NextPageLink") or None, None  # the link carries the query
    raise _Failure(f"more than {MAX_PAGES} pages of prices", fatal=False)


def linux_prices(items: Iterable[dict[str, Any]]) -> dict[str, tuple[float | None, float | None, str]]:
    """size -> (on-demand, spot, note) from Retail Prices items; a price is None where none or several differ."""
    found: dict[tuple[str, bool], set[tuple[float, bool]]] = {}
    for item in items:
        product, sku = str(item.get("productName", "")), str(item.get("skuName", ""))
        if item.get("type") != "Consumption" or item.get("unitOfMeasure") != "1 Hour":
            continue
        if item.get("currencyCode", "USD") != "USD" or "Windows" in product or "Low Priority" in sku:
            continue
        try:
            usd = float(item.get("retailPrice"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if usd > 0:
            key = (str(item.get("armSkuName", "")), "Spot" in sku)
            found.setdefault(key, set()).add((usd, bool(item.get("isPrimaryMeterRegion", True))))
    out: dict[str, tuple[float | None, float | None, str]] = {}
    for size in sorted({s for s, _ in found}):
        notes: list[str] = []
        prices = [
            _one(found.get((size, spot), set()), notes, "spot" if spot else "on-demand") for spot in (False, True)
        ]
        on_demand, spot = prices
        if on_demand is not None and spot is not None and spot >= on_demand:
            notes.append(f"spot {spot:g} >= on-demand {on_demand:g}: spot written as unknown")
            spot = None
        out[size] = (on_demand, spot, "; ".join(notes))
    return out


def _one(prices: set[tuple[float, bool]], notes: list[str], what: str) -> float | None:
    values = {p for p, _ in prices}
    if len(values) > 1:
        values = {p for p, primary in prices if primary}
    if len(values) == 1:
        return values.pop()
    if values:
        notes.append(
            f"{len(values)} different {what} prices listed ({', '.join(f'{v:g}' for v in sorted(values))})"
        )
    return None


def refresh_prices(
    state_dir: Path,
    regions: Iterable[str],
    sizes: Iterable[str],
    *,
    endpoint: str = RETAIL_PRICES_URL,
    transport: httpx.BaseTransport | None = None,
    now: datetime,
) -> RefreshReport:
    """Read the prices of every (size, location) and save those read to the overlay under `state_dir`."""
    as_of = (now.astimezone(UTC) if now.tzinfo is not None else now).date()
    current = AzureCatalog.load(state_dir)
    wanted = sorted(set(sizes))
    fetched: dict[Key, AzurePrice] = {}
    results: list[RegionRefresh] = []
    abort: str | None = None
    with httpx.Client(timeout=TIMEOUT, transport=transport, follow_redirects=True) as client:
        for region in sorted(set(regions)):
            refreshed: list[str] = []
            reasons: list[str] = []
            listed: dict[str, tuple[float | None, float | None, str]] = {}
            failure = abort
            if failure is None and wanted:
                try:
                    listed = linux_prices(_items(client, endpoint, region, wanted))
                except _Failure as exc:
                    failure = exc.reason
                    abort = exc.reason if exc.fatal else None
            if failure is not None:
                reasons.append(failure)
            for size in wanted:
                on_demand, spot, note = listed.get(size, (None, None, ""))
                if note:
                    reasons.append(f"{size}: {note}")
                if on_demand is None:
                    if failure is None and not note:
                        reasons.append(f"{size}: no Linux on-demand price listed")
                    continue
                before = current.price(size, region)
                gpus, gpu = (before.gpus, before.gpu) if before else (0, "")
                fetched[(size, region)] = AzurePrice(on_demand, spot, gpus, gpu, SOURCE, as_of)
                refreshed.append(size)
            results.append(_region_result(region, refreshed, wanted, reasons, current))
    if not fetched:
        return RefreshReport(as_of, tuple(results), ())
    merged = read_overlay(state_dir)
    merged.update(fetched)
    try:
        path = write_overlay(state_dir, merged)
    except OSError as exc:
        reason = f"cannot save refreshed prices to {overlay_path(state_dir)}: {exc}"
        unsaved = [_region_result(r.region, [], wanted, [reason, *r.reasons], current) for r in results]
        return RefreshReport(as_of, tuple(unsaved), ())
    return RefreshReport(as_of, tuple(results), (path,))


def _region_result(
    region: str, refreshed: Sequence[str], wanted: Sequence[str], reasons: list[str], current: AzureCatalog
) -> RegionRefresh:
    rest = [s for s in wanted if s not in refreshed]
    kept = tuple(s for s in rest if current.price(s, region) is not None)
    missing = tuple(s for s in rest if current.price(s, region) is None)
    return RegionRefresh(region, tuple(refreshed), kept, missing, tuple(dict.fromkeys(reasons)))


def refresh_targets(policy: config.Policy, catalog: AzureCatalog) -> tuple[list[str], list[str], list[str]]:
    """(locations, sizes, notes): the locations of `clouds.azure` (else its candidates', else the catalog's), the
    sizes of the policy's Azure candidates (else every size of the catalog)."""
    notes: list[str] = []
    candidates = [c for p in policy.pools for c in p.candidates if c.cloud == "azure"]
    sizes = sorted({c.instance_type for c in candidates})
    if not sizes:
        sizes = sorted(catalog.sizes())
        notes.append("the policy has no Azure candidates: refreshing every size of the catalog")
    azure = policy.clouds.azure
    regions = sorted(azure.regions) if azure is not None and azure.regions else []
    regions = regions or sorted({r for c in candidates for r in c.regions or []})
    if not regions:
        regions = sorted(catalog.regions(sizes))
        notes.append("the policy names no Azure locations: refreshing every location of the catalog")
    return regions, sizes, notes


def run_refresh(
    policy: config.Policy,
    state_dir: Path,
    console: Console,
    *,
    endpoint: str = RETAIL_PRICES_URL,
    transport: httpx.BaseTransport | None = None,
    now: datetime | None = None,
) -> int:
    """Refresh, print a row per location, return the exit code: 0 when at least one requested price can be had
    (refreshed, or kept from the catalog), 1 when none can."""
    from rich.table import Table

    catalog = AzureCatalog.load(state_dir)
    regions, sizes, notes = refresh_targets(policy, catalog)
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    report = refresh_prices(
        state_dir, regions, sizes, endpoint=endpoint, transport=transport, now=now or datetime.now(UTC)
    )
    table = Table(title=f"Azure prices, on-demand and spot ({len(sizes)} sizes x {len(regions)} locations)")
    for column in ("location", "refreshed", "kept from catalog", "no price", "why"):
        table.add_column(column, overflow="fold" if column == "why" else "ellipsis")
    for r in report.regions:
        table.add_row(r.region, _count(r.refreshed), _count(r.kept), _count(r.missing), r.why or "-")
    console.print(table)
    if report.overlay is not None:
        console.print(f"Saved {report.refreshed} refreshed prices (as of {report.as_of}) to {report.overlay}")
    else:
        console.print("No price was refreshed: the daemon keeps using the catalog it has.")
    return 0 if report.refreshed + report.kept > 0 else 1


def _count(sizes: Sequence[str]) -> str:
    if not sizes:
        return "0"
    return f"{len(sizes)} ({', '.join(sizes)})" if len(sizes) <= 3 else str(len(sizes))
