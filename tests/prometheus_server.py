"""A real Prometheus server for the Prometheus source's tests: the `prometheus` binary (Debian's package, 2.42),
started on 127.0.0.1 with a free port, a temporary storage directory and a 1 s scrape interval, scraping small
exporters the tests run in-process (prometheus_client's own HTTP server on 127.0.0.1, port 0).

- `require_prometheus()` finds the binary, or skips the test with the reason, or fails it when
  GPU_AUTOSCALER_REQUIRE_SERVICES=1 (CI: .ci/run installs the package), like conftest's require_postgres.
- `Exporter`: a registry served on 127.0.0.1 that a test sets gauges, counters and histograms in; it can be
  stopped and started again on the same port (a target that goes away and comes back).
- `PrometheusServer.start(...)`: writes prometheus.yml (and a web config for TLS and basic auth), starts the
  process, waits for /-/ready, for every target to be up (GET /api/v1/targets) and for the first samples;
  `stop()` terminates it and waits. Its log is kept in the temporary directory and shown when it fails.
- `make_tls_files()`: a private CA and a server certificate for 127.0.0.1 it signed, made with `cryptography`.

Prometheus 2.42 hands discovered targets (static ones too) to its scrape manager on a 5 s ticker, so the first
scrape comes about 5 s after the start however short the scrape interval: a server without targets is ready in
about 0.2 s, one that must show scraped samples in about 5-6 s. The session fixtures start each server once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server

START_TIMEOUT_SECONDS = 30.0  # the first scrape alone takes ~5 s (see above); a loaded CI runner may double it
SCRAPE_INTERVAL = "1s"


def require_prometheus() -> str:
    """The path of the `prometheus` binary, or end the test: skipped when it is not installed, failed instead
    when GPU_AUTOSCALER_REQUIRE_SERVICES=1, so that CI can never pass by skipping the real-server half."""
    path = shutil.which("prometheus")
    if path is None:
        reason = (
            "the prometheus binary is not on PATH (Debian/Ubuntu: apt-get install prometheus); "
            "the tests against a real Prometheus server need it"
        )
        if os.environ.get("GPU_AUTOSCALER_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A port that was free a moment ago. Prometheus binds it itself, so a race is possible: `start` retries."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- exporters


@dataclass
class Exporter:
    """A CollectorRegistry served over HTTP on 127.0.0.1 (port 0 at first, the same port after a restart)."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    port: int = 0
    _server: WSGIServer | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Exporter:
        server, _thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._server = server
        self.port = int(server.server_address[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None


# ---------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the private CA's certificate: what a client trusts (the source's ca_file)
    cert: Path  # the server's certificate for 127.0.0.1 and localhost, signed by the CA
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpu-autoscaler test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


# ---------------------------------------------------------------- the server


class PrometheusError(Exception):
    pass


@dataclass
class PrometheusServer:
    url: str
    directory: Path
    process: subprocess.Popen[bytes]
    verify: bool | ssl.SSLContext = True
    auth: tuple[str, str] | None = None

    @classmethod
    def start(
        cls,
        *,
        jobs: Mapping[str, Sequence[str]] | None = None,
        tls: TlsFiles | None = None,
        basic_auth: tuple[str, str, str] | None = None,  # (user, password, its bcrypt hash)
        wait_for: Sequence[str] = (),
    ) -> PrometheusServer:
        """Start Prometheus scraping `jobs` (job name -> targets) every second; return once it is ready, every
        target is up and each query of `wait_for` returns a series. Raises PrometheusError with its log."""
        binary = require_prometheus()
        directory = Path(tempfile.mkdtemp(prefix="gpu-autoscaler-prometheus-"))
        try:
            return cls._start(binary, directory, dict(jobs or {}), tls, basic_auth, wait_for)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    @classmethod
    def _start(
        cls,
        binary: str,
        directory: Path,
        jobs: dict[str, Sequence[str]],
        tls: TlsFiles | None,
        basic_auth: tuple[str, str, str] | None,
        wait_for: Sequence[str],
    ) -> PrometheusServer:
        config: dict[str, Any] = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": list(targets)}]}
                for name, targets in jobs.items()
            ],
        }
        (directory / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        args = [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            "--storage.tsdb.retention.time=1h",
        ]
        web: dict[str, Any] = {}
        if tls is not None:
            web["tls_server_config"] = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
        if basic_auth is not None:
            web["basic_auth_users"] = {basic_auth[0]: basic_auth[2]}
        if web:
            (directory / "web.yml").write_text(json.dumps(web))
            args.append(f"--web.config.file={directory / 'web.yml'}")
        scheme = "https" if tls is not None else "http"
        verify: bool | ssl.SSLContext = ssl.create_default_context(cafile=str(tls.ca)) if tls else True
        auth = (basic_auth[0], basic_auth[1]) if basic_auth else None
        attempts = 3
        for attempt in range(attempts):
            port = free_port()
            log = (directory / "prometheus.log").open("wb")
            process = subprocess.Popen(
                [*args, f"--web.listen-address=127.0.0.1:{port}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
            log.close()
            server = cls(f"{scheme}://127.0.0.1:{port}", directory, process, verify, auth)
            try:
                server._wait_until_ready(jobs, wait_for)
                return server
            except PrometheusError:
                server._terminate()
                if "address already in use" in server.log() and attempt < attempts - 1:
                    continue  # someone took the port between free_port() and Prometheus's bind: try another
                raise
        raise AssertionError("unreachable")

    def _wait_until_ready(self, jobs: Mapping[str, Sequence[str]], wait_for: Sequence[str]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with httpx.Client(base_url=self.url, verify=self.verify, auth=self.auth, timeout=5) as client:

            def poll(what: str, done: Any) -> None:
                while True:
                    if self.process.poll() is not None:
                        raise PrometheusError(
                            f"prometheus exited with {self.process.returncode} while waiting for {what}:\n"
                            f"{self.log()}"
                        )
                    try:
                        if done(client):
                            return
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise PrometheusError(
                            f"prometheus at {self.url}: no {what} after {START_TIMEOUT_SECONDS:g} s:\n{self.log()}"
                        )
                    time.sleep(0.05)

            poll("/-/ready", lambda c: c.get("/-/ready").status_code == 200)
            expected = sum(len(targets) for targets in jobs.values())

            def targets_up(c: httpx.Client) -> bool:
                active = c.get("/api/v1/targets").json()["data"]["activeTargets"]
                return len(active) == expected and all(t["health"] == "up" for t in active)

            if expected:
                poll("targets up", targets_up)
            for query in wait_for:
                poll(f"series for {query!r}", lambda c, q=query: bool(self._result(c, q)))

    def _result(self, client: httpx.Client, query: str, at: float | None = None) -> Any:
        params = {"query": query, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = client.get("/api/v1/query", params=params).json()
        if body.get("status") != "success":
            raise PrometheusError(f"{query!r}: {body}")
        return body["data"]["result"]

    def query(self, query: str, at: float | None = None) -> Any:
        """Prometheus's own answer (data.result), read directly: what the source under test must agree with."""
        with httpx.Client(base_url=self.url, verify=self.verify, auth=self.auth, timeout=5) as client:
            return self._result(client, query, at)

    def log(self) -> str:
        try:
            return (self.directory / "prometheus.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def _terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.directory, ignore_errors=True)
