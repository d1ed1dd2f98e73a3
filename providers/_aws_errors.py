"""EC2 error codes -> the core's error vocabulary. Nothing from botocore escapes providers/aws.py untranslated.

EC2 has no modelled exception classes: the code is in `ClientError.response["Error"]["Code"]`. A code can arrive
with HTTP 500 (EC2 has been seen to answer InsufficientInstanceCapacity that way), so the code decides, not the
status; only an unknown code falls back to the status (5xx transient, 4xx configuration).
"""

from __future__ import annotations

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

# A stockout of this type in this zone (and market): another zone or type may have room.
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacityOnHost",
        "InsufficientReservedInstanceCapacity",
        "Unsupported",  # the type is not offered in this zone
        "SpotMaxPriceTooLow",
        "InsufficientFreeAddressesInSubnet",
    }
)
# Account limits of the region (Spot and On-Demand vCPU quotas are separate: the offering's market says which).
QUOTA_CODES = frozenset(
    {
        "MaxSpotInstanceCountExceeded",
        "VcpuLimitExceeded",
        "InstanceLimitExceeded",
        "MaxSpotFleetRequestCountExceeded",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestExpired",
        "IdempotentInstanceTerminated",
    }
)
AUTH_CODES = frozenset(
    {
        "UnauthorizedOperation",
        "AuthFailure",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "OptInRequired",
        "ExpiredToken",
        "AccessDenied",
        "Blocked",
    }
)
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound"})
CONFIG_PREFIXES = (
    "InvalidAMIID.",
    "InvalidSubnetID.",
    "InvalidGroup.",
    "InvalidKeyPair.",
    "InvalidParameter",  # InvalidParameterValue, InvalidParameterCombination
    "InvalidBlockDeviceMapping",
    "InvalidInstanceType",
    "InvalidUserData.",
    "IdempotentParameterMismatch",
    "MissingParameter",
    "InvalidIamInstanceProfile",
    "InvalidSecurityGroupID.",
)


def translate(code: str, message: str, status: int | None) -> ProviderError:
    """One EC2 error as the core's typed error."""
    if code in CAPACITY_CODES:
        return CapacityError(message, scope=Scope.ZONE, code=code)
    if code in QUOTA_CODES:
        return QuotaError(message, scope=Scope.REGION, code=code)
    if code in TRANSIENT_CODES:
        return TransientError(message, code=code)
    if code in AUTH_CODES:
        return AuthError(message, code=code)
    if code in NOT_FOUND_CODES:
        return NotFound(message, code=code)
    if code.startswith(CONFIG_PREFIXES):
        return ConfigError(message, code=code)
    if status is not None and status >= 500:
        return TransientError(message, code=code or str(status))
    if status in (401, 403):
        return AuthError(message, code=code or str(status))
    return ConfigError(message, code=code or str(status or "unknown"))


def from_exception(exc: BaseException) -> ProviderError:
    """Any botocore exception (ClientError, connection and credential errors) as a typed error."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return translate(str(error.get("Code", "")), str(error.get("Message", "")) or str(exc), status)
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError", "UnauthorizedSSOTokenError"):
        return AuthError(str(exc), code=name)
    if name in ("ProfileNotFound", "NoRegionError", "ParamValidationError", "InvalidEndpointConfigurationError"):
        return ConfigError(str(exc), code=name)
    # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError, ...
    return TransientError(str(exc), code=name)
