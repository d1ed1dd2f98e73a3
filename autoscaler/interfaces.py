"""Every seam of the daemon, as a narrow Protocol. Implementations live in providers/, autoscaler/sources/,
policies/ and autoscaler/store/; tests and the simulator swap them freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from autoscaler.model import CloudInstance, LaunchRequest, Offering, Sample


class Clock(Protocol):
    """Time is injected: the daemon reads the time only through this."""

    def now(self) -> datetime: ...


@runtime_checkable
class Provider(Protocol):
    """One cloud account. Contract (checked by tests/test_provider_contract.py for every provider):

    - `offerings()` lists instance type x zone x market with prices; may be cached by the provider.
    - `list_instances()` returns only instances carrying our daemon tag, in one call per region, never one per
      instance. It is the truth of existence: an instance absent here does not exist.
    - `launch(req)` is idempotent on `req.token`: calling it again (a retry, a restart) returns the same
      instance, never a second one. It tags the instance with `req.tags`. Raises only `errors.ProviderError`s.
    - `terminate(ids)`: an instance already gone is success. Raises only `errors.ProviderError`s.
    """

    name: str

    def offerings(self) -> Sequence[Offering]: ...

    def list_instances(self) -> Sequence[CloudInstance]: ...

    def launch(self, req: LaunchRequest) -> CloudInstance: ...

    def terminate(self, cloud_ids: Sequence[str]) -> None: ...


class MetricSource(Protocol):
    """One signal of one pool. `read` never raises: a failure is a Sample with value None and an error."""

    name: str
    kind: str  # "queue" or "latency"

    def read(self, now: datetime) -> Sample: ...
