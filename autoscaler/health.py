"""HTTP health checks of running instances, in parallel, with a count of consecutive failures.

An instance is reported healthy after one passing check and unhealthy only after `unhealthy_after` consecutive
failures, so one dropped probe does not take serving capacity out of the count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from autoscaler.config import Policy
from autoscaler.lifecycle import InstanceState
from autoscaler.model import CloudInstance, CloudState, InstanceRecord

_CHECKED = frozenset(
    {InstanceState.RUNNING, InstanceState.READY, InstanceState.UNHEALTHY, InstanceState.PROVISIONING}
)


class HealthChecker:
    def __init__(self, max_workers: int = 16) -> None:
        self.max_workers = max_workers
        self._failures: dict[str, int] = {}

    def check(
        self, policy: Policy, records: Sequence[InstanceRecord], listed: Mapping[str, Sequence[CloudInstance]]
    ) -> dict[str, bool]:
        """cloud_id -> healthy, for instances of pools with an HTTP check that have an address.

        Instances without an address (or of pools without a check) are absent: observe() treats a pool with no
        check as healthy when running, and an unknown result as "not yet"."""
        by_id = {i.cloud_id: i for cloud in listed.values() for i in cloud if i.state == CloudState.RUNNING}
        probes: list[tuple[str, str, float, int]] = []
        for rec in records:
            pool = policy.pool(rec.pool)
            inst = by_id.get(rec.cloud_id or "")
            if pool is None or pool.health_check.type != "http" or inst is None or not inst.address:
                continue
            if rec.state not in _CHECKED:
                continue
            hc = pool.health_check
            host = f"[{inst.address}]" if ":" in inst.address else inst.address
            probes.append(
                (inst.cloud_id, f"http://{host}:{hc.port}{hc.path}", hc.timeout_seconds, hc.unhealthy_after)
            )
        if not probes:
            return {}
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(probes))) as ex:
            passed = list(ex.map(lambda p: _probe(p[1], p[2]), probes))
        out: dict[str, bool] = {}
        for (cloud_id, _, _, threshold), ok in zip(probes, passed, strict=True):
            if ok:
                self._failures.pop(cloud_id, None)
                out[cloud_id] = True
            else:
                n = self._failures.get(cloud_id, 0) + 1
                self._failures[cloud_id] = n
                if n >= threshold:
                    out[cloud_id] = False
        probed = {p[0] for p in probes}
        self._failures = {k: v for k, v in self._failures.items() if k in probed}
        return out


def _probe(url: str, timeout: float) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code < 400
    except httpx.HTTPError:
        return False
