"""EC2 error codes and botocore failures -> the core's typed errors (providers/_aws_errors.py)."""

from __future__ import annotations

import botocore.exceptions
import pytest

from autoscaler.errors import AuthError, CapacityError, ConfigError, NotFound, QuotaError, TransientError
from autoscaler.model import Scope
from providers._aws_errors import from_exception, translate

CASES = [
    ("InsufficientInstanceCapacity", 500, CapacityError),  # EC2 has been seen to answer a stockout with a 500
    ("InsufficientInstanceCapacity", 400, CapacityError),
    ("InsufficientHostCapacity", 400, CapacityError),
    ("InsufficientCapacityOnHost", 400, CapacityError),
    ("Unsupported", 400, CapacityError),
    ("SpotMaxPriceTooLow", 400, CapacityError),
    ("MaxSpotInstanceCountExceeded", 400, QuotaError),
    ("VcpuLimitExceeded", 400, QuotaError),
    ("InstanceLimitExceeded", 400, QuotaError),
    ("RequestLimitExceeded", 503, TransientError),
    ("Throttling", 400, TransientError),
    ("InternalError", 500, TransientError),
    ("ServiceUnavailable", 503, TransientError),
    ("UnauthorizedOperation", 403, AuthError),
    ("AuthFailure", 401, AuthError),
    ("InvalidAMIID.NotFound", 400, ConfigError),
    ("InvalidAMIID.Malformed", 400, ConfigError),
    ("InvalidParameterValue", 400, ConfigError),
    ("InvalidSubnetID.NotFound", 400, ConfigError),
    ("IdempotentParameterMismatch", 400, ConfigError),
    ("InvalidInstanceID.NotFound", 400, NotFound),
    ("SomethingNew", 502, TransientError),  # unknown code: the status decides
    ("SomethingNew", 400, ConfigError),
]


@pytest.mark.parametrize(("code", "status", "kind"), CASES, ids=[f"{c}-{s}" for c, s, _ in CASES])
def test_codes_translate_to_the_core_vocabulary(code: str, status: int, kind: type[Exception]) -> None:
    error = translate(code, "message", status)
    assert type(error) is kind
    assert error.code == code


def test_scopes() -> None:
    capacity = translate("InsufficientInstanceCapacity", "m", 500)
    quota = translate("VcpuLimitExceeded", "m", 400)
    assert isinstance(capacity, CapacityError) and capacity.scope == Scope.ZONE
    assert isinstance(quota, QuotaError) and quota.scope == Scope.REGION


def test_client_error_is_read_by_code_not_class() -> None:
    exc = botocore.exceptions.ClientError(
        {"Error": {"Code": "InsufficientInstanceCapacity", "Message": "We currently do not have sufficient p4d"},
         "ResponseMetadata": {"HTTPStatusCode": 500}},
        "RunInstances",
    )  # fmt: skip
    error = from_exception(exc)
    assert isinstance(error, CapacityError)
    assert "sufficient p4d" in str(error)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (botocore.exceptions.NoCredentialsError(), AuthError),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientError),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), TransientError),
        (botocore.exceptions.ProfileNotFound(profile="nope"), ConfigError),
        (botocore.exceptions.ParamValidationError(report="bad"), ConfigError),
    ],
)
def test_botocore_failures_are_typed(exc: Exception, kind: type[Exception]) -> None:
    assert type(from_exception(exc)) is kind
