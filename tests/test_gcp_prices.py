"""`prices refresh` for GCP against a local fake of the Cloud Billing Catalog API.

The fake is a small HTTP server on 127.0.0.1 answering `GET /v1/services/6F81-5844-456A/skus` with the API's
shape: `{"skus": [{description, category{resourceFamily, usageType}, serviceRegions, pricingInfo[{
pricingExpression{usageUnit, tieredRates[{startUsageAmount, unitPrice{units, nanos}}]}}]}], "nextPageToken"}`,
paged by pageSize/pageToken, or an error status.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from rich.console import Console

from autoscaler.model import Market
from autoscaler.policyfile import parse_policy
from providers.gcp_catalog import GcpCatalog, overlay_path
from providers.gcp_prices import SOURCE, fetch_with, run_refresh

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TODAY = date(2026, 11, 27)
AMERICAS = ["us-central1", "us-east1", "us-west1"]


def sku(description: str, usage: str, regions: list[str], usd: float, unit: str = "h") -> dict[str, Any]:
    units, nanos = int(usd), round((usd - int(usd)) * 1e9)
    rate = {"startUsageAmount": 0, "unitPrice": {"currencyCode": "USD", "units": str(units), "nanos": nanos}}
    return {
        "name": f"services/6F81-5844-456A/skus/{abs(hash((description, usage))) % 10**12:012X}",
        "description": description,
        "category": {"serviceDisplayName": "Compute Engine", "resourceFamily": "Compute",
                     "resourceGroup": "CPU", "usageType": usage},
        "serviceRegions": regions,
        "pricingInfo": [{"pricingExpression": {"usageUnit": unit, "tieredRates": [rate]}}],
    }  # fmt: skip


SKUS = [
    sku("N1 Predefined Instance Core running in Americas", "OnDemand", AMERICAS, 0.0332),
    sku("N1 Predefined Instance Ram running in Americas", "OnDemand", AMERICAS, 0.0045, "GiBy.h"),
    sku("Spot Preemptible N1 Predefined Instance Core running in Americas", "Preemptible", AMERICAS, 0.0072),
    sku(
        "Spot Preemptible N1 Predefined Instance Ram running in Americas", "Preemptible", AMERICAS, 0.001, "GiBy.h"
    ),
    sku("G2 Instance Core running in Americas", "OnDemand", AMERICAS, 0.025),
    sku("G2 Instance Ram running in Americas", "OnDemand", AMERICAS, 0.003, "GiBy.h"),
    sku("Spot Preemptible G2 Instance Core running in Americas", "Preemptible", AMERICAS, 0.01),
    sku("Spot Preemptible G2 Instance Ram running in Americas", "Preemptible", AMERICAS, 0.0012, "GiBy.h"),
    sku("Nvidia Tesla T4 GPU running in Americas", "OnDemand", AMERICAS, 0.36),
    sku("Nvidia Tesla T4 GPU attached to Spot Preemptible VMs running in Americas", "Preemptible", AMERICAS, 0.15),
    sku("Nvidia L4 GPU running in Americas", "OnDemand", AMERICAS, 0.6),
    sku(
        "Nvidia L4 GPU attached to Spot Preemptible VMs running in Americas", "Preemptible", ["us-central1"], 0.25
    ),
    # not prices we may take: a commitment, and a per-month SKU
    sku("Commitment v1: N1 Cpu in Americas for 1 Year", "Commit1Yr", AMERICAS, 0.02),
    sku("N1 Predefined Instance Core running in Americas", "OnDemand", AMERICAS, 24.0, "mo"),
]


@dataclass
class FakeBilling:
    skus: list[dict[str, Any]] = field(default_factory=lambda: list(SKUS))
    status: int = 200
    page_size: int = 5  # fewer than asked: pages must be followed
    requests: list[dict[str, str]] = field(default_factory=list)

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.requests.append(query)
        if self.status != 200:
            return self.status, {"error": {"code": self.status, "message": "The caller does not have permission",
                                           "status": "PERMISSION_DENIED"}}  # fmt: skip
        if path != "/v1/services/6F81-5844-456A/skus" or query.get("currencyCode") != "USD":
            return 404, {"error": {"code": 404, "message": "not found"}}
        start = int(query.get("pageToken") or 0)
        size = min(int(query.get("pageSize") or 5000), self.page_size)
        page: dict[str, Any] = {"skus": self.skus[start : start + size]}
        if start + size < len(self.skus):
            page["nextPageToken"] = str(start + size)
        return 200, page


@pytest.fixture
def billing() -> Iterator[tuple[FakeBilling, str]]:
    fake = FakeBilling()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            status, body = fake.answer(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def policy(regions: str = "{us-central1: [], europe-west4: []}", types: tuple[str, ...] = ("g2-standard-8",
           "n1-standard-8+nvidia-tesla-t4")) -> Any:  # fmt: skip
    candidates = "\n".join(
        f"      - {{cloud: gcp, instance_type: {t}, market: on-demand, throughput: 1}}" for t in types
    )
    text = f"""
clouds:
  gcp: {{project: p, regions: {regions}}}
