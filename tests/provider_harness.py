"""What the provider contract suite needs from each cloud besides the Provider protocol: a Harness.

A cloud joins the suite with a module `tests/harness_<cloud>.py` exposing `make(clock, request) -> Harness`
(see HARNESSES in tests/test_provider_contract.py). The harness knows how to make its cloud run out of capacity,
fail a launch, preempt an instance and "crash" after the cloud accepted a launch; one that cannot set a
situation up leaves it raising Unsupported, and the tests that need it skip for that cloud only.
"""

from __future__ import annotations

from datetime import UTC, datetime

from autoscaler.clock import FakeClock
from autoscaler.interfaces import Provider
from autoscaler.model import LaunchTemplate, Market, OfferingKey, Scope

DAEMON = "contract-daemon"
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Unsupported(Exception):
    """This provider's harness cannot set up the situation a test needs."""


class Crash(Exception):
    """Stands for the daemon dying after the cloud accepted a launch, before the answer reached it."""


class Harness:
    """What the contract tests need from a provider besides the Provider protocol itself."""

    name: str
    provider: Provider
    clock: FakeClock
    daemon_id: str = DAEMON
    boot_seconds: float | None = None  # None: the cloud's boot time does not follow the FakeClock
    capacity_scope: Scope = Scope.ZONE
    quota_scope: Scope = Scope.REGION

    def offering(self, market: Market = Market.ON_DEMAND) -> OfferingKey:
        raise NotImplementedError

    def template(self) -> LaunchTemplate:
        """A launch template this cloud accepts (a real cloud needs an image, say)."""
        return LaunchTemplate(tags={"team": "ml"})

    def exhaust(self, key: OfferingKey) -> None:
        """From now on the cloud has no capacity for `key`."""
        raise Unsupported

    def fault(self, kind: str, key: OfferingKey) -> None:
        """The next launch of `key` fails with `kind` (capacity, quota, transient, auth, config)."""
        raise Unsupported

    def preempt(self, cloud_id: str) -> None:
        raise Unsupported

    def crash_after_next_accept(self) -> None:
        """The next launch is accepted by the cloud, then the call raises Crash instead of returning."""
        raise Unsupported

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # What the launch call raises when the harness "crashes" it after the cloud accepted.
    crash_error: type[BaseException] = Exception
