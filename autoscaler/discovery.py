"""Service discovery: each pool's ready instances, for load balancers and Prometheus.

An endpoint is a READY instance whose provider gave it an address. A DRAINING one is not an endpoint: the tick
that decides to drain an instance rewrites the files without it, so the load balancer stops sending it work for
the whole `drain_seconds` before it is terminated. The admin API lists the endpoints (`/v1/endpoints`); a pool's
`discovery:` settings may also have the daemon write them after each tick, atomically (a temporary file in the
same directory, then os.replace), as

- a Prometheus `file_sd` JSON: one target group per instance (its GPU exporter's address and port, with pool,
  cloud, region, zone, market, instance type and capacity units as labels), and
- an nginx `upstream` block, one `server address:port weight=N` line per instance (N: its capacity units),

and then run the pool's reload command (no shell, killed after `reload_timeout_seconds`). A file is rewritten and
the command run only when the content changed, or when the last reload failed (retried after every tick until it
succeeds). Nothing here stops a tick: write and reload failures are logged.

`endpoints`, `learned_addresses` and the renderers are pure; `DiscoveryWriter` does the I/O.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoscaler import config
from autoscaler.lifecycle import InstanceState
from autoscaler.model import CloudInstance, InstanceRecord, OfferingKey

log = logging.getLogger(__name__)

SERVING_STATES = frozenset({InstanceState.READY})
# nginx refuses an upstream block without a server: when no instance is ready, a placeholder marked `down`
# keeps the configuration valid (requests get a 502 at once instead of nginx failing to reload).
NO_SERVER = "127.0.0.1:9"


@dataclass(frozen=True)
class Endpoint:
    pool: str
    token: str
    cloud_id: str | None
    address: str
    port: int
    metrics_port: int
    offering: OfferingKey
    capacity_units: float

    @property
    def host_port(self) -> str:
        return f"{_host(self.address)}:{self.port}"

    @property
    def metrics_target(self) -> str:
        return f"{_host(self.address)}:{self.metrics_port}"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def endpoints(policy: config.Policy, records: Iterable[InstanceRecord]) -> dict[str, list[Endpoint]]:
    """Every pool of the policy (in policy order) -> its endpoints, sorted by address. A ready record without an
    address yet (its provider has not listed one) is left out."""
    out: dict[str, list[Endpoint]] = {pool.name: [] for pool in policy.pools}
    for rec in records:
        pool = policy.pool(rec.pool)
        if pool is None or rec.state not in SERVING_STATES or not rec.address:
            continue
        out[pool.name].append(
            Endpoint(
                pool=pool.name,
                token=rec.token,
                cloud_id=rec.cloud_id,
                address=rec.address,
                port=pool.discovery.port,
                metrics_port=pool.discovery.metrics_port,
                offering=rec.offering,
                capacity_units=rec.capacity_units,
            )
        )
    for eps in out.values():
        eps.sort(key=lambda e: (e.address, e.token))
    return out


def learned_addresses(
    records: Iterable[InstanceRecord], listed: Mapping[str, Sequence[CloudInstance]]
) -> dict[str, str]:
    """token -> address, for live records whose listed instance has an address the record does not hold yet (a
    provider may learn an address after the launch answered). An address a listing no longer shows is kept."""
    by_id = {(cloud, i.cloud_id): i for cloud, instances in listed.items() for i in instances}
    out: dict[str, str] = {}
    for rec in records:
        if not rec.live or rec.cloud_id is None:
            continue
        inst = by_id.get((rec.offering.cloud, rec.cloud_id))
        if inst is not None and inst.address and inst.address != rec.address:
            out[rec.token] = inst.address
    return out


def upstream_name(pool: config.Pool) -> str:
    return pool.discovery.nginx_upstream_name or "gpu_autoscaler_" + pool.name.replace("-", "_")


def render_nginx_upstream(pool: config.Pool, eps: Sequence[Endpoint]) -> str:
    """An nginx `upstream` block (for the http context). Stable for the same endpoints: no timestamp, so an
    unchanged fleet never triggers a reload."""
    options = f" {pool.discovery.nginx_server_options}" if pool.discovery.nginx_server_options else ""
    lines = [
        f"# Written by gpu-autoscaler for pool {pool.name}: its ready instances. Do not edit: it is rewritten.",
        f"upstream {upstream_name(pool)} {{",
    ]
    for ep in eps:
        weight = max(1, round(ep.capacity_units))
        lines.append(f"    server {ep.host_port} weight={weight}{options};  # {ep.offering} {ep.cloud_id or ''}")
    if not eps:
        lines.append(f"    server {NO_SERVER} down;  # no ready instance")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_file_sd(pool: config.Pool, eps: Sequence[Endpoint]) -> str:
    """Prometheus file_sd JSON: one target group per instance, so each carries its own labels."""
    groups = [
        {
            "targets": [ep.metrics_target],
            "labels": {
                **pool.discovery.file_sd_labels,
                "pool": pool.name,
                "cloud": ep.offering.cloud,
                "region": ep.offering.region,
                "zone": ep.offering.zone,
                "market": str(ep.offering.market),
                "instance_type": ep.offering.instance_type,
                "capacity_units": f"{ep.capacity_units:g}",
                "instance": ep.cloud_id or ep.token,
            },
        }
        for ep in eps
    ]
    return json.dumps(groups, indent=2, sort_keys=True) + "\n"


def write_atomically(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it holds it already; True when the file changed. A reader (nginx, Prometheus)
    sees the old file or the new one, never half of one: the new content goes to a temporary file in the same
    directory, is flushed to disk, and replaces the old one in one rename."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: the reader is another user (nginx, prometheus)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


Runner = Callable[[Sequence[str], float], tuple[bool, str]]


def run_command(argv: Sequence[str], timeout: float) -> tuple[bool, str]:
    """(succeeded, what went wrong). No shell; killed after `timeout` seconds."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:g}s"
    except OSError as exc:
        return False, str(exc)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        return False, f"exit status {done.returncode}" + (f": {output[-1]}" if output else "")
    return True, ""


