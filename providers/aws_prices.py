"""`gpu-autoscaler prices refresh`: on-demand prices from the AWS Price List API, where the credentials allow it.

For each (region, instance type) the Price List API is asked for the on-demand Linux price (`get_products` on
AmazonEC2, TERM_MATCH filters instanceType, regionCode, operatingSystem=Linux, tenancy=Shared, preInstalledSw=NA,
capacitystatus=Used; the price is `terms.OnDemand.*.priceDimensions.*.pricePerUnit.USD`). The prices read are
written to the overlay `<state_dir>/prices/aws_on_demand.csv` (atomically, merged with the rows an earlier
refresh wrote) with source "aws-price-list-api" and the refresh's date; the daemon reads them over the shipped
catalog (providers/aws_catalog.py).

Nothing here raises for a cloud failure. Where a price cannot be read (no credentials, access denied, the API
unreachable or failing, the type not listed) the shipped or previously refreshed price is kept, and the report
says why, per region. Failures of credentials or of the connection stop the whole refresh (every later call would
fail the same way); any other failure stops that region only.

boto3 is imported only when a refresh runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoscaler import config
from providers._refresh_report import RefreshReport, RegionRefresh
from providers.aws_catalog import AwsCatalog, CatalogPrice, Key, overlay_path, read_overlay, write_overlay

if TYPE_CHECKING:
    import boto3
    from rich.console import Console

log = logging.getLogger(__name__)

SOURCE = "aws-price-list-api"
PRICING_REGION = "us-east-1"  # the Price List API answers in us-east-1 (and eu-central-1, ap-south-1) only
SERVICE_CODE = "AmazonEC2"
MAX_ATTEMPTS = 2
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 20.0
MAX_PAGES = 20  # a (type, region) query matches a handful of products; more pages means the filters are wrong

FIXED_FILTERS = (
    ("operatingSystem", "Linux"),
    ("tenancy", "Shared"),
    ("preInstalledSw", "NA"),
    ("capacitystatus", "Used"),
)

# Error codes that mean "these credentials may not read prices": no other call will do better.
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "AuthFailure",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "OptInRequired",
    }
)


class _Failure(Exception):
    """A failed Price List call: `fatal` stops the whole refresh, otherwise only the region."""

    def __init__(self, reason: str, *, fatal: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal


@dataclass(frozen=True)
class _Listed:
    usd_per_hour: float | None  # None: no single on-demand price (see note)
    gpus: int | None  # the product's `gpu` attribute, when it has one
    note: str


def refresh_on_demand(
    state_dir: Path,
    regions: Iterable[str],
    instance_types: Iterable[str],
    *,
    session: boto3.session.Session | None = None,
    endpoint_url: str | None = None,
    now: datetime,
) -> RefreshReport:
    """Read the on-demand price of every (type, region) from the Price List API and save those read to the
    overlay under `state_dir`. Never raises for a cloud failure: what could not be read keeps its earlier price,
    and the report says why."""
    client: Any = None
    abort: str | None = None
    try:
        client = _pricing_client(session, endpoint_url)
    except ImportError as exc:
        abort = _import_failure(exc)
    except Exception as exc:  # a bad endpoint URL, an unusable profile: report, keep the catalog
        abort = _failure(exc).reason
    return _refresh(state_dir, regions, instance_types, client, abort, _utc_date(now))


def _refresh(
    state_dir: Path,
    regions: Iterable[str],
    instance_types: Iterable[str],
    client: Any,
    abort: str | None,
    as_of: date,
) -> RefreshReport:
    current = AwsCatalog.load(state_dir)
    types = sorted(set(instance_types))
    fetched: dict[Key, CatalogPrice] = {}
    results: list[RegionRefresh] = []
    for region in sorted(set(regions)):
        refreshed: list[str] = []
        unrefreshed: list[str] = []
        reasons: list[str] = []
        region_failure: str | None = None
        for itype in types:
            failure = abort or region_failure
            if failure is None:
                try:
                    listed = _listed_price(client, itype, region)
                except _Failure as exc:
                    failure = exc.reason
                    if exc.fatal:
                        abort = exc.reason
                    else:
                        region_failure = exc.reason
                else:
                    if listed.usd_per_hour is not None:
                        fetched[(itype, region)] = _price(current.price(itype, region), listed, as_of)
                        refreshed.append(itype)
                        continue
                    failure = f"{itype}: {listed.note}"
            unrefreshed.append(itype)
            if failure not in reasons:
                reasons.append(failure)
        results.append(_region_result(region, refreshed, unrefreshed, reasons, current))

    if not fetched:
        return RefreshReport(as_of, tuple(results), ())
    merged = read_overlay(state_dir)
    merged.update(fetched)
    try:
        path = write_overlay(state_dir, merged)
    except OSError as exc:
        reason = f"cannot save refreshed prices to {overlay_path(state_dir)}: {exc}"
        log.error("%s", reason)
        unsaved = [
            _region_result(
                r.region,
                [],
                [*r.refreshed, *r.kept, *r.missing],
                [reason, *r.reasons] if r.refreshed else list(r.reasons),
                current,
            )
            for r in results
        ]
        return RefreshReport(as_of, tuple(unsaved), ())
    return RefreshReport(as_of, tuple(results), (path,))


def _region_result(
    region: str, refreshed: Sequence[str], unrefreshed: Sequence[str], reasons: list[str], current: AwsCatalog
) -> RegionRefresh:
    kept = tuple(sorted(t for t in unrefreshed if current.price(t, region) is not None))
    missing = tuple(sorted(t for t in unrefreshed if current.price(t, region) is None))
    return RegionRefresh(region, tuple(sorted(refreshed)), kept, missing, tuple(reasons))


def _price(previous: CatalogPrice | None, listed: _Listed, as_of: date) -> CatalogPrice:
    """A refreshed price. The GPU count and name are hardware facts: kept from the catalog row where there is
    one, else the product's `gpu` attribute (the Price List names no GPU model)."""
    assert listed.usd_per_hour is not None
    if previous is not None:
        gpus, gpu = previous.gpus, previous.gpu
    else:
        gpus, gpu = listed.gpus or 0, ""
    return CatalogPrice(listed.usd_per_hour, gpus, gpu, SOURCE, as_of)