pools:
  - name: llm
    max_capacity: 4
    candidates:
{candidates}
"""
    return parse_policy(text, "policy.yaml").policy


def refresh(tmp_path: Path, endpoint: str, **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = run_refresh(kw.pop("policy", policy()), tmp_path, Console(file=out, width=200),
                       fetch=fetch_with(requests.Session()), endpoint=endpoint, now=NOW, **kw)  # fmt: skip
    return code, out.getvalue()


def test_refresh_adds_up_host_and_gpu_rates_and_the_daemon_reads_them(
    billing: tuple[FakeBilling, str], tmp_path: Path
) -> None:
    fake, endpoint = billing
    code, out = refresh(tmp_path, endpoint)
    assert code == 0
    assert len(fake.requests) == 3 and all(r["pageSize"] == "5000" for r in fake.requests), "pages followed"
    catalog = GcpCatalog.load(tmp_path)
    n1 = catalog.price("n1-standard-8+nvidia-tesla-t4", "us-central1", Market.ON_DEMAND)
    assert n1 is not None and n1.usd_per_hour == pytest.approx(8 * 0.0332 + 30 * 0.0045 + 0.36)
    assert n1.source == SOURCE and n1.as_of == TODAY
    n1_spot = catalog.price("n1-standard-8+nvidia-tesla-t4", "us-central1", Market.SPOT)
    assert n1_spot is not None and n1_spot.usd_per_hour == pytest.approx(8 * 0.0072 + 30 * 0.001 + 0.15)
    g2 = catalog.price("g2-standard-8", "us-central1", Market.ON_DEMAND)
    assert g2 is not None and g2.usd_per_hour == pytest.approx(8 * 0.025 + 32 * 0.003 + 0.6) and g2.gpus == 1
    # europe-west4 has no SKU in the fake: its catalog prices stay, and the report says why
    eu = catalog.price("g2-standard-8", "europe-west4", Market.ON_DEMAND)
    assert eu is not None and eu.source.startswith("skypilot-org/") and eu.as_of == date(2024, 5, 7)
    assert "no on-demand G2 Instance core SKU for europe-west4" in out
    assert "Saved 4 refreshed prices (as of 2026-11-27)" in out
    rows = overlay_path(tmp_path, "gcp_machine_types.csv").read_text().splitlines()
    assert rows[0].startswith("machine_type,region,vcpus") and len(rows) == 3


def test_a_row_is_refreshed_only_when_each_of_its_markets_is(
    billing: tuple[FakeBilling, str], tmp_path: Path
) -> None:
    _, endpoint = billing
    code, out = refresh(tmp_path, endpoint, policy=policy("{us-east1: []}", ("g2-standard-8",)))
    assert code == 0
    accelerators = overlay_path(tmp_path, "gcp_accelerators.csv")
    assert not accelerators.exists(), "no spot L4 rate for us-east1: the L4 row keeps its catalog prices"
    assert "no spot nvidia-l4 gpu SKU for us-east1" in out
    catalog = GcpCatalog.load(tmp_path)
    assert catalog.machines[("g2-standard-8", "us-east1")].price.source == SOURCE
    assert catalog.accelerators[("nvidia-l4", "us-east1")].source.startswith("skypilot-org/")


def test_ambiguous_rates_are_not_taken(billing: tuple[FakeBilling, str], tmp_path: Path) -> None:
    fake, endpoint = billing
    fake.skus.append(sku("Nvidia Tesla T4 GPU running in Virginia", "OnDemand", ["us-central1"], 0.4))
    code, out = refresh(tmp_path, endpoint, policy=policy("{us-central1: []}", ("n1-standard-8+nvidia-tesla-t4",)))
    assert code == 0 and "2 different on-demand nvidia-tesla-t4 gpu prices for us-central1" in out
    assert GcpCatalog.load(tmp_path).accelerators[("nvidia-tesla-t4", "us-central1")].on_demand == 0.35


def test_access_denied_keeps_the_catalog(billing: tuple[FakeBilling, str], tmp_path: Path) -> None:
    fake, endpoint = billing
    fake.status = 403
    code, out = refresh(tmp_path, endpoint)
    assert code == 0, "the catalog's prices can still be had"
    assert "may not read the Billing Catalog (HTTP 403)" in out and "No price was refreshed" in out
    assert not (tmp_path / "prices").exists()
    unknown = policy("{asia-east1: []}", ("a2-ultragpu-8g",))  # a type the catalog does not price there
    assert refresh(tmp_path, endpoint, policy=unknown)[0] == 1


def test_without_credentials_nothing_is_fetched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    out = io.StringIO()
    code = run_refresh(policy(), tmp_path, Console(file=out, width=200), now=NOW)
    assert code == 0 and "no usable GCP credentials" in out.getvalue()
    assert not (tmp_path / "prices").exists()


def test_the_cli_runs_the_gcp_refresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from autoscaler.cli import main

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_TEXT)
    result = CliRunner().invoke(main, ["prices", "refresh", "--policy", str(path), "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "GCP prices" in result.output and "No price was refreshed" in result.output


POLICY_TEXT = """
clouds:
  gcp: {project: p, regions: {us-central1: [us-central1-a]}}
pools:
  - name: llm
    max_capacity: 4
    candidates:
      - {cloud: gcp, instance_type: g2-standard-8, market: spot, throughput: 1}
"""
