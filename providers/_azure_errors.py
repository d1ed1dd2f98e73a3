"""Azure Resource Manager errors -> the core's error vocabulary. Nothing from azure-core escapes providers/azure.py
untranslated.

Pitfalls this module exists for (see /work/shared/notes/cloud-sdks.md):

- The *code* decides, not the exception class: azure-core maps every 409 to `ResourceExistsError`, and Azure
  answers `SkuNotAvailable` (a stockout) and quota refusals with 409. A 409 is never read as "the VM exists".
- A failure at the end of a long-running operation (`AllocationFailed` after the PUT was accepted) reaches us as
  an `HttpResponseError` whose `status_code` is the poll's 200; the code is in `error.code`, or nested in
  `error.details` under a generic outer code. Every code of the tree is looked at, the most telling one wins.
- `OperationNotAllowed` means three things; its message says which: a quota ("...exceeding approved ... quota"),
  a spot max price below the market price, or a request that is not allowed (configuration).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

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

# A stockout of this size in this zone (and market): another zone, size or cloud may have room.
CAPACITY_CODES = frozenset(
    {
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
        "SkuNotAvailable",
        "AllocationFailedVMSeriesNotAvailable",
    }
)
QUOTA_CODES = frozenset({"QuotaExceeded", "OperationNotAllowedQuotaExceeded"})
TRANSIENT_CODES = frozenset(
    {
        "TooManyRequests",
        "RetryableError",
        "InternalServerError",
        "InternalExecutionError",
        "InternalOperationError",
        "ServiceUnavailable",
        "GatewayTimeout",
        "OperationPreempted",
        "AnotherOperationInProgress",
        "OperationTimedOut",
        "RequestTimeout",
    }
)
AUTH_CODES = frozenset(
    {
        "AuthorizationFailed",
        "LinkedAuthorizationFailed",
        "AuthenticationFailed",
        "InvalidAuthenticationToken",
        "InvalidAuthenticationTokenTenant",
        "ExpiredAuthenticationToken",
    }
)
NOT_FOUND_CODES = frozenset({"ResourceNotFound", "NotFound"})
# Codes that say something went wrong without saying what: the nested details are more telling.
GENERIC_CODES = frozenset(
    {"", "Conflict", "BadRequest", "OperationFailed", "DeploymentFailed", "ResourceOperationFailure"}
)


def translate(code: str, message: str, status: int | None) -> ProviderError:
    """One Azure error code (with its message and HTTP status; the status of a failed poll is 200) as a typed
    error. Capacity errors block the offering (its zone and market); quota errors the region."""
    lowered = message.lower()
    if code in CAPACITY_CODES:
        return CapacityError(message, scope=Scope.ZONE, code=code)
    if code in QUOTA_CODES:
        return QuotaError(message, scope=Scope.REGION, code=code)
    if code == "OperationNotAllowed":
        if "quota" in lowered:
            return QuotaError(message, scope=Scope.REGION, code=code)
        if "price" in lowered:  # a spot max price below the current spot price: this spot offering, for now
            return CapacityError(message, scope=Scope.ZONE, code=code)
        return ConfigError(message, code=code)
    if code in TRANSIENT_CODES:
        return TransientError(message, code=code)
    if code in AUTH_CODES:
        return AuthError(message, code=code)
    if code in NOT_FOUND_CODES:
        return NotFound(message, code=code)
    if status == 429 or (status is not None and status >= 500):
        return TransientError(message, code=code or str(status))
    if status in (401, 403):
        return AuthError(message, code=code or str(status))
    if status == 404 and not code:
        return NotFound(message, code="404")
    if status is None or status < 400:
        # An operation that ended Failed with a code we do not know: asking again (next tick, same VM name) is
        # safe, and blocking the whole cloud for a code we cannot read would be worse.
        return TransientError(message, code=code or "OperationFailed")
    return ConfigError(message, code=code or str(status))


def _errors(error: Mapping[str, Any] | None) -> Iterator[tuple[str, str]]:
    """(code, message) of an ARM error and of every error nested in its details, depth first."""
    if not isinstance(error, Mapping):
        return
    yield str(error.get("code") or ""), str(error.get("message") or "")
    for detail in error.get("details") or []:
        yield from _errors(detail)


def pick(error: Mapping[str, Any] | None) -> tuple[str, str]:
    """The most telling (code, message) of an ARM error tree: a capacity or quota code anywhere wins (a stockout
    is often wrapped in a generic outer error), then the outer code unless it is generic, then the first known."""
    found = [(c, m) for c, m in _errors(error)]
    if not found:
        return "", ""
    for code, message in found:
        if code in CAPACITY_CODES or code in QUOTA_CODES:
            return code, message
    for code, message in found:
        if code == "OperationNotAllowed" and ("quota" in message.lower() or "price" in message.lower()):
            return code, message
    if found[0][0] not in GENERIC_CODES:
        return found[0]
    for code, message in found[1:]:
        if code not in GENERIC_CODES:
            return code, message
    return found[0]


def error_tree(exc: BaseException) -> dict[str, Any] | None:
    """The ARM error of an azure-core exception as plain JSON: from `exc.error` (ODataV4Format) or the body."""
    odata = getattr(exc, "error", None)
    if odata is not None and getattr(odata, "code", None):
        return _odata_json(odata)
    response = getattr(exc, "response", None)
    if response is None:
        return None
    try:
        body = response.json()
    except Exception:  # not JSON (an HTML error page, an empty body)
        return None
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            return inner
        if "code" in body:
            return body
    return None


def _odata_json(odata: Any) -> dict[str, Any]:
    return {
        "code": getattr(odata, "code", "") or "",
        "message": getattr(odata, "message", "") or "",
        "details": [_odata_json(d) for d in getattr(odata, "details", None) or []],
    }


def from_exception(exc: BaseException) -> ProviderError:
    """Any azure-core / azure-identity exception as a typed error."""
    name = type(exc).__name__
    credential_failed = getattr(exc, "response", None) is None  # no token to send: nothing reached Azure
    if name in ("ClientAuthenticationError", "CredentialUnavailableError", "AuthenticationRequiredError") and (
        credential_failed
    ):
        return AuthError(str(exc) or name, code=name)
    status = getattr(exc, "status_code", None)
    tree = error_tree(exc)
    if tree is not None:
        code, message = pick(tree)
        return translate(code, message or str(exc), status if isinstance(status, int) else None)
    if isinstance(status, int):
        return translate("", str(exc), status)
    if name in ("ServiceRequestError", "ServiceResponseError", "ServiceRequestTimeoutError",
                "ServiceResponseTimeoutError", "IncompleteReadError", "TooManyRedirectsError"):  # fmt: skip
        return TransientError(str(exc) or name, code=name)
    if name == "ClientAuthenticationError":
        return AuthError(str(exc) or name, code=name)
    return TransientError(str(exc) or name, code=name)
