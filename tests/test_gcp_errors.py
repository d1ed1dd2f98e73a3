"""Compute Engine errors -> typed errors: the reason or operation code decides, the HTTP status only as a
fallback, and "not found" depends on the call."""

# google-api-core's and google-auth's exception constructors are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import pytest
import requests
from google.api_core import exceptions as api
from google.auth import exceptions as auth

from autoscaler.errors import (
    AuthError,
    CapacityError,
    ConfigError,
    NotFound,
    ProviderError,
    QuotaError,
    TransientError,
)
from autoscaler.model import Scope
from providers._gcp_errors import from_exception, from_operation, translate

Z, R, C = Scope.ZONE, Scope.REGION, Scope.CLOUD
GPUS_GLOBAL = "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."
T4_REGIONAL = "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1."


@pytest.mark.parametrize(
    ("code", "message", "status", "during", "error", "scope"),
    [
        ("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have enough resources", 503, "insert", CapacityError, Z),
        ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "no L4 left", 503, "insert", CapacityError, Z),
        ("insufficientCapacity", "bulkInsert: not enough", 503, "insert", CapacityError, Z),
        ("QUOTA_EXCEEDED", T4_REGIONAL, 403, "insert", QuotaError, R),
        ("quotaExceeded", T4_REGIONAL, 403, "insert", QuotaError, R),
        ("QUOTA_EXCEEDED", GPUS_GLOBAL, 403, "insert", QuotaError, C),
        ("quotaExceeded", GPUS_GLOBAL, 403, "insert", QuotaError, C),
        ("rateLimitExceeded", "Rate Limit Exceeded", 403, "insert", TransientError, None),
        ("userRateLimitExceeded", "slow down", 429, "call", TransientError, None),
        ("", "Too Many Requests", 429, "call", TransientError, None),
        ("backendError", "Backend Error", 503, "insert", TransientError, None),
        ("internalError", "Internal Error", 500, "call", TransientError, None),
        ("", "Bad Gateway", 502, "call", TransientError, None),
        ("RESOURCE_OPERATION_RATE_EXCEEDED", "too many operations on the resource", 503, "insert", TransientError, None),
        ("forbidden", "Required 'compute.instances.create' permission", 403, "insert", AuthError, None),
        ("insufficientPermissions", "Request had insufficient authentication scopes.", 403, "call", AuthError, None),
        ("accessNotConfigured", "Compute Engine API has not been used in project", 403, "call", AuthError, None),
        ("required", "Login Required.", 401, "call", AuthError, None),
        ("", "Forbidden", 403, "call", AuthError, None),
        ("invalid", "Invalid value for field 'resource.machineType'", 400, "insert", ConfigError, None),
        ("badRequest", "Instances with guest accelerators do not support live migration.", 400, "insert",
         ConfigError, None),
        ("notFound", "The resource 'projects/x/global/images/nope' was not found", 404, "insert", ConfigError, None),
        ("RESOURCE_NOT_FOUND", "image gone", 404, "insert", ConfigError, None),
        ("notFound", "The resource '.../instances/gpua-1' was not found", 404, "delete", NotFound, None),
        ("", "Not Found", 404, "get", NotFound, None),
        ("", "Bad Request", 400, "call", ConfigError, None),
        ("somethingNew", "a 5xx we have never seen", 503, "call", TransientError, None),
    ],
)  # fmt: skip
def test_translate(
    code: str, message: str, status: int, during: str, error: type[ProviderError], scope: Scope | None
) -> None:
    got = translate(code, message, status, during=during)
    assert type(got) is error
    assert got.message == message
    assert got.code == (code or str(status))
    if scope is not None:
        assert got.scope == scope  # type: ignore[attr-defined]


def test_an_operation_error_is_read_by_its_code_not_its_503() -> None:
    stockout = from_operation([("ZONE_RESOURCE_POOL_EXHAUSTED", "no room in us-central1-a")], 503)
    assert isinstance(stockout, CapacityError) and stockout.scope == Scope.ZONE
    quota = from_operation([("QUOTA_EXCEEDED", GPUS_GLOBAL)], 403)
    assert isinstance(quota, QuotaError) and quota.scope == Scope.CLOUD
    # a known code decides even when it comes after one we do not know
    wrapped = from_operation([("SOMETHING_GENERIC", "x"), ("ZONE_RESOURCE_POOL_EXHAUSTED", "y")], 503)
    assert isinstance(wrapped, CapacityError)
    assert isinstance(from_operation([("UNKNOWN_THING", "?")], 503), TransientError)
    assert isinstance(from_operation([("UNKNOWN_THING", "?")], 400), ConfigError)
    assert isinstance(from_operation([], None), TransientError)


def test_sdk_exceptions() -> None:
    conflict = api.Conflict("exists", errors=[{"reason": "alreadyExists", "message": "exists"}])
    assert isinstance(from_exception(conflict, during="insert"), ConfigError)
    assert from_exception(conflict, during="insert").code == "alreadyExists"
    quota = api.Forbidden(T4_REGIONAL, errors=[{"reason": "quotaExceeded"}])
    assert isinstance(from_exception(quota, during="insert"), QuotaError)
    assert isinstance(from_exception(api.Forbidden("no"), during="insert"), AuthError)
    assert isinstance(from_exception(api.NotFound("gone"), during="delete"), NotFound)
    assert isinstance(from_exception(api.NotFound("no image"), during="insert"), ConfigError)
    assert isinstance(from_exception(api.ServiceUnavailable("busy")), TransientError)
    retry = api.RetryError("Timeout of 10.0s exceeded", cause=api.ServiceUnavailable("busy"))
    assert isinstance(from_exception(retry), TransientError) and from_exception(retry).code == "RetryError"
    assert isinstance(from_exception(auth.DefaultCredentialsError("no ADC")), AuthError)
    assert isinstance(from_exception(auth.RefreshError("token refused")), AuthError)
    assert isinstance(from_exception(requests.exceptions.ConnectionError("refused")), TransientError)
    assert isinstance(from_exception(requests.exceptions.ReadTimeout("slow")), TransientError)
    typed = QuotaError("already typed")
    assert from_exception(typed) is typed
