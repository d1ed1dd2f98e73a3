"""The one HTTP GET every HTTP-based source makes, with a hard deadline, a size cap and error messages that
never carry a secret: URLs lose their userinfo and query values, and known secret strings are blanked out of
whatever the HTTP library said.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

MAX_BODY_BYTES = 1 << 20  # a metric answer is a few hundred bytes; more is a misconfigured URL


class FetchError(Exception):
    """A failed read, with a message safe to log and show."""


def redact_url(url: str) -> str:
    """The URL without user:password@ and with query values replaced, for messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return "<unparsable URL>"
    query = "&".join(f"{k}=..." for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be secret: its userinfo and its query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    out = [url, parts.query]
    out += [p for p in (parts.username, parts.password) if p]
    out += [v for _, v in parse_qsl(parts.query)]
    return out


def scrub(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so that a secret containing another is blanked whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def tls_verify(verify_tls: bool, ca_file: Path | None) -> bool | ssl.SSLContext:
    """How an https URL's server is verified: not at all (verify_tls off), by the system's trust store, or by the
    CAs of `ca_file` alone (a private CA). The file is read at every call, so a renewed CA bundle is picked up
    without a restart. Raises FetchError naming the file (a CA bundle holds nothing secret)."""
    if not verify_tls:
        return False
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except FileNotFoundError:
        raise FetchError(f"CA file {ca_file} does not exist") from None
    except ssl.SSLError as exc:  # not PEM, or no certificate in it
        raise FetchError(f"CA file {ca_file} holds no usable CA certificate ({exc.reason or exc})") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise FetchError(f"CA file {ca_file} cannot be read: {reason}") from None


def get(
    url: str,
    *,
    timeout: float,
    verify: bool | ssl.SSLContext,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """GET url -> (status, body). Raises FetchError; the whole read, not just each phase, ends by `timeout`."""
    secrets = [*url_secrets(url), *(headers or {}).values()]
    deadline = time.monotonic() + timeout
    query: list[tuple[str, str | int | float | bool | None]] | None = None
    if params:
        # httpx replaces a URL's own query with `params`; keep both (a gateway key in the URL, say).
        try:
            parts = urlsplit(url)
            query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
            url = urlunsplit(parts._replace(query=""))
        except ValueError:
            query = list(params.items())
    body = bytearray()
    try:
        with (
            _client(verify) as client,
            client.stream("GET", url, params=query, headers=headers, timeout=timeout) as resp,
        ):
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise FetchError(f"answer larger than {MAX_BODY_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(f"no complete answer within {timeout:g} s")
            return resp.status_code, bytes(body)
    except httpx.TimeoutException as exc:
        raise FetchError(f"timed out after {timeout:g} s ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"request failed: {type(exc).__name__}: {scrub(str(exc), secrets)}") from None
    except (OSError, ValueError) as exc:  # bad TLS setup, bad URL: still never raise past read()
        raise FetchError(f"request failed: {type(exc).__name__}: {scrub(str(exc), secrets)}") from None


_SHARED: dict[bool, httpx.Client] = {}
_SHARED_LOCK = threading.Lock()


@contextlib.contextmanager
def _client(verify: bool | ssl.SSLContext) -> Iterator[httpx.Client]:
    """A client for one read. With the system trust store (or none), one shared client: making a client loads the
    CA bundle (tens of ms of CPU), which for 100 pools every tick would cost more than the reads; sharing it also
    keeps connections alive between ticks. A private CA file gets a client of its own, made for the read."""
    if isinstance(verify, ssl.SSLContext):
        with httpx.Client(verify=verify, follow_redirects=False) as own:
            yield own
        return
    with _SHARED_LOCK:
        shared = _SHARED.get(verify)
        if shared is None:
            shared = _SHARED[verify] = httpx.Client(verify=verify, follow_redirects=False)
    yield shared


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise FetchError("the answer is not JSON") from None
