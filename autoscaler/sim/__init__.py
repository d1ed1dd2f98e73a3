"""The replay simulator: the daemon's own reconcile on a fake clock and the simulated cloud, fed by traces."""

from autoscaler.sim.output import write_outputs
from autoscaler.sim.runner import POLICIES, PolicyRun, run_scenario
from autoscaler.sim.scenario import LoadedScenario, Scenario, ScenarioError, load_scenario

__all__ = [
    "POLICIES",
    "LoadedScenario",
    "PolicyRun",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "run_scenario",
    "write_outputs",
]
