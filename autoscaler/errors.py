"""The error vocabulary every provider translates its SDK's errors into. The core branches on nothing else.

ProviderError
+-- CapacityError(scope)   stockout: the offering has no capacity now (zone, region or whole cloud)
+-- QuotaError(scope)      an account limit: waiting will not help soon, another region or cloud may
+-- TransientError         throttling, 5xx, timeouts: retry on the next tick, nothing learnt
+-- AuthError              credentials missing or refused: every call will fail until an operator acts
+-- ConfigError            the request itself is wrong (bad image, unknown type): fix the policy
+-- NotFound               the thing is already gone (terminate treats this as success)
"""

from __future__ import annotations

from autoscaler.model import Scope


class ProviderError(Exception):
    """Base of every error a provider may raise. `code` is the cloud's own error code, for the log."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


class CapacityError(ProviderError):
    def __init__(self, message: str, *, scope: Scope = Scope.ZONE, code: str = "") -> None:
        super().__init__(message, code=code)
        self.scope = scope


class QuotaError(ProviderError):
    def __init__(self, message: str, *, scope: Scope = Scope.REGION, code: str = "") -> None:
        super().__init__(message, code=code)
        self.scope = scope


class TransientError(ProviderError):
    pass


class AuthError(ProviderError):
    pass


class ConfigError(ProviderError):
    pass


class NotFound(ProviderError):
    pass
