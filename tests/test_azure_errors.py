"""Azure Resource Manager errors -> the core's typed errors (providers/_azure_errors.py)."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import HttpResponse
from azure.identity import CredentialUnavailableError

from autoscaler.errors import AuthError, CapacityError, ConfigError, NotFound, QuotaError, TransientError
from autoscaler.model import Scope
from providers._azure_errors import from_exception, pick, translate

QUOTA_MESSAGE = (
    "Operation could not be completed as it results in exceeding approved standardNCADSA100v4Family Cores quota."
)
PRICE_MESSAGE = "The VM max price 0.1 USD is lower than the current spot price 0.44 USD for this size."

CASES = [
    # (code, message, HTTP status: None/200 for an operation that ended Failed, expected)
    ("AllocationFailed", "", 200, CapacityError),  # the end of the operation: the poll's status is 200
    ("ZonalAllocationFailed", "", 200, CapacityError),
    ("OverconstrainedAllocationRequest", "", 200, CapacityError),
    ("OverconstrainedZonalAllocationRequest", "", 200, CapacityError),
    ("SkuNotAvailable", "", 409, CapacityError),  # a 409 that azure-core raises as ResourceExistsError
    ("OperationNotAllowed", QUOTA_MESSAGE, 409, QuotaError),
    ("QuotaExceeded", "", 409, QuotaError),
    ("OperationNotAllowed", PRICE_MESSAGE, 409, CapacityError),  # spot max price below market
    ("OperationNotAllowed", "Operation 'start' is not allowed on a VM being deleted.", 409, ConfigError),
    ("TooManyRequests", "", 429, TransientError),
    ("SomethingNew", "", 429, TransientError),
    ("InternalServerError", "", 500, TransientError),
    ("SomethingNew", "", 503, TransientError),
    ("RetryableError", "", 409, TransientError),
    ("AnotherOperationInProgress", "", 409, TransientError),
    ("AuthorizationFailed", "", 403, AuthError),
    ("LinkedAuthorizationFailed", "", 403, AuthError),
    ("InvalidAuthenticationToken", "", 401, AuthError),
    ("SomethingNew", "", 401, AuthError),
    ("SomethingNew", "", 403, AuthError),
    ("ResourceNotFound", "", 404, NotFound),
    ("NotFound", "", 404, NotFound),
    ("ResourceGroupNotFound", "", 404, ConfigError),
    ("InvalidParameter", "", 400, ConfigError),
    ("InvalidResourceReference", "", 400, ConfigError),
    ("ImageNotFound", "", 404, ConfigError),
    ("SomethingNew", "", 400, ConfigError),
    ("SomethingNew", "", 200, TransientError),  # an operation that failed with a code we do not know
]


@pytest.mark.parametrize(("code", "message", "status", "kind"), CASES, ids=[f"{c}-{s}" for c, _, s, _ in CASES])
def test_codes_translate_to_the_core_vocabulary(
    code: str, message: str, status: int | None, kind: type[Exception]
) -> None:
    error = translate(code, message or "message", status)
    assert type(error) is kind
    assert error.code == code


def test_scopes() -> None:
    capacity = translate("ZonalAllocationFailed", "m", 200)
    spot_price = translate("OperationNotAllowed", PRICE_MESSAGE, 409)
    quota = translate("OperationNotAllowed", QUOTA_MESSAGE, 409)
    assert isinstance(capacity, CapacityError) and capacity.scope == Scope.ZONE
    assert isinstance(spot_price, CapacityError) and spot_price.scope == Scope.ZONE
    assert isinstance(quota, QuotaError) and quota.scope == Scope.REGION


def test_the_telling_code_is_found_in_nested_details() -> None:
    tree: dict[str, Any] = {
        "code": "Conflict",
        "message": "The operation failed.",
        "details": [
            {"code": "Generic", "message": "x", "details": [{"code": "AllocationFailed", "message": "m"}]}
        ],
    }
    assert pick(tree) == ("AllocationFailed", "m")
    assert pick({"code": "Conflict", "details": [{"code": "InvalidParameter", "message": "bad"}]}) == (
        "InvalidParameter",
        "bad",
    )
    assert pick({"code": "InvalidParameter", "message": "outer"}) == ("InvalidParameter", "outer")
    assert pick(None) == ("", "")


class _Response(HttpResponse):
    """A minimal azure-core response carrying an ARM error body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(None, None)  # type: ignore[arg-type]
        self.status_code = status
        self.reason = "reason"
        self.content_type = "application/json"
        self._body = body

    def body(self) -> bytes:
        return self._body

    def text(self, encoding: str | None = None) -> str:
        return self._body.decode()


def _http_error(cls: type[HttpResponseError], status: int, body: bytes) -> HttpResponseError:
    return cls(response=_Response(status, body))


def test_a_409_is_read_by_its_code_never_as_the_vm_exists() -> None:
    exc = _http_error(
        ResourceExistsError, 409, b'{"error": {"code": "SkuNotAvailable", "message": "not in zone 1"}}'
    )
    error = from_exception(exc)
    assert isinstance(error, CapacityError) and error.code == "SkuNotAvailable"
    quota = _http_error(
        ResourceExistsError,
        409,
        f'{{"error": {{"code": "OperationNotAllowed", "message": "{QUOTA_MESSAGE}"}}}}'.encode(),
    )
    assert isinstance(from_exception(quota), QuotaError)


def test_a_failed_operation_body_is_read_with_the_poll_status_200() -> None:
    body = b'{"status": "Failed", "error": {"code": "Conflict", "details": [{"code": "ZonalAllocationFailed"}]}}'
    error = from_exception(_http_error(HttpResponseError, 200, body))
    assert isinstance(error, CapacityError) and error.code == "ZonalAllocationFailed"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (CredentialUnavailableError("no credential in the chain"), AuthError),
        (ClientAuthenticationError("token request refused"), AuthError),
        (ServiceRequestError("connection refused"), TransientError),
        (ServiceResponseError("connection reset"), TransientError),
        (
            _http_error(ResourceNotFoundError, 404, b'{"error": {"code": "ResourceNotFound", "message": "m"}}'),
            NotFound,
        ),
        (_http_error(HttpResponseError, 502, b"<html>bad gateway</html>"), TransientError),
        (_http_error(HttpResponseError, 400, b""), ConfigError),
    ],
)
def test_sdk_failures_are_typed(exc: Exception, kind: type[Exception]) -> None:
    assert type(from_exception(exc)) is kind
