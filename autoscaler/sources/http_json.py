"""Any HTTP endpoint that answers JSON: GET the URL, take the number at a dotted path (`data.queues.0.depth`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from autoscaler.config import HttpSource
from autoscaler.model import Sample
from autoscaler.sources import _http
from autoscaler.sources._http import FetchError


class HttpJson:
    def __init__(self, cfg: HttpSource) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self.kind: str = cfg.kind
        self.timeout_seconds: float = cfg.timeout_seconds

    def read(self, now: datetime) -> Sample:
        where = _http.redact_url(self.cfg.url)
        try:
            status, body = _http.get(
                self.cfg.url,
                headers=self.cfg.headers,
                timeout=self.cfg.timeout_seconds,
                verify=self.cfg.verify_tls,
            )
            if not 200 <= status < 300:
                raise FetchError(f"HTTP {status}")
            value = to_number(dig(_http.parse_json(body), self.cfg.field), self.cfg.field)
        except FetchError as exc:
            return Sample(self.name, self.kind, None, None, f"http source {self.name!r} ({where}): {exc}")
        except Exception as exc:  # read() never raises; the type is enough to find the bug, the text may leak
            what = f"unexpected {type(exc).__name__}"
            return Sample(self.name, self.kind, None, None, f"http source {self.name!r} ({where}): {what}")
        # The endpoint reports the current value: it was observed now.
        return Sample(self.name, self.kind, value, now)


def dig(data: Any, path: str) -> Any:
    """Follow a dotted path: a part indexes a list when the node is a list (negative counts from the end)."""
    node = data
    for depth, part in enumerate(path.split(".")):
        here = ".".join(path.split(".")[: depth + 1])
        if isinstance(node, dict):
            if part not in node:
                raise FetchError(f"field {here!r} is not in the answer")
            node = node[part]
        elif isinstance(node, list):
            try:
                node = node[int(part)]
            except ValueError:
                raise FetchError(f"field {here!r}: {part!r} is not a list index") from None
            except IndexError:
                raise FetchError(f"field {here!r}: index {part} is out of range ({len(node)} items)") from None
        else:
            raise FetchError(f"field {here!r}: cannot look inside a {type(node).__name__}")
    return node


def to_number(raw: Any, path: str) -> float:
    """A JSON number, or a string holding one (some exporters quote numbers). NaN passes: combine() holds."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise FetchError(f"field {path!r} is {type(raw).__name__} {str(raw)[:40]!r}, not a number")
    try:
        return float(raw)
    except (ValueError, OverflowError):
        raise FetchError(f"field {path!r} is {type(raw).__name__} {str(raw)[:40]!r}, not a number") from None
