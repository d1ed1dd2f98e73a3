"""The admin API under Schemathesis and under an unauthenticated caller, with a real daemon behind it.

The daemon runs the built-in default policy on the simulated cloud (tests/daemon_harness.py) and has ticked, so
the store holds instances, blocks, decisions, prices and a policy revision for the generated calls to find.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.routing import Route

from autoscaler.api import errors as api_errors
from autoscaler.api.app import create_app
from autoscaler.api.errors import MUTATING_METHODS
from autoscaler.policyfile import default_policy_text
from autoscaler.runner import Runner, is_loopback
from tests.daemon_harness import Harness

TOKEN = "fuzz-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    where = tmp_path_factory.mktemp("api-fuzz")
    (where / "policy.yaml").write_text(default_policy_text(), encoding="utf-8")  # so a reload can succeed
    h = Harness.start(default_policy_text(), where, policy_path=where / "policy.yaml")
    h.run(ticks=4)  # scaled up, H100 spot refused and blocked, A100 spot launched
    assert h.store.instances(live_only=True) and h.store.blocks(), "data for the generated calls to find"
    yield h
    h.daemon.alerts.close()
    h.store.close()


@pytest.fixture(scope="module")
def app(harness: Harness) -> FastAPI:
    return create_app(harness.daemon, TOKEN)


@pytest.fixture(scope="module")
def api_schema(app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# 8 in CI; a longer run: GPU_AUTOSCALER_API_FUZZ_EXAMPLES=200 pytest tests/test_api_fuzz.py
EXAMPLES_PER_OPERATION = int(os.environ.get("GPU_AUTOSCALER_API_FUZZ_EXAMPLES", "8"))
# Operations that answer a well-formed request 422 by a rule the schema cannot state (an override above the
# pool's max_capacity; a reload whose file is invalid): Schemathesis' "valid data must be accepted" check does not
# apply to them; every other check does.
BUSINESS_RULE_422 = {("POST", "/v1/pools/{pool}/override"), ("POST", "/v1/policy/reload")}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_operation_answers_as_documented_and_never_5xx(api_schema: Any, mode: GenerationMode) -> None:
    """Schemathesis' checks on every operation of the OpenAPI document: no 5xx, status codes, content types and
    bodies as documented (negative mode: malformed input gets a documented 4xx)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15, [f"{op.method} {op.path}" for op in operations]
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            excluded = [positive_data_acceptance] if (case.method, case.path) in BUSINESS_RULE_422 else []
            case.call_and_validate(headers=AUTH, excluded_checks=excluded)

        try:
            run()
        except Unsatisfiable:  # an operation with nothing to make invalid (no parameters, no body)
            assert mode == GenerationMode.NEGATIVE


# ------------------------------------------------------------------ the token


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the application serves, docs included, with path parameters filled in."""
    out = []
    for route in app.routes:
        if isinstance(route, APIRoute | Route):
            path = route.path.replace("{pool}", "demo-llm").replace("{token}", "no-such-token")
            assert "{" not in path, f"fill in the path parameter of {route.path} here"
            out.extend((method, path) for method in sorted(route.methods or ()))
    return out


def test_every_mutating_route_needs_the_token(app: FastAPI, harness: Harness) -> None:
    """Enumerated from the app itself, so a route added later cannot escape the gate."""
    client = TestClient(app)
    routes = _routes(app)
    mutating = [(m, p) for m, p in routes if m in MUTATING_METHODS]
    assert len(mutating) >= 6, mutating  # pause, resume, override set/clear, reload, unblock
    before = (harness.store.controls(), harness.store.blocks(), harness.store.policy_revisions())
    for method, path in mutating:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
            {"X-Token": TOKEN},
        ):
            r = client.request(method, path, headers=headers, json={"capacity": 1, "ttl_seconds": 60})
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"].startswith("Bearer")
    # Methods no route declares are refused without the token too, on every path (never 405 first).
    for path in {p for _, p in routes}:
        for method in sorted(MUTATING_METHODS):
            assert client.request(method, path).status_code == 401, (method, path)
    assert (harness.store.controls(), harness.store.blocks(), harness.store.policy_revisions()) == before
    # Reads stay open.
    for method, path in routes:
        if method == "GET":
            assert client.get(path).status_code != 401, path


def test_the_token_is_compared_in_constant_time(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_errors.hmac, "compare_digest", spy)
    client = TestClient(app)
    assert client.post("/v1/pools/demo-llm/pause", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/v1/pools/demo-llm/resume", headers=AUTH).status_code == 200
    assert calls == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_the_openapi_document_declares_the_token_on_every_mutating_operation(app: FastAPI) -> None:
    doc = TestClient(app).get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method.upper() in MUTATING_METHODS:
                assert op.get("security"), (method, path)
                assert "401" in op["responses"], (method, path)


# ------------------------------------------------------------------ where the API listens


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("", False), ("::", False), ("10.0.0.5", False), ("admin.example.com", False)],
)  # fmt: skip
def test_loopback_or_not(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_api_binds_loopback_by_default_and_warns_when_told_to_bind_wider(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="autoscaler.runner")
    h = Harness.start(default_policy_text(), tmp_path)
    host, _, _ = h.loaded.policy.daemon.admin.listen.rpartition(":")  # the default: nobody said otherwise
    runner = Runner(h.daemon, host, 0, TOKEN)
    runner.start()
    try:
        bound = {sock.getsockname()[0] for server in runner.server.servers for sock in server.sockets}
        assert bound == {"127.0.0.1"}
        assert not [r for r in caplog.records if "beyond loopback" in r.getMessage()]
    finally:
        runner.shutdown()
        h.daemon.alerts.close()
    Runner(h.daemon, "0.0.0.0", 0, TOKEN)  # told to bind every interface: not started here, only built
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("0.0.0.0" in w and "beyond loopback" in w and "TLS" in w for w in warnings), warnings
