"""Secrets never leave the daemon: `gpu-autoscaler run` as a real process, given an admin token, a broker password
(env), a Prometheus bearer token (file), AWS keys (env, against the fake EC2 on 127.0.0.1) and an alert webhook URL
(env); its log (at DEBUG), /metrics, every GET endpoint's answer and the policy it shows hold none of them.

The stub servers answer errors that echo what they were sent, the way a confused proxy might: the daemon must not
pass that echo on either. Talks only to 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.aws_fake import FakeEC2
from tests.test_run_process import Daemon, start

ADMIN_TOKEN = "adm1n-T0KEN-7f3c9e"
RABBIT_PASSWORD = "rabb1t-PASS-51d2"
PROM_TOKEN = "pr0m-BEARER-a81f"
AWS_SECRET = "awsSECRETkey0123456789abcdefghijklmnopqr"
HOOK_SECRET = "T0SECRET/B0SECRET/h00kSECRETpath"


class EchoServer:
    """Answers every request 401 (or 500), echoing its Authorization header and path in the body; counts calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                auth = self.headers.get("Authorization", "")
                server.calls.append((self.path, auth))
                body = json.dumps({"error": "denied", "you sent": auth, "path": self.path}).encode()
                self.send_response(500 if self.path.startswith("/api/v1/query") else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def policy(echo: EchoServer, fake: FakeEC2, token_file: Path) -> str:
    return f"""
daemon:
  id: secrets
  tick_seconds: 1
  admin: {{token_env: TEST_UNSET_TOKEN_VARIABLE, token_file: {token_file.parent / "admin-token"}}}
clouds:
  simulated: {{boot_seconds: 1}}
  aws:
    regions: {{us-east-1: [us-east-1a]}}
    endpoint_url: {fake.endpoint_url}
pools:
  - name: web
    max_capacity: 8
    targets: {{queue_per_unit: 5}}
    scaling: {{max_metric_age_seconds: 1}}
    metrics:
      - {{name: rabbit, type: rabbitmq, via: management, queue: q, management_url: "{echo.url}",
         username: app, password: {{env: TEST_RABBIT_PASSWORD}}, timeout_seconds: 1}}
      - {{name: prom, type: prometheus, url: "{echo.url}", query: "sum(x)", bearer_token_file: {token_file},
         timeout_seconds: 1}}
    candidates:
      - {{cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}}
      - {{cloud: aws, instance_type: g6.xlarge, market: spot, throughput: 1}}
alerts:
  webhooks: [{{name: ops, url: {{env: TEST_ALERT_URL}}}}]
  backoff_seconds: 0.1
  max_attempts: 2
"""


def _gets(d: Daemon) -> dict[str, str]:
    """Every GET route of the OpenAPI document (path parameters filled from the daemon's own answers), the
    document itself and /docs: path -> answer text."""
    client = httpx.Client(base_url=d.url, timeout=10)
    doc = client.get("/openapi.json")
    out = {"/openapi.json": doc.text, "/docs": client.get("/docs").text}
    pools = [p["name"] for p in client.get("/v1/pools").json()]
    tokens = [i["token"] for i in client.get("/v1/instances", params={"include_terminated": True}).json()]
    for path, ops in doc.json()["paths"].items():
        if "get" not in ops:
            continue
        fills = [path]
        if "{pool}" in path:
            fills = [path.replace("{pool}", p) for p in pools]
        if "{token}" in path:
            fills = [path.replace("{token}", t) for t in tokens[:5]] or [path.replace("{token}", "none")]
        for concrete in fills:
            assert "{" not in concrete, f"fill in the path parameter of {path}"
            out[concrete] = client.get(concrete).text
    return out


def test_no_secret_reaches_the_log_metrics_or_api(
    tmp_path: Path, echo: EchoServer, fake_ec2: FakeEC2, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "prom-token"
    token_file.write_text(PROM_TOKEN + "\n")
    path = tmp_path / "policy.yaml"
    path.write_text(policy(echo, fake_ec2, token_file))
    monkeypatch.setenv("TEST_RABBIT_PASSWORD", RABBIT_PASSWORD)
    monkeypatch.setenv("TEST_ALERT_URL", f"{echo.url}/services/{HOOK_SECRET}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTING")
    monkeypatch.delenv("TEST_UNSET_TOKEN_VARIABLE", raising=False)
    (tmp_path / "admin-token").write_text(ADMIN_TOKEN + "\n")  # the admin token from a file
    basic = base64.b64encode(f"app:{RABBIT_PASSWORD}".encode()).decode()
    secrets = {
        "admin token": ADMIN_TOKEN,
        "rabbitmq password": RABBIT_PASSWORD,
        "rabbitmq basic auth": basic,
        "prometheus token": PROM_TOKEN,
        "aws secret key": AWS_SECRET,
        "webhook url": HOOK_SECRET,
        "webhook url (part)": "h00kSECRETpath",
    }
    with start(tmp_path, "--policy", str(path), "--log-level", "DEBUG") as d:
        d.wait_until("a tick", lambda: httpx.get(f"{d.url}/v1/decisions", timeout=5).json())
        # the stale-source alert fires after max_metric_age_seconds (1 s) and is POSTed to the webhook
        d.wait_until("the alert webhook called", lambda: any(p.startswith("/services/") for p, _ in echo.calls))
        d.wait_until("the AWS listing", lambda: fake_ec2.count("DescribeInstances") > 0)
        time.sleep(1.5)  # a few more ticks of errors in the log
        # the secrets were used: the servers saw them
        assert any(auth == f"Basic {basic}" for _, auth in echo.calls)
        assert any(auth == f"Bearer {PROM_TOKEN}" for _, auth in echo.calls)
        # an authenticated call works, and its answer does not repeat the token either
        r = httpx.post(
            f"{d.url}/v1/pools/web/pause", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5
        )
        assert r.status_code == 200
        answers = {"POST /v1/pools/web/pause": r.text, **_gets(d)}
        answers["/metrics"] = httpx.get(f"{d.url}/metrics", timeout=5).text
        assert '"web"' in answers["/v1/policy"] or "web" in answers["/v1/policy"]
        assert d.stop() == 0
    log = d.log.read_text()
    assert "metric source" in log or "source" in log  # the failing sources were logged
    assert len(answers) >= 12, sorted(answers)
    leaks = [
        (what, where)
        for what, secret in secrets.items()
        for where, text in {**answers, "the log": log}.items()
        if secret in text
    ]
    assert not leaks, leaks
    assert os.environ.get("TEST_RABBIT_PASSWORD") == RABBIT_PASSWORD
