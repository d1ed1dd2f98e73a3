"""The shipped Azure price catalog, its overlay, and `prices refresh` against a local fake of the public Retail
Prices API (`GET /api/retail/prices?$filter=...` answering `{"Items": [...], "NextPageLink": ...}` with the real
item shape: Linux and Windows meters, Spot and Low Priority SKUs, DevTest and Reservation price types)."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from rich.console import Console

from autoscaler import config
from providers.azure_catalog import (
    AzureCatalog,
    AzurePrice,
    CatalogFormatError,
    overlay_path,
    read_rows,
    write_overlay,
)
from providers.azure_prices import SOURCE, linux_prices, refresh_prices, run_refresh

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
A100, T4, H100 = "Standard_NC24ads_A100_v4", "Standard_NC4as_T4_v3", "Standard_NC40ads_H100_v5"


# ---------------------------------------------------------------- the shipped catalog


def test_shipped_catalog_covers_the_gpu_families_in_major_locations() -> None:
    catalog = AzureCatalog.shipped()
    families = {
        "NC T4 v3": "Standard_NC4as_T4_v3",
        "NC A100 v4": "Standard_NC24ads_A100_v4",
        "ND A100 v4": "Standard_ND96amsr_A100_v4",
        "NC H100 v5": "Standard_NC40ads_H100_v5",
        "ND H100 v5": "Standard_ND96isr_H100_v5",
        "NV A10 v5": "Standard_NV36ads_A10_v5",
    }
    for family, size in families.items():
        assert catalog.price(size, "eastus") is not None, family
    for location in ("eastus", "eastus2", "southcentralus", "westus2"):
        assert catalog.price(T4, location) is not None and catalog.price(A100, location) is not None
    for _, p in catalog.items():
        assert p.source.startswith("skypilot-org/skypilot-catalog@") and p.as_of == date(2024, 5, 7)
        assert p.gpus >= 1 and p.gpu
        assert p.spot_usd_per_hour is None or p.spot_usd_per_hour < p.on_demand_usd_per_hour
    assert all(p.spot_usd_per_hour is None for (s, _), p in catalog.items() if "H100" in s), (
        "the source lists H100 spot = on-demand: shipped as unknown"
    )
    h100x8 = catalog.price("Standard_ND96isr_H100_v5", "eastus")
    assert h100x8 is not None and h100x8.gpus == 8
    a100 = catalog.price(A100, "eastus")
    assert a100 is not None and (a100.on_demand_usd_per_hour, a100.spot_usd_per_hour) == (3.673, 0.444433)


def test_overlay_wins_and_bad_rows_are_skipped(tmp_path: Path) -> None:
    write_overlay(tmp_path, {(A100, "eastus"): AzurePrice(4.0, 1.0, 1, "A100-80GB", SOURCE, date(2026, 1, 2))})
    with overlay_path(tmp_path).open("a") as f:
        f.write(f"{T4},eastus,not-a-number,,1,T4,x,2026-01-02\n")
    catalog = AzureCatalog.load(tmp_path)
    a100 = catalog.price(A100, "eastus")
    assert a100 is not None and a100.on_demand_usd_per_hour == 4.0 and a100.source == SOURCE
    t4 = catalog.price(T4, "eastus")
    assert t4 is not None and t4.on_demand_usd_per_hour == 0.526, "the shipped price stays"


@pytest.mark.parametrize(
    "row",
    [
        "Standard_X,eastus,1.0,2.0,1,T4,src,2024-05-07",  # spot above on-demand
        "Standard_X,eastus,-1,,1,T4,src,2024-05-07",
        "Standard_X,eastus,1.0,,1,T4,,2024-05-07",  # no source
        "Standard_X,eastus,1.0,,1,T4,src,yesterday",
    ],
)
def test_strict_reading_refuses_bad_rows(row: str) -> None:
    header = "vm_size,region,on_demand_usd_per_hour,spot_usd_per_hour,gpus,gpu,source,as_of\n"
    with pytest.raises(CatalogFormatError):
        read_rows(header + row + "\n", where="t", strict=True)


# ---------------------------------------------------------------- the Retail Prices API


def item(size: str, region: str, price: float, *, spot: bool = False, windows: bool = False,
         kind: str = "Consumption", low_priority: bool = False, primary: bool = True) -> dict[str, Any]:  # fmt: skip
    short = size.removeprefix("Standard_").replace("_", " ")
    sku = short + (" Spot" if spot else " Low Priority" if low_priority else "")
    return {
        "currencyCode": "USD", "tierMinimumUnits": 0.0, "retailPrice": price, "unitPrice": price,
        "armRegionName": region, "location": region, "effectiveStartDate": "2026-11-01T00:00:00Z",
        "meterId": f"m-{abs(hash((size, region, sku, windows, kind))) % 10**8}", "meterName": sku,
        "productId": "DZH318Z0BQ4C", "skuId": "DZH318Z0BQ4C/00ZL",
        "productName": f"Virtual Machines {short} Series" + (" Windows" if windows else ""),
        "skuName": sku, "serviceName": "Virtual Machines", "serviceId": "DZH313Z7MMC8", "serviceFamily": "Compute",
        "unitOfMeasure": "1 Hour", "type": kind, "isPrimaryMeterRegion": primary, "armSkuName": size,
    }  # fmt: skip


class FakeRetailPrices:
    def __init__(self) -> None:
        self.items: dict[str, list[dict[str, Any]]] = {}  # location -> items
        self.fail: dict[str, int] = {}  # location -> HTTP status
        self.page_size = 3
        self.filters: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                status, body = fake.answer(query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/retail/prices"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def answer(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        flt = query.get("$filter", "")
        self.filters.append(flt)
        region = flt.split("armRegionName eq '")[1].split("'")[0]
        if region in self.fail:
            return self.fail[region], {"Error": {"Code": "Oops"}}
        wanted = set(part.split("'")[1] for part in flt.split("armSkuName eq ")[1:])
        rows = [i for i in self.items.get(region, []) if i["armSkuName"] in wanted]
        skip = int(query.get("$skip") or 0)
        page = rows[skip : skip + self.page_size]
        more = skip + self.page_size < len(rows)
        next_link = f"{self.url}?$filter={flt}&$skip={skip + self.page_size}" if more else None
        return 200, {"BillingCurrency": "USD", "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
                     "Items": page, "NextPageLink": next_link, "Count": len(page)}  # fmt: skip

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prices_api() -> Iterator[FakeRetailPrices]:
    fake = FakeRetailPrices()
    yield fake
    fake.stop()


def realistic(fake: FakeRetailPrices) -> None:
    fake.items["eastus"] = [
        item(A100, "eastus", 3.8), item(A100, "eastus", 0.5, spot=True), item(A100, "eastus", 5.2, windows=True),
        item(A100, "eastus", 0.9, low_priority=True), item(A100, "eastus", 2.9, kind="DevTestConsumption"),
        item(A100, "eastus", 2.1, kind="Reservation"), item(T4, "eastus", 0.55),
        item(H100, "eastus", 7.0), item(H100, "eastus", 7.0, spot=True),
    ]  # fmt: skip
    fake.items["westeurope"] = [item(A100, "westeurope", 4.1), item(A100, "westeurope", 0.6, spot=True)]


def test_refresh_reads_linux_on_demand_and_spot_and_writes_the_overlay(
    tmp_path: Path, prices_api: FakeRetailPrices
) -> None:
    realistic(prices_api)
    report = refresh_prices(tmp_path, ["eastus", "westeurope"], [A100, T4, H100], endpoint=prices_api.url, now=NOW)
    assert report.overlay == overlay_path(tmp_path) and report.as_of == date(2026, 11, 27)
    catalog = AzureCatalog.load(tmp_path)
    a100 = catalog.price(A100, "eastus")
    assert a100 is not None
    assert (a100.on_demand_usd_per_hour, a100.spot_usd_per_hour, a100.source, a100.as_of) == (
        3.8, 0.5, SOURCE, date(2026, 11, 27)
    )  # fmt: skip
    assert (a100.gpus, a100.gpu) == (1, "A100-80GB"), "hardware facts kept from the shipped row"
    h100 = catalog.price(H100, "eastus")
    assert h100 is not None and h100.spot_usd_per_hour is None, "spot = on-demand is not a spot price"
    europe = catalog.price(A100, "westeurope")
    assert europe is not None and europe.on_demand_usd_per_hour == 4.1, "a location the shipped catalog lacks"
    westeurope = report.region("westeurope")
    assert westeurope is not None and set(westeurope.missing) == {T4, H100}
    assert len([f for f in prices_api.filters if "'eastus'" in f]) == 3, "three pages through NextPageLink"
    assert "serviceName eq 'Virtual Machines'" in prices_api.filters[0]
    assert "priceType eq 'Consumption'" in prices_api.filters[0]


def test_a_failing_location_keeps_its_prices_and_an_unreachable_api_stops(
    tmp_path: Path, prices_api: FakeRetailPrices
) -> None:
    realistic(prices_api)
    prices_api.fail["eastus"] = 500
    report = refresh_prices(tmp_path, ["eastus", "westeurope"], [A100], endpoint=prices_api.url, now=NOW)
    eastus = report.region("eastus")
    assert eastus is not None and eastus.kept == (A100,) and "HTTP 500" in eastus.why
    assert report.refreshed == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/api/retail/prices"
    report = refresh_prices(tmp_path, ["eastus", "eastus2"], [A100], endpoint=closed, now=NOW)
    assert report.overlay is None and all("unreachable" in r.why for r in report.regions)
    assert AzureCatalog.load(tmp_path).price(A100, "westeurope") is not None, "the earlier refresh stays"


def test_ambiguous_prices_prefer_the_primary_meter_region_or_are_skipped() -> None:
    primary = linux_prices([item(A100, "eastus", 3.8), item(A100, "eastus", 3.9, primary=False)])
    assert primary[A100][0] == 3.8
    ambiguous = linux_prices([item(A100, "eastus", 3.8), item(A100, "eastus", 3.9)])
    assert ambiguous[A100][0] is None and "2 different on-demand prices" in ambiguous[A100][2]


def test_run_refresh_prints_a_row_per_location_and_exits_by_what_it_has(
    tmp_path: Path, prices_api: FakeRetailPrices
) -> None:
    realistic(prices_api)
    policy = config.Policy.model_validate({
        "clouds": {"azure": {"regions": {"eastus": ["1"], "westeurope": []}, "subscription_id": "s",
                             "resource_group": "rg"}},
        "pools": [{"name": "llm", "max_capacity": 4, "candidates": [
            {"cloud": "azure", "instance_type": A100, "market": "spot", "throughput": 1}]}],
    })  # fmt: skip
    out = io.StringIO()
    code = run_refresh(policy, tmp_path, Console(file=out, width=200), endpoint=prices_api.url, now=NOW)
    assert code == 0
    text = out.getvalue()
    assert "eastus" in text and "westeurope" in text and "Saved 2 refreshed prices" in text
    prices_api.fail.update({"eastus": 503, "westeurope": 503})
    policy_elsewhere = policy.model_copy(
        update={"clouds": config.Clouds(azure=config.AzureCloud(regions={"norwayeast": []}))}
    )
    assert run_refresh(policy_elsewhere, tmp_path, Console(file=io.StringIO()), endpoint=prices_api.url) == 1
