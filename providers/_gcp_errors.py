"""Compute Engine errors -> the core's error vocabulary. Nothing from google-api-core escapes providers/gcp.py
untranslated.

Errors reach us two ways. A synchronous HTTP error: google-api-core raises a GoogleAPICallError subclass whose
`code` is the HTTP status and whose reason is in `errors[0]["reason"]` (camelCase: quotaExceeded, alreadyExists;
`e.reason` is None). Or an operation that ends DONE with `error.errors[].code` (UPPER_SNAKE: a stockout,
ZONE_RESOURCE_POOL_EXHAUSTED, is never an HTTP error on insert) and `httpErrorStatusCode`, 503 for a stockout:
the code decides, never the status alone, so that not every 503 is taken for a stockout. Only an unknown code
falls back to the status (429 and 5xx transient, 401/403 auth, other 4xx configuration).

A "not found" means different things by call: on delete or get the instance is gone (NotFound); on insert a
resource the request names (image, machine type, network, zone) does not exist (ConfigError).
"""

from __future__ import annotations

from collections.abc import Iterable

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

# A stockout of the offering in its zone: another zone, type or cloud may have room.
CAPACITY_CODES = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "insufficientCapacity",
        "INSUFFICIENT_CAPACITY",
        "resourcePoolExhausted",
        "RESOURCE_POOL_EXHAUSTED",
    }
)
# An account limit; regional unless the quota is an all-regions one (GPUS_ALL_REGIONS, CPUS_ALL_REGIONS).
QUOTA_CODES = frozenset({"QUOTA_EXCEEDED", "quotaExceeded", "QUOTA_LIMIT_EXCEEDED"})
# Throttling and server trouble: retry on the next tick. (403 rateLimitExceeded is throttling, not auth.)
TRANSIENT_CODES = frozenset(
    {
        "rateLimitExceeded",
        "userRateLimitExceeded",
        "RATE_LIMIT_EXCEEDED",
        "RESOURCE_OPERATION_RATE_EXCEEDED",
        "backendError",
        "internalError",
        "INTERNAL_ERROR",
        "serviceUnavailable",
        "SERVICE_UNAVAILABLE",
        "RESOURCE_NOT_READY",
        "resourceNotReady",
        "TIMEOUT",
        "OPERATION_TIMEOUT",
    }
)
AUTH_CODES = frozenset(
    {
        "forbidden",
        "insufficientPermissions",
        "accessNotConfigured",
        "authError",
        "required",
        "unauthorized",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "SERVICE_DISABLED",
    }
)
NOT_FOUND_CODES = frozenset({"notFound", "RESOURCE_NOT_FOUND"})
CONFIG_CODES = frozenset(
    {
        "invalid",
        "badRequest",
        "invalidParameter",
        "INVALID_FIELD_VALUE",
        "INVALID_USAGE",
        "UNSUPPORTED_OPERATION",
        "conditionNotMet",
        "alreadyExists",
        "RESOURCE_ALREADY_EXISTS",
        "resourceInUseByAnotherResource",
        "BAD_REQUEST",
    }
)
KNOWN_CODES = CAPACITY_CODES | QUOTA_CODES | TRANSIENT_CODES | AUTH_CODES | NOT_FOUND_CODES | CONFIG_CODES
GLOBAL_QUOTA_MARKERS = ("_ALL_REGIONS", "globally")


def translate(code: str, message: str, status: int | None, *, during: str = "call") -> ProviderError:
    """One Compute Engine error (a reason or operation error code, its message, the HTTP status) as the core's
    typed error. `during`: "insert" reads notFound as a bad request, anything else as the thing being gone."""
    if code in CAPACITY_CODES:
        return CapacityError(message, scope=Scope.ZONE, code=code)
    if code in QUOTA_CODES:
        wide = any(marker in message for marker in GLOBAL_QUOTA_MARKERS)
        return QuotaError(message, scope=Scope.CLOUD if wide else Scope.REGION, code=code)
    if code in TRANSIENT_CODES:
        return TransientError(message, code=code)
    if code in AUTH_CODES:
        return AuthError(message, code=code)
    if code in NOT_FOUND_CODES or (not code and status == 404):
        error = ConfigError if during == "insert" else NotFound
        return error(message, code=code or "404")
    if code in CONFIG_CODES:
        return ConfigError(message, code=code)
    fallback = code or str(status or "unknown")
    if status is not None and (status == 429 or status >= 500):
        return TransientError(message, code=fallback)
    if status in (401, 403):
        return AuthError(message, code=fallback)
    return ConfigError(message, code=fallback)


def from_operation(errors: Iterable[tuple[str, str]], http_status: int | None) -> ProviderError:
    """An operation that ended DONE with `error.errors` [(code, message), ...] and `httpErrorStatusCode`."""
    found = list(errors)
    if not found:
        return TransientError("the operation failed without an error code", code=str(http_status or "unknown"))
    # A known code anywhere in the list decides (a stockout may come second, after a generic wrapper code).
    for code, message in found:
        if code in KNOWN_CODES:
            return translate(code, message, http_status, during="insert")
    code, _ = found[0]
    return translate(code, "; ".join(m for _, m in found), http_status, during="insert")


def from_exception(exc: BaseException, *, during: str = "call") -> ProviderError:
    """Any exception a compute_v1 call raises (GoogleAPICallError, RetryError, google-auth and requests errors)
    as a typed error."""
    if isinstance(exc, ProviderError):
        return exc
    from google.api_core import exceptions as api

    if isinstance(exc, api.RetryError):
        cause = exc.cause
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        return TransientError(f"gave up retrying: {detail}", code="RetryError")
    if isinstance(exc, api.GoogleAPICallError):
        first = exc.errors[0] if exc.errors else None
        reason = str(first.get("reason", "")) if isinstance(first, dict) else ""
        status = exc.code if isinstance(exc.code, int) else None
        if not reason and status is None:
            reason = type(exc).__name__
        return translate(reason, exc.message, status, during=during)
    name = type(exc).__name__
    module = type(exc).__module__
    if module.startswith("google.auth") and name in (
        "DefaultCredentialsError",
        "RefreshError",
        "UserAccessTokenError",
    ):
        return AuthError(str(exc), code=name)
    if name in ("MutualTLSChannelError", "InvalidOperation") or isinstance(exc, ValueError | TypeError):
        return ConfigError(str(exc), code=name)
    # requests' ConnectionError / Timeout, google.auth TransportError, OSError: the next tick retries.
    return TransientError(str(exc) or name, code=name)
