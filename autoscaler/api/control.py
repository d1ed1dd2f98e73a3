"""What the admin API needs from the daemon, as one narrow Protocol.

The API depends on this and nothing else of the daemon, so tests drive it with a small real implementation
(a store on SQLite, a fake clock, a policy file) and the daemon is free to change how it runs its loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from autoscaler.interfaces import Clock
    from autoscaler.metrics import Metrics
    from autoscaler.model import Snapshot
    from autoscaler.policyfile import LoadedPolicy
    from autoscaler.store import Store


class DaemonControl(Protocol):
    # Read-only properties: a plain attribute and a property both satisfy them.
    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def last_snapshot(self) -> Snapshot | None:
        """What the last completed tick observed (read for each pool's metric sources and hold reason, in
        Snapshot.demand); None before the first tick. A Snapshot is immutable: reading it needs no lock."""
        ...

    @property
    def dry_run(self) -> bool:
        """Shadow mode: the daemon plans and records decisions but calls no cloud to launch or terminate."""
        ...

    def policy(self) -> LoadedPolicy:
        """The policy in force."""
        ...

    def reload_policy(self) -> tuple[bool, str]:
        """Re-read the policy file: (accepted, message). A bad file keeps the old policy in force and the
        message is its file:line:column error."""
        ...

    def health(self) -> tuple[bool, str]:
        """Liveness: the loop is not stuck."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """Readiness: a tick completed recently."""
        ...
