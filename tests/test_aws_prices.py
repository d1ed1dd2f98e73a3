"""`prices refresh` against a local fake of the AWS Price List API (moto has no `pricing` service).

The fake is a small HTTP server on 127.0.0.1 that speaks what botocore sends for the JSON-1.1 protocol: a POST
with `X-Amz-Target: AWSPriceListService.GetProducts` and a JSON body of ServiceCode/Filters/NextToken, answered
with `{"FormatVersion", "PriceList": [JSON strings], "NextToken"}` or an error `{"__type", "message"}`. Its
products have the real document shape (product.attributes, terms.OnDemand/Reserved.*.priceDimensions.*).
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from rich.console import Console

from autoscaler import config
from providers.aws_catalog import AwsCatalog, CatalogPrice, overlay_path, read_rows, write_overlay
from providers.aws_prices import SOURCE, refresh_on_demand, refresh_targets, run_refresh

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TODAY = date(2026, 11, 27)


def product(
    itype: str,
    region: str,
    usd: float,
    *,
    gpu: str = "1",
    marketoption: str = "OnDemand",
    reserved_usd: float | None = 0.5,
) -> dict[str, Any]:
    sku = f"SKU{abs(hash((itype, region, marketoption))) % 10**8:08d}"
    terms: dict[str, Any] = {
        "OnDemand": {
            f"{sku}.JRTCKXETXF": {
                "offerTermCode": "JRTCKXETXF",
                "sku": sku,
                "effectiveDate": "2026-11-01T00:00:00Z",
                "priceDimensions": {
                    f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                        "unit": "Hrs",
                        "endRange": "Inf",
                        "description": f"${usd} per On Demand Linux {itype} Instance Hour",
                        "appliesTo": [],
                        "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                        "beginRange": "0",
                        "pricePerUnit": {"USD": f"{usd:.10f}"},
                    }
                },
                "termAttributes": {},
            }
        }
    }
    if reserved_usd is not None:  # a Reserved term must not be mistaken for the on-demand price
        terms["Reserved"] = {
            f"{sku}.4NA7Y494T4": {
                "priceDimensions": {
                    f"{sku}.4NA7Y494T4.6YS6EN2CT7": {"unit": "Hrs", "pricePerUnit": {"USD": f"{reserved_usd}"}}
                }
            }
        }
    return {
        "product": {
            "productFamily": "Compute Instance",
            "attributes": {
                "instanceType": itype,
                "regionCode": region,
                "operatingSystem": "Linux",
                "tenancy": "Shared",
                "preInstalledSw": "NA",
                "capacitystatus": "Used",
                "marketoption": marketoption,
                "licenseModel": "No License required",
                "operation": "RunInstances",
                "gpu": gpu,
                "servicecode": "AmazonEC2",
            },
            "sku": sku,
        },
        "serviceCode": "AmazonEC2",
        "terms": terms,
        "version": "20261101000000",
        "publicationDate": "2026-11-01T00:00:00Z",
    }


@dataclass
class FakePriceList:
    products: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 100
    deny: bool = False  # every call: AccessDeniedException
    failing_regions: set[str] = field(default_factory=set)  # calls for these regions: HTTP 500 InternalError
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, target: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if target != "AWSPriceListService.GetProducts":
            return 400, {"__type": "UnknownOperationException", "message": target}
        if self.deny:
            return 400, {
                "__type": "AccessDeniedException",
                "message": "User: arn:aws:iam::123456789012:user/ci is not authorized: pricing:GetProducts",
            }
        filters = {f["Field"]: f["Value"] for f in body.get("Filters", []) if f.get("Type") == "TERM_MATCH"}
        if filters.get("regionCode") in self.failing_regions:
            return 500, {"__type": "InternalErrorException", "message": "We encountered an internal error."}
        if body.get("ServiceCode") != "AmazonEC2":
            return 400, {"__type": "InvalidParameterException", "message": "bad ServiceCode"}
        matching = [
            p for p in self.products if all(p["product"]["attributes"].get(k) == v for k, v in filters.items())
        ]
        start = int(body.get("NextToken") or 0)
        page = matching[start : start + self.page_size]
        out: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": [json.dumps(p) for p in page]}
        if start + self.page_size < len(matching):
            out["NextToken"] = str(start + self.page_size)
        return 200, out


@pytest.fixture
def fake() -> Iterator[tuple[FakePriceList, str]]:
    state = FakePriceList()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = json.loads(raw or b"{}")
            with state.lock:
                state.requests.append(body)
                state.headers.append(dict(self.headers))
                status, out = state.answer(self.headers.get("X-Amz-Target", ""), body)
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", "fake-request-id")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> boto3.session.Session:
    """A session with static test credentials, and nothing from the machine's AWS configuration."""
    isolate_aws_environment(monkeypatch, tmp_path)
    return boto3.session.Session(
        aws_access_key_id="AKIDTESTTESTTEST", aws_secret_access_key="secret", region_name="us-east-1"
    )


