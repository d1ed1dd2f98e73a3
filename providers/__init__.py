"""Cloud providers: one module per cloud, the only place a cloud SDK is imported.

Each module `providers.<cloud>` exposes `build(cfg, ctx: BuildContext) -> Provider`. Modules are imported only
for the clouds the policy enables, so a daemon that uses one cloud never needs the other SDKs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from autoscaler import config
from autoscaler.errors import ConfigError
from autoscaler.interfaces import Clock, Provider


@dataclass(frozen=True)
class BuildContext:
    """What a provider is built from besides its cloud's settings."""

    clock: Clock
    daemon_id: str
    state_dir: Path | None  # where a provider may keep local state (None: memory only)
    instance_types: frozenset[str]  # the types the policy's candidates name on this cloud


def candidate_types(policy: config.Policy, cloud: str) -> frozenset[str]:
    return frozenset(c.instance_type for p in policy.pools for c in p.candidates if c.cloud == cloud)


def build_providers(policy: config.Policy, clock: Clock, *, state_dir: Path | None = None) -> dict[str, Provider]:
    """A provider per enabled cloud, keyed by cloud name. `state_dir` is where a provider may keep local state
    (the simulated cloud's instance table, refreshed prices); None keeps everything in memory."""
    out: dict[str, Provider] = {}
    for cloud, cfg in policy.clouds.enabled().items():
        module_name = f"{__name__}.{cloud}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                raise ConfigError(f"the {cloud} provider is not part of this build yet") from exc
            # The provider exists but its SDK is not installed.
            raise ConfigError(
                f"the {cloud} provider needs the {exc.name} package: pip install 'gpu-autoscaler[{cloud}]'"
            ) from exc
        ctx = BuildContext(clock, policy.daemon.id, state_dir, candidate_types(policy, cloud))
        provider: Provider = module.build(cfg, ctx)
        out[cloud] = provider
    return out