def _import_failure(exc: ImportError) -> str:
    if (exc.name or "").split(".")[0] in ("boto3", "botocore"):
        return f"the AWS SDK is not installed ({exc.name}): pip install 'gpu-autoscaler[aws]'"
    return f"cannot load the AWS support: {exc}"


def _utc_date(now: datetime) -> date:
    return (now.astimezone(UTC) if now.tzinfo is not None else now).date()


# ---------------------------------------------------------------------------------------------- the API


def _pricing_client(session: boto3.session.Session | None, endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    chosen = session if session is not None else boto3.session.Session()
    return chosen.client(
        "pricing",
        region_name=PRICING_REGION,
        endpoint_url=endpoint_url,
        config=Config(
            retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
        ),
    )


def product_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    pairs = (("instanceType", instance_type), ("regionCode", region), *FIXED_FILTERS)
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in pairs]


def _listed_price(client: Any, instance_type: str, region: str) -> _Listed:
    params: dict[str, Any] = {
        "ServiceCode": SERVICE_CODE,
        "Filters": product_filters(instance_type, region),
        "FormatVersion": "aws_v1",
    }
    prices: set[float] = set()
    gpus: int | None = None
    try:
        for page_number, page in enumerate(client.get_paginator("get_products").paginate(**params)):
            if page_number >= MAX_PAGES:
                raise _Failure(f"{instance_type}: more than {MAX_PAGES} pages of products", fatal=False)
            for item in page.get("PriceList", []):
                found, product_gpus = _on_demand_prices(item, instance_type, region)
                prices |= found
                if product_gpus is not None:
                    gpus = product_gpus
    except _Failure:
        raise
    except Exception as exc:
        raise _failure(exc) from None
    if not prices:
        return _Listed(None, gpus, "no on-demand Linux price listed")
    if len(prices) > 1:
        listed = ", ".join(f"{p:g}" for p in sorted(prices))
        return _Listed(None, gpus, f"{len(prices)} different on-demand prices listed ({listed})")
    return _Listed(prices.pop(), gpus, "")


def _on_demand_prices(item: object, instance_type: str, region: str) -> tuple[set[float], int | None]:
    """The hourly on-demand USD prices of one PriceList entry (a JSON string, or a dict if already parsed)."""
    try:
        doc = json.loads(item) if isinstance(item, str | bytes) else item
    except ValueError as exc:
        raise _Failure(f"unreadable Price List entry: {exc}", fatal=False) from None
    if not isinstance(doc, dict):
        raise _Failure(f"unreadable Price List entry: {type(doc).__name__}", fatal=False)
    attrs = _dict(_dict(doc.get("product")).get("attributes"))
    # The filters already select these; a product that says otherwise is not ours (e.g. a Capacity Block offer).
    if attrs.get("instanceType", instance_type) != instance_type or attrs.get("regionCode", region) != region:
        return set(), None
    if attrs.get("marketoption", "OnDemand") != "OnDemand":
        return set(), None
    out: set[float] = set()
    for term in _dict(_dict(doc.get("terms")).get("OnDemand")).values():
        for dim in _dict(_dict(term).get("priceDimensions")).values():
            dim = _dict(dim)
            if dim.get("unit", "Hrs") != "Hrs":
                continue
            try:
                usd = float(_dict(dim.get("pricePerUnit"))["USD"])
            except (KeyError, TypeError, ValueError):
                continue
            if usd > 0:
                out.add(usd)
    gpu_attr = str(attrs.get("gpu", "")).strip()
    return out, (int(gpu_attr) if gpu_attr.isdigit() else None)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _failure(exc: Exception) -> _Failure:
    """A botocore exception -> why, and whether it stops the whole refresh."""
    import botocore.exceptions as bx

    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
        return _Failure(f"no usable AWS credentials ({type(exc).__name__}): {text}", fatal=True)
    if isinstance(exc, bx.ProfileNotFound):
        return _Failure(f"AWS profile not found: {text}", fatal=True)
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "Unknown"
        message = str(error.get("Message", "")).strip()
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"{code} (HTTP {status})" + (f": {message}" if message else "")
        if code in AUTH_CODES or status in (401, 403):
            return _Failure(f"the credentials may not read prices: {detail}", fatal=True)
        return _Failure(f"Price List API error {detail}", fatal=False)
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ConnectionClosedError):
        return _Failure(f"the Price List API is unreachable: {text}", fatal=True)
    if isinstance(exc, bx.BotoCoreError):
        return _Failure(f"Price List API call failed ({type(exc).__name__}): {text}", fatal=False)
    return _Failure(f"Price List API call failed ({type(exc).__name__}): {text}", fatal=False)