def isolate_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_PRICING",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe


def overlay(state_dir: Path) -> dict[tuple[str, str], CatalogPrice]:
    return read_rows(overlay_path(state_dir).read_text(), where="overlay", strict=True)


# ------------------------------------------------------------------------------------------------ refresh


def test_refresh_reads_the_price_list_and_writes_the_overlay(
    fake: tuple[FakePriceList, str], creds: boto3.session.Session, tmp_path: Path
) -> None:
    api, url = fake
    api.products = [
        product("g5.xlarge", "us-east-1", 1.1),
        product("g5.xlarge", "eu-west-1", 1.2),
        product("p5.48xlarge", "us-east-1", 55.04, gpu="8"),
        product("g5.xlarge", "us-west-2", 9.9),  # a region not asked for
    ]
    state = tmp_path / "state"
    report = refresh_on_demand(
        state, ["us-east-1", "eu-west-1"], ["g5.xlarge", "p5.48xlarge"], session=creds, endpoint_url=url, now=NOW
    )
    assert report.as_of == TODAY
    us, eu = report.region("us-east-1"), report.region("eu-west-1")
    assert us is not None and us.refreshed == ("g5.xlarge", "p5.48xlarge") and us.reasons == ()
    # p5.48xlarge has no eu-west-1 price in the API nor in the shipped catalog.
    assert eu is not None and eu.refreshed == ("g5.xlarge",) and eu.missing == ("p5.48xlarge",)
    assert "p5.48xlarge: no on-demand Linux price listed" in eu.why
    assert (report.refreshed, report.kept, report.missing) == (3, 0, 1)

    assert report.overlay == overlay_path(state)
    saved = overlay(state)
    assert saved == {
        ("g5.xlarge", "us-east-1"): CatalogPrice(1.1, 1, "A10G", SOURCE, TODAY),
        ("g5.xlarge", "eu-west-1"): CatalogPrice(1.2, 1, "A10G", SOURCE, TODAY),
        ("p5.48xlarge", "us-east-1"): CatalogPrice(55.04, 8, "H100", SOURCE, TODAY),
    }
    catalog = AwsCatalog.load(state)
    assert catalog.price("p5.48xlarge", "us-east-1") == saved[("p5.48xlarge", "us-east-1")]
    shipped_west = AwsCatalog.shipped().price("g5.xlarge", "us-west-2")
    assert catalog.price("g5.xlarge", "us-west-2") == shipped_west  # not refreshed: untouched

    # What went over the wire: the JSON-1.1 GetProducts call, signed for us-east-1, with every filter.
    assert len(api.requests) == 4
    headers = api.headers[0]
    assert headers["X-Amz-Target"] == "AWSPriceListService.GetProducts"
    assert headers["Content-Type"] == "application/x-amz-json-1.1"
    assert "/us-east-1/pricing/aws4_request" in headers["Authorization"]
    first = api.requests[0]
    assert first["ServiceCode"] == "AmazonEC2" and first["FormatVersion"] == "aws_v1"
    assert {(f["Type"], f["Field"], f["Value"]) for f in first["Filters"]} == {
        ("TERM_MATCH", "instanceType", "g5.xlarge"),
        ("TERM_MATCH", "regionCode", "eu-west-1"),
        ("TERM_MATCH", "operatingSystem", "Linux"),
        ("TERM_MATCH", "tenancy", "Shared"),
        ("TERM_MATCH", "preInstalledSw", "NA"),
        ("TERM_MATCH", "capacitystatus", "Used"),
    }


