"""The seam between the runner and what is being compared: one SimPolicy per policy under test.

The runner owns the world (clock, cloud, capacity traces, queue model) and the timeline; a SimPolicy decides
and acts once per tick on that world and says how many capacity units it wanted and how many were ready to
serve. Implemented: "daemon" (autoscaler.sim.daemon_policy: the daemon's own reconcile under the scenario's
policy file), and the baselines "static" (B0: peak provisioning, on-demand) and "keda" (B1: KEDA's reactive
defaults, on-demand) in autoscaler.sim.baselines, and B2 "spothedge" (SkyServe's SpotHedge) in
autoscaler.sim.spothedge, all registered in `autoscaler.sim.runner.POLICIES`; the offline optimum (B3) is solved
separately (autoscaler/sim/optimum.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TickOutcome:
    desired: float  # capacity units the policy asked for this tick
    ready_units: float  # capacity units ready to serve during this tick


class SimPolicy(Protocol):
    name: str

    def tick(self, index: int) -> TickOutcome:
        """Observe the world at the current time, decide, and launch/terminate through the world's provider."""
        ...

    def summary_counts(self) -> dict[str, int]:
        """Counters only the policy knows (launches, capacity errors), for summary.json."""
        ...