# ---------------------------------------------------------------------------------------------- the command


def refresh_targets(policy: config.Policy, catalog: AwsCatalog) -> tuple[list[str], list[str], list[str]]:
    """(regions, instance types, notes) to refresh for `policy`: the regions of `clouds.aws` (else those its AWS
    candidates name), the types of its AWS candidates. Without AWS candidates: every type of the catalog; without
    regions: every region the catalog prices those types in."""
    notes: list[str] = []
    aws_candidates = [c for p in policy.pools for c in p.candidates if c.cloud == "aws"]
    types = sorted({c.instance_type for c in aws_candidates})
    if not types:
        types = sorted(catalog.instance_types())
        notes.append("the policy has no AWS candidates: refreshing every type of the catalog")
    aws = policy.clouds.aws
    regions = sorted(aws.regions) if aws is not None and aws.regions else []
    if not regions:
        regions = sorted({r for c in aws_candidates for r in c.regions or []})
    if not regions:
        regions = sorted(catalog.regions(types))
        notes.append("the policy names no AWS regions: refreshing every region of the catalog")
    return regions, types, notes


def run_refresh(
    policy: config.Policy,
    state_dir: Path,
    console: Console,
    *,
    session: boto3.session.Session | None = None,
    endpoint_url: str | None = None,
    now: datetime | None = None,
) -> int:
    """`gpu-autoscaler prices refresh`: refresh, print a row per region, and return the exit code: 0 when at least
    one requested price can be had (refreshed, or kept from the catalog), 1 when none can."""
    from rich.table import Table

    catalog = AwsCatalog.load(state_dir)
    regions, types, notes = refresh_targets(policy, catalog)
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    when = now if now is not None else datetime.now(UTC)

    abort: str | None = None
    if session is None and policy.clouds.aws is not None:
        try:
            session = _configured_session(policy.clouds.aws)
        except ImportError as exc:
            abort = _import_failure(exc)
        except Exception as exc:  # an unknown profile, an unusable role: report, keep the catalog
            abort = f"cannot set up the AWS credentials of clouds.aws: {exc}"
    if abort is None:
        report = refresh_on_demand(state_dir, regions, types, session=session, endpoint_url=endpoint_url, now=when)
    else:
        report = _refresh(state_dir, regions, types, None, abort, _utc_date(when))

    table = Table(title=f"AWS on-demand prices ({len(types)} types x {len(regions)} regions)")
    table.add_column("region")
    table.add_column("refreshed", justify="right")
    table.add_column("kept from catalog", justify="right")
    table.add_column("no price", justify="right")
    table.add_column("why", overflow="fold")
    for r in report.regions:
        table.add_row(
            r.region,
            _count(r.refreshed),
            _count(r.kept),
            _count(r.missing),
            r.why or "-",
        )
    console.print(table)

    if report.overlay is not None:
        console.print(f"Saved {report.refreshed} refreshed prices (as of {report.as_of}) to {report.overlay}")
    else:
        console.print("No price was refreshed: the daemon keeps using the catalog it has.")
    after = AwsCatalog.load(state_dir)
    priced = [p for t in types for r in regions if (p := after.price(t, r)) is not None]
    if priced:
        oldest = min(p.as_of for p in priced)
        console.print(f"Oldest price in use: {oldest} ({max(0, (report.as_of - oldest).days)} days old)")
    return 0 if report.refreshed + report.kept > 0 else 1


def _count(types: Sequence[str]) -> str:
    if not types:
        return "0"
    if len(types) <= 3:
        return f"{len(types)} ({', '.join(types)})"
    return str(len(types))


def _configured_session(cfg: config.AwsCloud) -> boto3.session.Session | None:
    """The daemon's credentials (profile, assumed role) for `clouds.aws`; None: boto3's default chain."""
    if not cfg.profile and not cfg.role_arn:
        return None
    from providers.aws import aws_session

    return aws_session(cfg)
