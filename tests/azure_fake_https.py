"""The HTTPS plumbing of the fake Azure Resource Manager (tests/azure_fake.py): what azure-core's pipeline needs
before it will talk to a server on 127.0.0.1, and nothing about what Azure answers.

- TLS, because azure-core's bearer-token policy refuses plain http: `make_certificate` makes a self-signed
  certificate (its own CA) for 127.0.0.1, once per server, in a temporary directory; a client trusts it through
  the provider's `ca_bundle` (`connection_verify`).
- A bearer token: `StaticToken` is a credential whose get_token() always answers the same token.
- `HttpsServer`: a threaded HTTPS server on 127.0.0.1 (keep-alive, Nagle off) that hands each request to an
  `Answer` callable (method, path with query, headers, body) and writes its `Reply` back as JSON, with an
  x-ms-request-id header as Azure sends.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import ssl
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken

FAKE_TOKEN = "fake-arm-token"


class StaticToken:
    """A credential for the fake: any object with get_token() is one to azure-core's bearer-token policy."""

    def __init__(self, token: str = FAKE_TOKEN) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, int(dt.datetime.now(dt.UTC).timestamp()) + 3600)


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Answer = Callable[[str, str, dict[str, str], bytes], Reply]  # (method, raw path, headers, body) -> reply


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpu-autoscaler fake ARM")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one TLS handshake per client connection, not per request
    disable_nagle_algorithm = True  # headers and body are two writes: without this, each answer waits ~40 ms
    timeout = 10
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.answer(self.command, self.path, dict(self.headers.items()), body)
        data = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        for k, v in {"Content-Type": "application/json", **reply.headers}.items():
            self.send_header(k, v)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_DELETE = do_POST = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # one line per request drowns pytest output
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    answer: Answer


class HttpsServer:
    """HTTPS on 127.0.0.1, every request answered by `answer`. The certificate is made at construction
    (`ca_path` is known before `start`); `url` is known once started."""

    def __init__(self, answer: Answer, *, prefix: str = "fake-https-") -> None:
        self._answer = answer
        self._dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.ca_path, key_path = make_certificate(self._dir)
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(self.ca_path, key_path)
        self.url = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Start serving on a free port; answers the base URL ("https://127.0.0.1:<port>")."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.socket = self._ssl.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        server.answer = self._answer
        self._server = server
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        # poll_interval: shutdown() waits up to one poll; the default 0.5 s makes every teardown slow.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and remove the certificate's directory."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self._dir, ignore_errors=True)