def test_pages_are_followed_and_other_markets_and_ambiguity_are_not_taken(
    fake: tuple[FakePriceList, str], creds: boto3.session.Session, tmp_path: Path
) -> None:
    api, url = fake
    api.page_size = 1
    api.products = [
        product("p5en.48xlarge", "us-east-1", 31.46, gpu="8", marketoption="CapacityBlock"),  # not on-demand
        product("p5en.48xlarge", "us-east-1", 63.29, gpu="8"),
        product("g6.xlarge", "us-east-1", 0.8),
        product("g6.xlarge", "us-east-1", 0.9),  # two different prices: refuse to pick one
    ]
    report = refresh_on_demand(
        tmp_path, ["us-east-1"], ["p5en.48xlarge", "g6.xlarge"], session=creds, endpoint_url=url, now=NOW
    )
    us = report.region("us-east-1")
    assert us is not None and us.refreshed == ("p5en.48xlarge",) and us.kept == ("g6.xlarge",)
    assert "g6.xlarge: 2 different on-demand prices listed (0.8, 0.9)" in us.why
    assert overlay(tmp_path) == {("p5en.48xlarge", "us-east-1"): CatalogPrice(63.29, 8, "H200", SOURCE, TODAY)}
    assert sum(1 for r in api.requests if r.get("NextToken")) >= 2  # followed the pages


def test_a_type_the_catalog_does_not_know_takes_the_gpu_count_from_the_price_list(
    fake: tuple[FakePriceList, str], creds: boto3.session.Session, tmp_path: Path
) -> None:
    api, url = fake
    api.products = [product("p6-b200.48xlarge", "us-west-2", 113.9328, gpu="8")]
    refresh_on_demand(tmp_path, ["us-west-2"], ["p6-b200.48xlarge"], session=creds, endpoint_url=url, now=NOW)
    got = AwsCatalog.load(tmp_path).price("p6-b200.48xlarge", "us-west-2")
    assert got == CatalogPrice(113.9328, 8, "", SOURCE, TODAY)


