"""A Prometheus instant query (GET /api/v1/query) that must answer one number: a scalar or a one-element vector.

The query is evaluated at the daemon's `now` (the `time` parameter) and the Sample's `observed_at` is the
timestamp Prometheus puts on the result. For an instant query that is the evaluation time, not the time the
underlying series was scraped: Prometheus itself deals with data that stopped coming. When a scrape target stops
answering, Prometheus marks its series stale at the next failed scrape and the query returns no series, which is
an error Sample here, so the pool holds within one scrape interval (tests/test_source_prometheus.py shows it
against a real server). A series that ends without a staleness marker (federation, remote write, a Prometheus
restart) still answers for Prometheus's lookback delta (5 minutes by default); `timestamp(metric)` gives a plain
series' own scrape time if that matters.

Authentication and TLS: a bearer token from `bearer_token_env` or `bearer_token_file` (read at every query, so
a rotated token is used at once; the environment variable wins when both are set), basic auth from the URL's
userinfo, and for https a private CA from `ca_file` (or no verification with `verify_tls: false`). No error
message ever carries the token, the URL's password or its query values.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from autoscaler.config import PrometheusSource
from autoscaler.model import Sample
from autoscaler.sources import _http
from autoscaler.sources._http import FetchError

MAX_TOKEN_BYTES = 16384


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
        token = bearer_token(self.cfg.bearer_token_env, self.cfg.bearer_token_file)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        params = {"query": self.cfg.query, "time": f"{now.timestamp():.3f}"}
        status, body = _http.get(
            self.endpoint,
            params=params,
            headers=headers,
            timeout=self.cfg.timeout_seconds,
            verify=_http.tls_verify(self.cfg.verify_tls, self.cfg.ca_file),
        )
        return parse_response(status, body)


def bearer_token(env: str | None, file: Path | None) -> str | None:
    """The bearer token, read now (so a rotated one is picked up without a restart): from the environment
    variable `env` when it is set, else from `file`; None when neither is configured. Raises FetchError naming
    the variable or file, never saying anything about its content."""
    if not env and file is None:
        return None
    missing: list[str] = []
    if env:
        token = os.environ.get(env, "").strip()
        if token:
            return _checked_token(token, f"environment variable {env}")
        missing.append(f"environment variable {env} (the bearer token) is not set")
    if file is not None:
        try:
            with file.open("rb") as f:
                raw = f.read(MAX_TOKEN_BYTES + 1)  # bounded: a path to a log or /dev/zero by mistake
            if len(raw) > MAX_TOKEN_BYTES:
                raise FetchError(f"bearer token file {file} is larger than {MAX_TOKEN_BYTES} bytes: not a token")
            token = raw.decode("utf-8").strip()
        except FileNotFoundError:
            missing.append(f"bearer token file {file} does not exist")
        except UnicodeDecodeError:
            raise FetchError(f"bearer token file {file} is not UTF-8 text") from None
        except OSError as exc:
            raise FetchError(
                f"bearer token file {file} cannot be read: {exc.strerror or type(exc).__name__}"
            ) from None
        else:
            if token:
                return _checked_token(token, f"bearer token file {file}")
            missing.append(f"bearer token file {file} is empty")
    raise FetchError(" and ".join(missing))


def _checked_token(token: str, where: str) -> str:
    # A header value must be visible ASCII: anything else would fail inside the HTTP library, whose message
    # could quote the token.
    if not all("!" <= c <= "~" for c in token):
        raise FetchError(f"{where} holds a character a bearer token cannot contain (space, control or non-ASCII)")
    return token


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