@dataclass
class DiscoveryWriter:
    """Writes each pool's discovery files after a tick and runs reload commands. One per daemon, called from the
    tick only (the tick lock serialises it)."""

    runner: Runner = run_command
    # reload command -> pools whose files changed since it last succeeded
    _pending: dict[tuple[str, ...], set[str]] = field(default_factory=dict)
    reloads: int = 0  # commands that succeeded (for tests and the log)
    last_errors: dict[str, str] = field(default_factory=dict)  # pool -> what failed after the last tick

    def publish(self, policy: config.Policy, records: Iterable[InstanceRecord]) -> None:
        by_pool = endpoints(policy, records)
        failed: dict[str, str] = {}
        for pool in policy.pools:
            d = pool.discovery
            files = [(d.file_sd_path, render_file_sd), (d.nginx_upstream_path, render_nginx_upstream)]
            for path, render in files:
                if path is None:
                    continue
                try:
                    changed = write_atomically(path, render(pool, by_pool[pool.name]))
                except OSError as exc:
                    failed[pool.name] = f"writing {path} failed: {exc}"
                    continue
                if changed:
                    log.info(
                        "discovery: wrote %s (%d endpoint(s) of pool %s)", path, len(by_pool[pool.name]), pool.name
                    )
                    if d.reload_command:
                        self._pending.setdefault(tuple(d.reload_command), set()).add(pool.name)
        failed.update(self._reload(policy))
        for name, message in failed.items():
            if self.last_errors.get(name) != message:  # once per distinct failure, not once per tick
                log.error("discovery for pool %s: %s", name, message)
        for name in set(self.last_errors) - set(failed):
            log.info("discovery for pool %s works again", name)
        self.last_errors = failed

    def _reload(self, policy: config.Policy) -> dict[str, str]:
        """Run the pending reload commands; pool -> why its command failed."""
        timeouts = {tuple(p.discovery.reload_command): p.discovery.reload_timeout_seconds for p in policy.pools}
        failed: dict[str, str] = {}
        for command, pools in list(self._pending.items()):
            if command not in timeouts:  # a reload dropped the command: nothing to run it for any more
                del self._pending[command]
                continue
            ok, why = self.runner(command, timeouts[command])
            if ok:
                self.reloads += 1
                del self._pending[command]
                log.info("discovery: ran %s for pool(s) %s", " ".join(command), ", ".join(sorted(pools)))
            else:
                for name in pools:
                    failed[name] = (
                        f"reload command {' '.join(command)!r} failed: {why} (retried after the next tick)"
                    )
        return failed
