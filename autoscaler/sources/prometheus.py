"""A Prometheus instant query (GET /api/v1/query) that must answer one number: a scalar or a one-element vector.

The sample's timestamp is the one Prometheus returns, so a stale answer is visible to `combine`.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from autoscaler.config import PrometheusSource
from autoscaler.model import Sample
from autoscaler.sources import _http
from autoscaler.sources._http import FetchError


class Prometheus:
    def __init__(self, cfg: PrometheusSource) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self.kind: str = cfg.kind
        self.timeout_seconds: float = cfg.timeout_seconds
        # Keep any query string of the base URL (an API gateway's key, say) and add the API path to its path.
        try:
            base = urlsplit(cfg.url)
            self.endpoint = urlunsplit(base._replace(path=base.path.rstrip("/") + "/api/v1/query"))
        except ValueError:  # read() reports the bad URL; building the source must not fail the tick
            self.endpoint = cfg.url

    def read(self, now: datetime) -> Sample:
        where = _http.redact_url(self.endpoint)
        try:
            value, at = self._query(now)
        except FetchError as exc:
            return Sample(self.name, self.kind, None, None, f"prometheus source {self.name!r} ({where}): {exc}")
        except Exception as exc:  # read() never raises; the type is enough to find the bug, the text may leak
            what = f"unexpected {type(exc).__name__}"
            return Sample(self.name, self.kind, None, None, f"prometheus source {self.name!r} ({where}): {what}")
        return Sample(self.name, self.kind, value, at)

    def _query(self, now: datetime) -> tuple[float, datetime]:
        headers = {"Accept": "application/json"}
        if self.cfg.bearer_token_env:
            # Read on every query, so a rotated token is picked up without a restart.
            token = os.environ.get(self.cfg.bearer_token_env, "")
            if not token:
                raise FetchError(f"environment variable {self.cfg.bearer_token_env} (the bearer token) is not set")
            headers["Authorization"] = f"Bearer {token}"
        params = {"query": self.cfg.query, "time": f"{now.timestamp():.3f}"}
        status, body = _http.get(
            self.endpoint,
            params=params,
            headers=headers,
            timeout=self.cfg.timeout_seconds,
            verify=self.cfg.verify_tls,
        )
        return parse_response(status, body)


def parse_response(status: int, body: bytes) -> tuple[float, datetime]:
    """(value, timestamp) from an instant-query answer; FetchError saying what is wrong otherwise."""
    try:
        data = _http.parse_json(body)
    except FetchError:
        if status >= 300:
            raise FetchError(f"HTTP {status}") from None
        raise
    if not isinstance(data, dict):
        raise FetchError("the answer is not a Prometheus API response")
    if data.get("status") != "success":
        detail = f"{data.get('errorType', '')}: {data.get('error', '')}".strip(": ")
        raise FetchError(f"query failed (HTTP {status}): {detail[:300] or 'no error given'}")
    if status >= 300:
        raise FetchError(f"HTTP {status}")
    result_type, result = _field(data, "data", "resultType"), _field(data, "data", "result")
    if result_type == "scalar":
        pair = result
    elif result_type == "vector":
        if not isinstance(result, list):
            raise FetchError("the vector result is not a list")
        if len(result) != 1:
            if not result:
                raise FetchError("the query returned no series (is the metric there?)")
            raise FetchError(f"the query returned {len(result)} series; it must return one (wrap it in sum())")
        pair = result[0].get("value") if isinstance(result[0], dict) else None
    else:
        raise FetchError(f"the query returned a {result_type}, not a scalar or a one-element vector")
    if not (isinstance(pair, list) and len(pair) == 2):
        raise FetchError("the result has no [timestamp, value] pair")
    return _number(pair[1]), _timestamp(pair[0])


def _field(data: dict[str, Any], *path: str) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            raise FetchError(f"the answer has no {'.'.join(path)}")
        node = node[part]
    return node


def _number(raw: Any) -> float:
    # Prometheus sends values as strings ("12", "NaN", "+Inf"); NaN and Inf pass here and make combine() hold.
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise FetchError(f"the sample value {str(raw)[:40]!r} is not a number")
    try:
        return float(raw)
    except (ValueError, OverflowError):
        raise FetchError(f"the sample value {str(raw)[:40]!r} is not a number") from None


def _timestamp(raw: Any) -> datetime:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise FetchError(f"the sample timestamp {str(raw)[:40]!r} is not a Unix time")
    try:
        return datetime.fromtimestamp(raw, UTC)
    except (OverflowError, OSError, ValueError):
        raise FetchError(f"the sample timestamp {raw!r} is out of range") from None
