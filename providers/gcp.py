"""The GCP provider: Compute Engine through google-cloud-compute (REST transport), one project, many zones.

- offerings: where each candidate type is offered, from one `machineTypes.aggregatedList` (filtered by name; the
  GPUs of a2/a3/g2 types come from its `accelerators`) and, for N1 hosts with attached GPUs, one
  `acceleratorTypes.aggregatedList` (the zone must offer the GPU, `maximumCardsPerInstance` enough of them).
  Prices, spot included, come from the shipped catalog with host and GPUs added up (providers/gcp_catalog.py).
  Placement is cached for an hour.
- launch: `instances.insert` with requestId = the intent's token (a UUID; other tokens are mapped to a UUID5) and
  a name derived from it, so that a retried insert is the same operation and, should the server have forgotten
  the request id, collides with 409 alreadyExists: the existing instance is returned. The zone operation is
  awaited with our own ZoneOperationsClient (`wait`), never the SDK's poller (it would ignore the endpoint); an
  operation still running after `operation_timeout_seconds` is a TransientError (the next tick asks again).
- list: one `instances.aggregatedList` per tick, filtered by the daemon label.
- terminate: `instances.delete` per instance; an instance already gone is success.

Cloud ids are `<zone>/<instance name>`: delete needs the zone, and the id alone must do after a restart.
Instance names are `gpua-` + 20 hex characters of the request id. Every call passes an explicit `timeout` and
`retry` (reads retry 429/5xx for `read_retry_seconds`; inserts and deletes never within a tick). Every error
is translated by `_gcp_errors`. Preemption: a spot VM that Compute Engine stops is reported STOPPING with a
"preempted" reason (GCE's TERMINATED is a stopped VM that still exists, and its disk bills: the core deletes an
ended instance that no live record holds); a deleted one (the default spot_termination_action) disappears.

The launch template (`pools[].launch_templates.gcp`):
  image       boot disk image, required: projects/debian-cloud/global/images/family/debian-12, or a full URL
  user_data   the `startup-script` metadata item
  disk_gb     boot disk size (default: the image's)
  network     the VPC network (default global/networks/default)
  tags        extra labels: keys [a-z][a-z0-9_-], values [a-z0-9_-], at most 63 characters
  extra:
    subnetwork               regions/<region>/subnetworks/<name>, or a list of them: the one in the offering's
                             region is used (none there: a configuration error)
    service_account          the VM's service account email (default: none)
    scopes                   its OAuth scopes, a list or comma-separated (default: cloud-platform)
    disk_type                pd-balanced, pd-ssd, hyperdisk-balanced, ... (default: Compute Engine's)
    external_ip              true: an ephemeral external IP (default false: internal address only)
    network_tags             firewall tags, a list or comma-separated
    spot_termination_action  DELETE (default: Compute Engine deletes a preempted VM and its boot disk) or STOP
                             (it keeps the stopped VM, which the daemon then deletes on its next tick)
  `accelerator_type`/`accelerator_count` are refused: the GPUs are part of the instance type
  (`n1-standard-8+nvidia-tesla-t4`), so that the offering's price and GPU count include them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as day_start
from typing import Any, TypeVar

from google.api_core import exceptions as api
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry, if_exception_type
from google.cloud import compute_v1 as gce

from autoscaler import config
from autoscaler.errors import ConfigError, NotFound, TransientError
from autoscaler.interfaces import Clock
from autoscaler.model import (
    TAG_DAEMON,
    TAG_INTENT,
    CloudInstance,
    CloudState,
    LaunchRequest,
    Market,
    Offering,
    OfferingKey,
)
from providers import BuildContext
from providers._gcp_errors import from_exception, from_operation
from providers.gcp_catalog import (
    BUNDLED_GPU_FAMILIES,
    GcpCatalog,
    GcpType,
    parse_type,
    region_of,
    type_of_instance,
)

log = logging.getLogger(__name__)

CLOUD = "gcp"
PLACEMENT_TTL = timedelta(hours=1)
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
NAME_PREFIX = "gpua-"
_REQUEST_NAMESPACE = uuid.UUID("6a3f2c1e-9b4d-4e8a-8f7c-2d1b0e5a4c39")
EXTRA_KEYS = frozenset({"subnetwork", "service_account", "scopes", "disk_type", "external_ip", "network_tags",
                        "spot_termination_action"})  # fmt: skip
_STATES = {"PROVISIONING": CloudState.PENDING, "STAGING": CloudState.PENDING, "REPAIRING": CloudState.PENDING,
           "RUNNING": CloudState.RUNNING, "STOPPING": CloudState.STOPPING, "SUSPENDING": CloudState.STOPPING,
           "SUSPENDED": CloudState.STOPPING,
           # A GCE "TERMINATED" VM is stopped, not gone: its disk still bills. STOPPING tells the core it has
           # ended but still exists, so the core deletes it once no live record holds it.
           "TERMINATED": CloudState.STOPPING}  # fmt: skip
_RETRYABLE = (api.TooManyRequests, api.InternalServerError, api.BadGateway, api.ServiceUnavailable,
              api.GatewayTimeout)  # fmt: skip
_T = TypeVar("_T")


def request_id(token: str) -> str:
    """GCE's requestId must be a UUID: the token itself when it is one, else a UUID5 of it."""
    try:
        return str(uuid.UUID(token))
    except ValueError:
        return str(uuid.uuid5(_REQUEST_NAMESPACE, token))


