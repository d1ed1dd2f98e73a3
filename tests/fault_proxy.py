"""A fault-injecting HTTP(S) proxy on 127.0.0.1, put between a cloud SDK and its local fake server.

    SDK --(endpoint = proxy.url)--> FaultProxy --> the fake (tests/aws_fake.py, gcp_fake.py, azure_fake.py)

Every request is forwarded unchanged, except that, while faults are on, a seeded share of them (`rate`) meets one
fault from `kinds` (they take turns), answered in the cloud's own shape:

- "throttle": AWS `RequestLimitExceeded` (HTTP 503, EC2's XML error), GCP 429 `rateLimitExceeded` (Google's JSON
  envelope), Azure 429 `TooManyRequests` with a `Retry-After` header (`retry_after` seconds).
- "5xx": AWS 500 `InternalError`, GCP 503 `backendError`, Azure 500 `InternalServerError`. Not forwarded.
- "timeout": the connection is held open past the client's timeout (`hold_seconds`) and closed without an
  answer. Half of these are forwarded first: the cloud did it, the answer was lost (a launch's idempotency
  token must then find the instance).
- "slow": forwarded, answered after `slow_seconds` (under the client's timeout: a slow but good answer).
- "malformed": forwarded, then either a 200 with a garbage body or the real answer cut in half (the connection
  closes before Content-Length bytes arrived).

URLs of the fake in answers (Azure's Azure-AsyncOperation / Location headers and nextLink) are rewritten to the
proxy's, so that polling and paging go through it too. For Azure the proxy speaks HTTPS with a certificate of its
own (`ca_path`: trust it as the provider's ca_bundle) and calls the fake over HTTPS, trusting `upstream_ca`.

`faults(rate=0.3, kinds=..., only=...)` turns faults on (optionally only for requests whose method+path matches
`only`), `clear()` turns them off; `injected` counts faults by kind, `forwarded` the requests that reached the
fake. Bounded: holds end at `stop()`, so a test never waits on a held connection at teardown.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import shutil
import socket
import ssl
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

Cloud = Literal["aws", "gcp", "azure"]
KINDS = ("throttle", "5xx", "timeout", "slow", "malformed")
_EXACT = ("garbage", "truncated", "timeout-after-forward")  # one variant only (a test that wants just that one)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def _aws_error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    return status, {"Content-Type": "text/xml;charset=UTF-8"}, body


def _gcp_error(
    status: int, reason: str, message: str, domain: str = "global"
) -> tuple[int, dict[str, str], bytes]:
    error = {"message": message, "domain": domain, "reason": reason}
    body = json.dumps({"error": {"code": status, "message": message, "errors": [error]}}).encode()
    return status, {"Content-Type": "application/json; charset=UTF-8"}, body


def _azure_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        cloud: Cloud,
        *,
        seed: int = 0,
        upstream_ca: Path | str | None = None,
        hold_seconds: float = 2.0,
        slow_seconds: float = 0.3,
        retry_after: int = 1,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.cloud = cloud
        self.hold_seconds = hold_seconds
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.rate = 0.0
        self.kinds: tuple[str, ...] = KINDS
        self._only: re.Pattern[str] | None = None
        self.injected: Counter[str] = Counter()
        self._turn = 0
        self._variant: Counter[str] = Counter()
        self.forwarded = 0
        self.requests = 0
        split = urlsplit(self.upstream)
        self._upstream_tls = split.scheme == "https"
        self._upstream_host = split.hostname or "127.0.0.1"
        self._upstream_port = split.port or (443 if self._upstream_tls else 80)
        self._upstream_ssl: ssl.SSLContext | None = None
        if self._upstream_tls:
            self._upstream_ssl = ssl.create_default_context(cafile=str(upstream_ca) if upstream_ca else None)
        self._dir: Path | None = None
        self.ca_path: Path | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            timeout = 30

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

            def log_message(self, *args: Any) -> None:  # one line per request drowns pytest output
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self._upstream_tls:
            from tests.azure_fake_https import make_certificate

            self._dir = Path(tempfile.mkdtemp(prefix="fault-proxy-"))
            self.ca_path, key_path = make_certificate(self._dir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.ca_path, key_path)
            server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        scheme = "https" if self._upstream_tls else "http"
        self.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ controls
    def faults(self, rate: float = 0.3, kinds: Sequence[str] = KINDS, *, only: str | None = None) -> None:
        """From now on, `rate` of the requests (matching `only`, a regex on "METHOD path", if given) get a fault."""
        unknown = set(kinds) - set(KINDS) - set(_EXACT)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS + _EXACT}")
        with self._lock:
            self.rate, self.kinds = rate, tuple(kinds)
            self._only = re.compile(only) if only else None

    def clear(self) -> None:
        with self._lock:
            self.rate = 0.0
            self._only = None

    # ------------------------------------------------------------------ the proxy
    def _draw(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self.rate <= 0 or (self._only is not None and not self._only.search(f"{method} {path}")):
                return None
            if self._rng.random() >= self.rate:
                return None
            # Kinds take turns (so any window with len(kinds) faults meets every kind), and so do the variants of
            # a kind: a timeout before / after the request reached the fake, a garbage / cut-off answer.
            kind = self.kinds[self._turn % len(self.kinds)]
            self._turn += 1
            if kind in ("timeout", "malformed"):
                self._variant[kind] += 1
                odd = self._variant[kind] % 2 == 1
                kind = {"timeout": ("timeout", "timeout-after-forward"), "malformed": ("garbage", "truncated")}[
                    kind
                ][0 if odd else 1]
            self.injected[kind] += 1
            return kind

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        kind = self._draw(h.command, h.path)
        try:
            if kind == "throttle":
                self._reply(h, *self._throttle())
                return
            if kind == "5xx":
                self._reply(h, *self._server_error())
                return
            if kind == "timeout":
                self._hold(h)
                return
            status, headers, data = self._forward(h, body)
            if kind == "timeout-after-forward":
                self._hold(h)
                return
            if kind == "slow":
                self._stopping.wait(self.slow_seconds)
            if kind == "garbage":
                self._reply(
                    h, 200, {"Content-Type": headers.get("Content-Type", "text/plain")}, b"\x00<{not json]"
                )
                return
            if kind == "truncated":
                self._reply(h, status, headers, data, cut=True)
                return
            self._reply(h, status, headers, data)
        except (ConnectionError, TimeoutError, OSError):
            h.close_connection = True  # the client went away (it timed out): nothing to answer

    def _hold(self, h: BaseHTTPRequestHandler) -> None:
        """Answer nothing until the client has given up, then drop the connection."""
        self._stopping.wait(self.hold_seconds)
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_RDWR)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn: http.client.HTTPConnection
        if self._upstream_tls:
            conn = http.client.HTTPSConnection(
                self._upstream_host, self._upstream_port, timeout=30, context=self._upstream_ssl
            )
        else:
            conn = http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
            with self._lock:
                self.forwarded += 1
        finally:
            conn.close()
        # The fake's own URLs (polling, paging) must lead back through the proxy.
        if self.url and self.upstream.encode() in data:
            data = data.replace(self.upstream.encode(), self.url.encode())
        out = {k: v.replace(self.upstream, self.url) for k, v in out.items()}
        return resp.status, out, data

    def _reply(
        self, h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], data: bytes, *, cut: bool = False
    ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        if cut:
            h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data[: len(data) // 2] if cut else data)
        h.wfile.flush()
        if cut:
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)

    def _throttle(self) -> tuple[int, dict[str, str], bytes]:
        if self.cloud == "aws":
            return _aws_error(503, "RequestLimitExceeded", "Request limit exceeded.")
        if self.cloud == "gcp":
            return _gcp_error(429, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits")
        return _azure_error(
            429,
            "TooManyRequests",
            "The request is being throttled as the limit has been reached for operation type - Read_30Min.",
            {"Retry-After": str(self.retry_after)},
        )

    def _server_error(self) -> tuple[int, dict[str, str], bytes]:
        if self.cloud == "aws":
            return _aws_error(500, "InternalError", "An internal error has occurred.")
        if self.cloud == "gcp":
            return _gcp_error(503, "backendError", "Backend Error")
        return _azure_error(500, "InternalServerError", "Encountered internal server error.")


def proxy_fixture(upstream: str, cloud: Cloud, **kwargs: Any) -> Iterator[FaultProxy]:
    """A started proxy, stopped afterwards. Plain generator: wrap it with pytest.fixture yourself."""
    with FaultProxy(upstream, cloud, **kwargs) as proxy:
        yield proxy