def test_without_credentials_the_catalog_is_kept(
    fake: tuple[FakePriceList, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api, url = fake
    api.products = [product("g5.xlarge", "us-east-1", 1.1)]
    isolate_aws_environment(monkeypatch, tmp_path)
    state = tmp_path / "state"
    earlier = CatalogPrice(1.05, 1, "A10G", SOURCE, date(2026, 10, 1))
    write_overlay(state, {("g5.xlarge", "us-east-1"): earlier})
    before = overlay_path(state).read_bytes()

    report = refresh_on_demand(
        state, ["us-east-1", "eu-west-1"], ["g5.xlarge", "g6.xlarge"], endpoint_url=url, now=NOW
    )
    assert report.overlay is None and report.refreshed == 0
    us, eu = report.region("us-east-1"), report.region("eu-west-1")
    assert us is not None and us.kept == ("g5.xlarge", "g6.xlarge")
    assert eu is not None and eu.kept == ("g5.xlarge",) and eu.missing == ("g6.xlarge",)
    for r in report.regions:
        assert r.reasons and r.reasons[0].startswith("no usable AWS credentials (NoCredentialsError)")
    assert api.requests == []  # nothing was sent
    assert overlay_path(state).read_bytes() == before
    assert AwsCatalog.load(state).price("g5.xlarge", "us-east-1") == earlier


def test_access_denied_keeps_the_catalog_and_stops_asking(
    fake: tuple[FakePriceList, str], creds: boto3.session.Session, tmp_path: Path
) -> None:
    api, url = fake
    api.deny = True
    report = refresh_on_demand(
        tmp_path, ["us-east-1", "us-west-2"], ["g5.xlarge", "g6.xlarge"], session=creds, endpoint_url=url, now=NOW
    )
    assert report.overlay is None and not overlay_path(tmp_path).exists()
    assert report.kept == 4 and report.refreshed == 0
    for r in report.regions:
        assert "the credentials may not read prices: AccessDeniedException (HTTP 400)" in r.why
        assert "pricing:GetProducts" in r.why
    assert len(api.requests) == 1  # access denied is not retried, and no other call was tried


def test_a_failing_region_keeps_its_prices_while_the_others_refresh(
    fake: tuple[FakePriceList, str], creds: boto3.session.Session, tmp_path: Path
) -> None:
    api, url = fake
    api.failing_regions = {"eu-central-1"}
    api.products = [product(t, r, 2.0) for t in ("g5.xlarge", "g6.xlarge") for r in ("us-east-1", "eu-central-1")]
    earlier = CatalogPrice(1.01, 1, "A10G", SOURCE, date(2026, 10, 1))
    write_overlay(tmp_path, {("g5.xlarge", "eu-central-1"): earlier})

    report = refresh_on_demand(
        tmp_path,
        ["eu-central-1", "us-east-1"],
        ["g5.xlarge", "g6.xlarge"],
        session=creds,
        endpoint_url=url,
        now=NOW,
    )
    eu, us = report.region("eu-central-1"), report.region("us-east-1")
    assert eu is not None and eu.refreshed == () and eu.kept == ("g5.xlarge", "g6.xlarge")
    assert eu.reasons == (
        "Price List API error InternalErrorException (HTTP 500): We encountered an internal error.",
    )
    assert us is not None and us.refreshed == ("g5.xlarge", "g6.xlarge") and us.reasons == ()
    # The region's first call was tried twice (total_max_attempts=2), then the region was given up.
    eu_calls = [r for r in api.requests if {"Field": "regionCode", "Type": "TERM_MATCH", "Value": "eu-central-1"}
                in r["Filters"]]  # fmt: skip
    assert len(eu_calls) == 2
    saved = overlay(tmp_path)
    assert saved[("g5.xlarge", "eu-central-1")] == earlier  # the earlier refresh survives
    assert saved[("g5.xlarge", "us-east-1")].usd_per_hour == 2.0
    assert ("g6.xlarge", "eu-central-1") not in saved


def test_an_unreachable_api_keeps_the_catalog(creds: boto3.session.Session, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = refresh_on_demand(
        tmp_path,
        ["us-east-1", "us-west-2"],
        ["g5.xlarge"],
        session=creds,
        endpoint_url=f"http://127.0.0.1:{port}",
        now=NOW,
    )
    assert report.overlay is None and report.kept == 2
    for r in report.regions:
        assert r.why.startswith("the Price List API is unreachable")


def test_an_unwritable_state_dir_is_reported_not_raised(
    fake: tuple[FakePriceList, str], creds: boto3.session.Session, tmp_path: Path
) -> None:
    api, url = fake
    api.products = [product("g5.xlarge", "us-east-1", 1.1)]
    state = tmp_path / "state"
    state.write_text("a file where the state directory should be")
    report = refresh_on_demand(state, ["us-east-1"], ["g5.xlarge"], session=creds, endpoint_url=url, now=NOW)
    us = report.region("us-east-1")
    assert report.overlay is None and us is not None and us.refreshed == () and us.kept == ("g5.xlarge",)
    assert us.reasons[0].startswith("cannot save refreshed prices")


# ------------------------------------------------------------------------------------------------ the command


def aws_policy(regions: dict[str, list[str]] | None, types: list[str]) -> config.Policy:
    clouds = config.Clouds(aws=config.AwsCloud(regions=regions or {})) if regions is not None else config.Clouds()
    candidates = [
        config.Candidate(cloud="aws", instance_type=t, market="on-demand", throughput=1.0) for t in types
    ]
    pools = [config.Pool(name="llm", max_capacity=10, candidates=candidates)] if candidates else []
    return config.Policy(clouds=clouds, pools=pools)


def test_targets_come_from_the_policy_else_the_catalog() -> None:
    catalog = AwsCatalog.shipped()
    policy = aws_policy({"us-east-1": [], "eu-west-1": ["euw1-az1"]}, ["g5.xlarge"])
    regions, types, notes = refresh_targets(policy, catalog)
    assert (regions, types, notes) == (["eu-west-1", "us-east-1"], ["g5.xlarge"], [])
    regions, types, notes = refresh_targets(aws_policy({}, ["p4de.24xlarge"]), catalog)
    assert (regions, types) == (["us-east-1", "us-west-2"], ["p4de.24xlarge"]) and len(notes) == 1
    regions, types, notes = refresh_targets(config.Policy(), catalog)
    assert types == sorted(catalog.instance_types()) and len(regions) == 6 and len(notes) == 2


def test_run_refresh_prints_a_row_per_region_and_exits_0(
    fake: tuple[FakePriceList, str], creds: boto3.session.Session, tmp_path: Path
) -> None:
    api, url = fake
    api.failing_regions = {"eu-west-1"}
    api.products = [product("g5.xlarge", "us-east-1", 1.1)]
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    policy = aws_policy({"us-east-1": [], "eu-west-1": []}, ["g5.xlarge"])
    code = run_refresh(policy, tmp_path, console, session=creds, endpoint_url=url, now=NOW)
    text = out.getvalue()
    assert code == 0
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 5}
    assert "1 (g5.xlarge)" in lines["us-east-1"]
    assert "InternalErrorException" in lines["eu-west-1"] and "1 (g5.xlarge)" in lines["eu-west-1"]
    assert f"Saved 1 refreshed prices (as of {TODAY})" in text
    assert "Oldest price in use: 2024-05-07" in text  # eu-west-1 still on the shipped catalog's date


def test_run_refresh_without_credentials_keeps_the_catalog_and_exits_0(
    fake: tuple[FakePriceList, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, url = fake
    isolate_aws_environment(monkeypatch, tmp_path)
    out = io.StringIO()
    policy = aws_policy({"us-east-1": []}, ["g5.xlarge"])
    code = run_refresh(policy, tmp_path, Console(file=out, width=200), endpoint_url=url, now=NOW)
    assert code == 0
    assert "NoCredentialsError" in out.getvalue() and "No price was refreshed" in out.getvalue()
    assert not overlay_path(tmp_path).exists()


def test_run_refresh_exits_1_when_no_price_can_be_had(
    fake: tuple[FakePriceList, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, url = fake
    isolate_aws_environment(monkeypatch, tmp_path)
    out = io.StringIO()
    policy = aws_policy({"us-east-1": []}, ["x9.unknown"])  # neither refreshable nor in the catalog
    assert run_refresh(policy, tmp_path, Console(file=out, width=200), endpoint_url=url, now=NOW) == 1


def test_run_refresh_reports_an_unknown_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_aws_environment(monkeypatch, tmp_path)
    policy = config.Policy(
        clouds=config.Clouds(aws=config.AwsCloud(regions={"us-east-1": []}, profile="no-such-profile")),
        pools=[
            config.Pool(
                name="llm",
                max_capacity=1,
                candidates=[config.Candidate(cloud="aws", instance_type="g5.xlarge", market="spot", throughput=1)],
            )
        ],
    )
    out = io.StringIO()
    assert run_refresh(policy, tmp_path, Console(file=out, width=200), now=NOW) == 0
    assert "no-such-profile" in out.getvalue()