def instance_name(token: str) -> str:
    return NAME_PREFIX + uuid.UUID(request_id(token)).hex[:20]


@dataclass(frozen=True)
class _Clients:
    project: str
    instances: gce.InstancesClient
    operations: gce.ZoneOperationsClient
    machine_types: gce.MachineTypesClient
    accelerator_types: gce.AcceleratorTypesClient


class GcpProvider:
    name = CLOUD

    def __init__(
        self, cfg: config.GcpCloud, clock: Clock, daemon_id: str, instance_types: frozenset[str],
        catalog: GcpCatalog, *, credentials: Any = None,
    ) -> None:  # fmt: skip
        if not cfg.regions:
            raise ConfigError("clouds.gcp.regions is empty: name at least one region")
        self.cfg = cfg
        self.clock = clock
        self.daemon_id = daemon_id
        self.catalog = catalog
        self._credentials = credentials
        self._types: dict[str, GcpType] = {}
        for name in sorted(instance_types):
            try:
                self._types[name] = parse_type(name)
            except ValueError as exc:
                log.warning("gcp candidate %s is left out: %s", name, exc)
        self._spelling = {t.name: name for name, t in self._types.items()}  # canonical -> the policy's spelling
        self._read_retry: Retry | None = None
        if cfg.read_retry_seconds > 0:
            self._read_retry = Retry(
                if_exception_type(*_RETRYABLE), initial=0.2, maximum=2.0, timeout=cfg.read_retry_seconds
            )
        self._lock = threading.Lock()
        self._clients: _Clients | None = None
        self._placement: tuple[datetime, list[tuple[str, str, int]]] | None = None
        self._deleting: set[str] = set()  # cloud ids we asked to delete: a spot VM stopping then is not preempted

    # ------------------------------------------------------------------ Provider

    def offerings(self) -> Sequence[Offering]:
        out: list[Offering] = []
        for zone, itype, gpus in self._placements(self.clock.now()):
            region = region_of(zone)
            for market in (Market.ON_DEMAND, Market.SPOT):
                price = self.catalog.price(self._types[itype], region, market)
                if price is None:
                    continue
                observed = datetime.combine(price.as_of, day_start.min, tzinfo=UTC)
                key = OfferingKey(CLOUD, region, zone, itype, market)
                out.append(Offering(key, price.usd_per_hour, gpus or price.gpus, observed, price.source))
        return out

    def list_instances(self) -> Sequence[CloudInstance]:
        c = self._api()
        request = gce.AggregatedListInstancesRequest(
            project=c.project, filter=f'labels.{TAG_DAEMON} = "{self.daemon_id}"', max_results=500
        )
        out: list[CloudInstance] = []
        for scope, scoped in self._read(lambda **kw: list(c.instances.aggregated_list(request=request, **kw))):
            zone = scope.removeprefix("zones/")
            if region_of(zone) not in self.cfg.regions:
                continue
            if scoped.warning.code == "UNREACHABLE":
                raise TransientError(f"{zone} is unreachable: {scoped.warning.message}", code="UNREACHABLE")
            for raw in scoped.instances:
                if raw.labels.get(TAG_DAEMON) == self.daemon_id:
                    out.append(self._instance(raw))
        self._deleting &= {i.cloud_id for i in out}
        return out

    def launch(self, req: LaunchRequest) -> CloudInstance:
        key = req.offering
        zones = self.cfg.regions.get(key.region)
        if zones is None:
            raise ConfigError(f"region {key.region} is not configured under clouds.gcp.regions")
        if region_of(key.zone) != key.region or (zones and key.zone not in zones):
            raise ConfigError(f"zone {key.zone} is not a configured zone of {key.region}")
        try:
            itype = parse_type(key.instance_type)
        except ValueError as exc:
            raise ConfigError(str(exc), code="invalid") from None
        body = self._body(req, itype)
        c = self._api()
        insert = gce.InsertInstanceRequest(
            project=c.project, zone=key.zone, instance_resource=body, request_id=request_id(req.token)
        )
        try:
            op = c.instances.insert_unary(request=insert, retry=None, timeout=self.cfg.timeout_seconds)
        except Exception as exc:
            error = from_exception(exc, during="insert")
            if error.code != "alreadyExists":
                raise error from None
            return self._existing(c, key, body.name, req.token)  # the request id was forgotten: same name
        self._wait(c, key.zone, op)
        return self._existing(c, key, body.name, req.token)

    def terminate(self, cloud_ids: Sequence[str]) -> None:
        first_error: Exception | None = None
        for cid in cloud_ids:
            zone, _, name = cid.partition("/")
            if not zone or not name:
                log.info("%r is not a GCE cloud id (zone/name): nothing of ours to delete", cid)
                continue
            c = self._api()
            self._deleting.add(cid)
            try:
                c.instances.delete_unary(
                    project=c.project, zone=zone, instance=name, retry=None, timeout=self.cfg.timeout_seconds
                )
            except Exception as exc:
                error = from_exception(exc, during="delete")
                if not isinstance(error, NotFound):
                    first_error = first_error or error
        if first_error is not None:
            raise first_error

    # ------------------------------------------------------------------ launch pieces

    def _wait(self, c: _Clients, zone: str, op: gce.Operation) -> None:
        """Until the zone operation is DONE; raises its error, typed, or TransientError when it takes too long."""
        deadline = time.monotonic() + self.cfg.operation_timeout_seconds
        while op.status != gce.Operation.Status.DONE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransientError(
                    f"operation {op.name} in {zone} not done after {self.cfg.operation_timeout_seconds:g}s: the "
                    "next tick asks again with the same request id",
                    code="OPERATION_TIMEOUT",
                )
            try:
                op = c.operations.wait(project=c.project, zone=zone, operation=op.name, retry=self._read_retry,
                                       timeout=max(0.5, min(remaining, self.cfg.timeout_seconds)))  # fmt: skip
            except Exception as exc:
                if type(exc).__name__ in ("ReadTimeout", "DeadlineExceeded"):
                    continue  # a server-side wait longer than our timeout: ask again until the deadline
                raise from_exception(exc) from None
        if op.error.errors:
            errors = [(e.code, e.message) for e in op.error.errors]
            raise from_operation(errors, op.http_error_status_code or None)

    def _existing(self, c: _Clients, key: OfferingKey, name: str, token: str) -> CloudInstance:
        zone = key.zone
        try:
            raw = self._read(lambda **kw: c.instances.get(project=c.project, zone=zone, instance=name, **kw))
        except NotFound:  # made, then gone (preempted, deleted) before we could read it
            gone = "gone before the launch was answered"
            return CloudInstance(
                f"{zone}/{name}", key, CloudState.TERMINATED, self.clock.now(), {TAG_INTENT: token}, gone
            )
        if raw.labels.get(TAG_INTENT) != token:
            raise ConfigError(
                f"instance {zone}/{name} exists but was not made by this launch", code="alreadyExists"
            )
        return self._instance(raw)

    def _body(self, req: LaunchRequest, t: GcpType) -> gce.Instance:
        key, template = req.offering, req.template
        extra = dict(template.extra)
        for gpu_key in ("accelerator_type", "accelerator_count"):
            if gpu_key in extra:
                raise ConfigError(
                    f"launch_templates.gcp.extra.{gpu_key}: name the GPUs in the instance type instead, "
                    "e.g. n1-standard-8+nvidia-tesla-t4 (the offering's price and GPUs come from it)"
                )
        unknown = sorted(set(extra) - EXTRA_KEYS)
        if unknown:
            raise ConfigError(f"launch_templates.gcp.extra: unknown keys {unknown} (known: {sorted(EXTRA_KEYS)})")
        if not template.image:
            raise ConfigError(f"pool {req.pool}: launch_templates.gcp.image (a boot disk image) is not set")
        labels = {**template.tags, **req.tags}
        bad = [f"{k}={v}" for k, v in labels.items() if not _label_ok(k, v)]
        if bad:
            raise ConfigError(f"not valid GCE labels (lower-case [a-z0-9_-], at most 63 characters): {bad}")
        disk = gce.AttachedDiskInitializeParams(source_image=template.image)
        if template.disk_gb:
            disk.disk_size_gb = template.disk_gb
        if extra.get("disk_type"):
            disk.disk_type = f"zones/{key.zone}/diskTypes/{extra['disk_type']}"
        nic = gce.NetworkInterface(network=template.network or "global/networks/default")
        if subnets := _strings(extra.get("subnetwork")):
            nic.subnetwork = _subnetwork_in(subnets, key.region)
        if _flag(extra.get("external_ip")):
            nic.access_configs = [gce.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
        spot = key.market == Market.SPOT
        has_gpus = bool(t.accelerator) or t.machine_type.startswith(BUNDLED_GPU_FAMILIES)
        scheduling = gce.Scheduling(
            on_host_maintenance="TERMINATE" if has_gpus or spot else "MIGRATE", automatic_restart=not spot
        )
        if spot:
            action = str(extra.get("spot_termination_action", "DELETE")).upper()
            if action not in ("STOP", "DELETE"):
                raise ConfigError(f"extra.spot_termination_action must be STOP or DELETE, not {action!r}")
            scheduling.provisioning_model = "SPOT"
            scheduling.instance_termination_action = action
        body = gce.Instance(
            name=instance_name(req.token),
            machine_type=f"zones/{key.zone}/machineTypes/{t.machine_type}",
            labels=labels,
            disks=[gce.AttachedDisk(boot=True, auto_delete=True, initialize_params=disk)],
            network_interfaces=[nic],
            scheduling=scheduling,
        )
        if t.accelerator:
            body.guest_accelerators = [
                gce.AcceleratorConfig(
                    accelerator_type=f"zones/{key.zone}/acceleratorTypes/{t.accelerator}",
                    accelerator_count=t.count,
                )
            ]
        if template.user_data:
            body.metadata = gce.Metadata(items=[gce.Items(key="startup-script", value=template.user_data)])
        if extra.get("service_account"):
            scopes = _strings(extra.get("scopes")) or SCOPES
            body.service_accounts = [gce.ServiceAccount(email=str(extra["service_account"]), scopes=scopes)]
        if tags := _strings(extra.get("network_tags")):
            body.tags = gce.Tags(items=tags)
        return body

    # ------------------------------------------------------------------ reading

    def _placements(self, now: datetime) -> list[tuple[str, str, int]]:
        """(zone, instance type, GPUs) for every candidate type in every configured zone that offers it."""
        if self._placement is not None and now - self._placement[0] < PLACEMENT_TTL:
            return self._placement[1]
        if not self._types:
            return []
        c = self._api()
        offered: dict[str, dict[str, int]] = {}  # zone -> machine type -> GPUs that come with it
        machines = _any_name({t.machine_type for t in self._types.values()})
        request = gce.AggregatedListMachineTypesRequest(project=c.project, filter=machines, max_results=500)
        for zone, mt in self._aggregated(c.machine_types.aggregated_list, request, "machine_types"):
            offered.setdefault(zone, {})[mt.name] = sum(a.guest_accelerator_count for a in mt.accelerators)
        cards: dict[tuple[str, str], int] = {}  # (zone, accelerator) -> the most one VM may have
        if accelerators := _any_name({t.accelerator for t in self._types.values() if t.accelerator}):
            request = gce.AggregatedListAcceleratorTypesRequest(
                project=c.project, filter=accelerators, max_results=500
            )
            for zone, at in self._aggregated(c.accelerator_types.aggregated_list, request, "accelerator_types"):
                cards[(zone, at.name)] = at.maximum_cards_per_instance
        placed: list[tuple[str, str, int]] = []
        for name, t in sorted(self._types.items()):
            for zone, here in sorted(offered.items()):
                if t.machine_type not in here:
                    continue
                if t.accelerator is None:
                    placed.append((zone, name, here[t.machine_type]))
                elif cards.get((zone, t.accelerator), 0) >= t.count:
                    placed.append((zone, name, t.count))
        self._placement = (now, placed)
        return placed

    def _aggregated(
        self, method: Callable[..., Iterable[tuple[str, Any]]], request: Any, field: str
    ) -> list[tuple[str, Any]]:
        """The items of an aggregated list in the configured zones, as (zone, item)."""
        scopes = self._read(lambda **kw: list(method(request=request, **kw)))
        return [
            (zone, item)
            for scope, scoped in scopes
            if self._zone_wanted(zone := scope.removeprefix("zones/"))
            for item in getattr(scoped, field)
        ]

    def _zone_wanted(self, zone: str) -> bool:
        zones = self.cfg.regions.get(region_of(zone))
        return zones is not None and (not zones or zone in zones)

    def _read(self, call: Callable[..., _T]) -> _T:
        try:
            return call(retry=self._read_retry, timeout=self.cfg.timeout_seconds)
        except Exception as exc:
            raise from_exception(exc) from None

    def _instance(self, raw: gce.Instance) -> CloudInstance:
        zone = _last(raw.zone)
        cloud_id = f"{zone}/{raw.name}"
        attached = [(_last(a.accelerator_type), a.accelerator_count) for a in raw.guest_accelerators]
        t = type_of_instance(_last(raw.machine_type), attached)
        spot = raw.scheduling.provisioning_model == "SPOT" or raw.scheduling.preemptible
        state = _STATES.get(raw.status, CloudState.PENDING)
        reason = ": ".join(x for x in (raw.status, raw.status_message) if x)
        if spot and state in (CloudState.STOPPING, CloudState.TERMINATED) and cloud_id not in self._deleting:
            reason = f"preempted: Compute Engine took the spot VM back ({reason})"
        try:
            launched = datetime.fromisoformat(raw.creation_timestamp)
        except ValueError:
            launched = self.clock.now()
        itype = self._spelling.get(t.name, t.name)
        return CloudInstance(
            cloud_id=cloud_id,
            offering=OfferingKey(CLOUD, region_of(zone), zone, itype, Market.SPOT if spot else Market.ON_DEMAND),
            state=state,
            launched_at=launched if launched.tzinfo else launched.replace(tzinfo=UTC),
            tags=dict(raw.labels),
            state_reason=reason,
            address=raw.network_interfaces[0].network_i_p if raw.network_interfaces else None,
        )

    def _api(self) -> _Clients:
        """The API clients, made on first use (credentials may be looked up then: errors are typed)."""
        with self._lock:
            if self._clients is None:
                try:
                    credentials, project = gcp_credentials(self.cfg, self._credentials)
                except Exception as exc:
                    raise from_exception(exc) from None
                if not project:
                    raise ConfigError("clouds.gcp.project is empty and the credentials name no project")
                options = ClientOptions(api_endpoint=self.cfg.endpoint) if self.cfg.endpoint else None
                kw: dict[str, Any] = {"credentials": credentials, "client_options": options, "transport": "rest"}
                self._clients = _Clients(project, gce.InstancesClient(**kw), gce.ZoneOperationsClient(**kw),
                                         gce.MachineTypesClient(**kw), gce.AcceleratorTypesClient(**kw))  # fmt: skip
            return self._clients


def gcp_credentials(cfg: config.GcpCloud, given: Any = None) -> tuple[Any, str]:
    """(credentials, project): those given (tests), none for a plain-http endpoint (a local emulator: no token is
    sent in clear text), the service-account key file, or application default credentials."""
    if given is not None:
        return given, cfg.project
    if cfg.endpoint and cfg.endpoint.startswith("http://"):
        from google.auth import credentials as auth_credentials

        anonymous: Any = auth_credentials.AnonymousCredentials  # untyped in google-auth
        return anonymous(), cfg.project
    if cfg.credentials_file is not None:
        from google.oauth2 import service_account

        from_file: Any = service_account.Credentials.from_service_account_file  # untyped in google-auth
        key = from_file(str(cfg.credentials_file), scopes=SCOPES)
        return key, cfg.project or key.project_id or ""
    import google.auth

    found, project = google.auth.default(scopes=SCOPES)
    return found, cfg.project or project or ""


def _label_ok(key: str, value: str) -> bool:
    """GCE labels: keys start with a lower-case letter; keys and values are lower-case letters, digits, - and _."""

    def ok(text: str) -> bool:
        return len(text) <= 63 and all(ch.islower() or ch.isdigit() or ch in "-_" for ch in text)

    return bool(key) and key[0].islower() and ok(key) and ok(value)


def _subnetwork_in(subnets: list[str], region: str) -> str:
    """The configured subnetwork of `region` (a single one without a region in its path is taken as it is)."""
    here = [s for s in subnets if f"/regions/{region}/" in f"/{s}"]
    if here:
        return here[0]
    if len(subnets) == 1 and "regions/" not in subnets[0]:
        return subnets[0]
    raise ConfigError(f"none of the subnetworks {subnets} is in {region}: add one, or drop the region")


def _any_name(names: Iterable[str | None]) -> str:
    return " OR ".join(f'(name = "{n}")' for n in sorted(n for n in names if n))


def _last(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[-1]


def _flag(value: object) -> bool:
    return value is True or str(value).lower() in ("true", "yes", "1")


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [s.strip() for s in str(value).split(",") if s.strip()]


def build(cfg: config.CloudBase, ctx: BuildContext) -> GcpProvider:
    if not isinstance(cfg, config.GcpCloud):
        raise TypeError(f"expected GcpCloud settings, got {type(cfg).__name__}")
    return GcpProvider(cfg, ctx.clock, ctx.daemon_id, ctx.instance_types, GcpCatalog.load(ctx.state_dir))
