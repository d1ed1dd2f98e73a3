"""The Azure provider: virtual machines in one resource group, through azure-mgmt-compute and azure-mgmt-network.

- offerings: the candidate VM sizes of each configured location (`resource_skus.list`, filtered to the location,
  cached for an hour): their GPU count, the zones they are offered in, minus what `restrictions` takes away for
  this subscription (a whole location, or some zones); prices from the shipped catalog (overlaid by `prices
  refresh`). A location configured with zones gives one offering per zone (zone "1", "2", ...); one configured
  with no zones gives one regional offering whose zone is the location's name.
- launch: a VM named from the intent's token (`vm_name`), so a retried PUT is the same VM. A GET first: an
  existing VM is answered as it is (a failed one is cleaned up and its error raised). Otherwise its network
  interface `<vm>-nic` is created, then the VM, and the creation is polled to its end (capacity errors arrive
  only there), within `operation_timeout_seconds`. A VM whose allocation failed stays behind in provisioningState
  Failed: it is deleted with its NIC and OS disk before the typed error is raised, so nothing is left to bill.
- list: one `virtual_machines.list` of the resource group per tick, filtered by our daemon tag. Two more calls
  only when needed: a subscription-wide status listing when a spot VM with eviction policy Deallocate is listed
  (a deallocated spot VM is an eviction, and only the instance view shows it), and one NIC listing to learn
  private addresses the provider has not seen (after a restart).
- terminate: `virtual_machines.begin_delete`, not polled (the NIC and OS disk carry deleteOption Delete, so Azure
  removes them with the VM); already gone is success. A Failed VM or an evicted (deallocated) spot VM seen in a
  listing is deleted the same way, from the second listing that shows it on (the first one's tick records the
  end before the VM vanishes): the daemon never restarts a VM, and nothing of ours may keep billing.
- leftovers: what a failed or interrupted launch can leave behind (the NIC made before a VM PUT that never came or
  was refused, the NIC and OS disk of a failed VM that its deletion did not take along) is found from the NICs:
  every `clouds.azure.leftover_grace_seconds / 2` a listing also lists the resource group's NICs, and a NIC
  carrying our daemon tag whose VM does not exist (and that no VM holds) is an orphan (the first look comes
  that long after the provider's first listing, so a start costs no extra call); one still orphaned
  `leftover_grace_seconds` after it was first seen (a launch in flight re-creates its NIC within a tick) is
  deleted after its OS disk `<vm>-osdisk`. Deletions go disk first, NIC last, because the NIC's tag is what tells
  a leftover is ours (an OS disk carries no tags): a crash in between leaves the NIC to find again.

Every azure-core error is translated by `_azure_errors` at this boundary. Reads use azure-core's retry policy
with `retry_total` retries; creates and deletes are sent once (the next tick is the retry). The request bodies
and the reading of Azure's answers are pure functions in `_azure_shapes`; this module is the class and the calls.

`launch_templates.azure` of a pool: `image` is an image URN "publisher:offer:sku:version" or an image resource
id (managed image, gallery image version; "/CommunityGalleries/..." and "/SharedGalleries/..." ids too);
`network` is the subnet resource id for the NIC; `user_data` becomes the VM's custom data (cloud-init);
`disk_gb` sizes the OS disk. `extra` keys (anything else is a configuration error):
  subnets                   list of "location=subnet-id", overriding `network` per location (a VNet is regional)
  admin_username            the Linux admin user (default "azureuser"); password login is never enabled
  ssh_public_key            the admin user's SSH public key (required: Azure wants a key or a password)
  os_disk_gb                OS disk size in GB (overrides disk_gb)
  os_disk_type              managed disk SKU of the OS disk (default "StandardSSD_LRS"; "Premium_LRS", ...)
  eviction_policy           spot VMs: "Delete" (default) or "Deallocate" (seen at once; deleted when seen)
  spot_max_price            spot VMs: max $/hour (default -1: up to the on-demand price, never evicted for price)
  accelerated_networking    bool, default false
  network_security_group_id an NSG resource id for the NIC
  managed_identity_id       a user-assigned managed identity resource id for the VM
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError
from azure.core.pipeline.policies import RetryPolicy
from azure.core.polling import LROPoller
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient

from autoscaler import config
from autoscaler.errors import ConfigError, NotFound, ProviderError, TransientError
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
from providers._azure_errors import from_exception, translate
from providers._azure_shapes import (
    CLOUD,
    SkuInfo,
    as_json,
    failure_of,
    instance_of,
    nic_address,
    nic_body,
    nic_id,
    power_of,
    props_of,
    sku_info,
    subnet_of,
    vm_body,
)
from providers._azure_shapes import image_reference as image_reference  # re-exported: tests import it
from providers._azure_shapes import vm_name as vm_name  # re-exported: tests import it
from providers.azure_catalog import AzureCatalog

SKU_TTL = timedelta(hours=1)
REAP_AGAIN_AFTER = timedelta(minutes=5)
ADDRESS_LOOKUP_EVERY = timedelta(minutes=5)
_T = TypeVar("_T")
log = logging.getLogger(__name__)


class AzureProvider:
    name = CLOUD

    def __init__(
        self,
        cfg: config.AzureCloud,
        clock: Clock,
        daemon_id: str,
        instance_types: frozenset[str],
        catalog: AzureCatalog,
        *,
        credential: TokenCredential | None = None,
    ) -> None:
        for field, value in (
            ("regions", cfg.regions),
            ("subscription_id", cfg.subscription_id),
            ("resource_group", cfg.resource_group),
        ):
            if not value:
                raise ConfigError(f"clouds.azure.{field} is not set")
        self.cfg = cfg
        self.clock = clock
        self.daemon_id = daemon_id
        self.instance_types = sorted(instance_types)
        self.catalog = catalog
        self.rg = cfg.resource_group
        quiet = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
        if (
            quiet.level == logging.NOTSET
        ):  # it logs every request and its headers at INFO; an operator's choice wins
            quiet.setLevel(logging.WARNING)
        credential = credential if credential is not None else default_credential()
        kwargs = client_options(cfg)
        self.compute = ComputeManagementClient(credential, cfg.subscription_id, **kwargs)
        self.network = NetworkManagementClient(credential, cfg.subscription_id, **kwargs)
        self._lock = threading.Lock()
        self._skus: dict[str, tuple[datetime, dict[str, SkuInfo]]] = {}
        self._addresses: dict[str, str] = {}  # VM name -> private IP, learnt from NICs
        self._address_lookup_at: datetime | None = None
        self._reaped: dict[str, datetime] = {}  # VM name -> when its delete was sent by a listing
        self._ended_seen: set[str] = set()  # VM names a listing showed ended (reaped from the next listing on)
        self._swept_at: datetime | None = None  # the last look for leftovers
        self._orphans: dict[str, datetime] = {}  # NIC name -> first seen orphaned

    # ------------------------------------------------------------------ Provider

    def offerings(self) -> Sequence[Offering]:
        now = self.clock.now()
        out: list[Offering] = []
        for location, zones in sorted(self.cfg.regions.items()):
            skus = self._sku_info(location, now)
            for size in self.instance_types:
                info, price = skus.get(size), self.catalog.price(size, location)
                if info is None or not info.available or price is None:
                    continue
                gpus = info.gpus or price.gpus
                observed = datetime(price.as_of.year, price.as_of.month, price.as_of.day, tzinfo=UTC)
                for zone in [z for z in zones if z in info.zones] if zones else [location]:
                    key = OfferingKey(CLOUD, location, zone, size, Market.ON_DEMAND)
                    out.append(Offering(key, price.on_demand_usd_per_hour, gpus, observed, price.source))
                    if price.spot_usd_per_hour is not None:
                        spot = OfferingKey(CLOUD, location, zone, size, Market.SPOT)
                        out.append(Offering(spot, price.spot_usd_per_hour, gpus, observed, price.source))
        return out

    def list_instances(self) -> Sequence[CloudInstance]:
        now = self.clock.now()
        every = self._call(lambda: [as_json(v) for v in self.compute.virtual_machines.list(self.rg)])
        vms = [vm for vm in every if (vm.get("tags") or {}).get(TAG_DAEMON) == self.daemon_id]
        power: dict[str, str] = {}
        if any(props_of(vm).get("evictionPolicy") == "Deallocate" for vm in vms):
            power = self._power_states()
        self._learn_addresses(vms, now)
        out = [self._instance(vm, now, power.get(str(vm.get("id", "")).lower(), "")) for vm in vms]
        for inst in out:
            if inst.state == CloudState.TERMINATED and "deleting" not in inst.state_reason:
                self._reap(inst.cloud_id, now)
        self._sweep_leftovers({str(vm.get("name", "")) for vm in every}, now)
        return out

    def launch(self, req: LaunchRequest) -> CloudInstance:
        key = req.offering
        zones = self.cfg.regions.get(key.region)
        if zones is None:
            raise ConfigError(f"location {key.region} is not configured under clouds.azure.regions")
        if (key.zone not in zones) if zones else (key.zone != key.region):
            where = f"zones {zones}" if zones else f"zone {key.region!r} (regional)"
            raise ConfigError(f"zone {key.zone!r} of {key.region} is not configured (configured: {where})")
        name = vm_name(self.daemon_id, req.token)
        deadline = time.monotonic() + self.cfg.operation_timeout_seconds
        existing = self._get_vm(name)
        if existing is not None:
            return self._resume(existing, req, deadline)
        vm_body(req, name, "", self.cfg.subscription_id, self.rg)  # a configuration error before any call
        nic_id = self._create_nic(name, req, deadline)
        body = vm_body(req, name, nic_id, self.cfg.subscription_id, self.rg)
        try:
            poller = self.compute.virtual_machines.begin_create_or_update(
                self.rg, name, cast(Any, body), retry_total=0
            )
        except AzureError as exc:
            error = _launch_error(exc)
            if not isinstance(error, TransientError):  # refused: no VM was made, the NIC has no use
                self._delete_quietly("nic", f"{name}-nic", deadline)
            raise error from None
        try:
            poller.wait(timeout=max(0.0, deadline - time.monotonic()))
        except AzureError as exc:
            raise self._failed_creation(name, exc, deadline) from None
        if not poller.done():
            raise TransientError(
                f"{name}: still being created after {self.cfg.operation_timeout_seconds:.0f}s; "
                "the next tick looks again",
                code="OperationTimeout",
            )
        return self._instance(as_json(poller.result()), self.clock.now(), "")

    def terminate(self, cloud_ids: Sequence[str]) -> None:
        for name in cloud_ids:
            try:
                self.compute.virtual_machines.begin_delete(self.rg, name, polling=False, retry_total=0)
            except AzureError as exc:
                error = from_exception(exc)
                if not isinstance(error, NotFound):
                    raise error from None
            with self._lock:
                self._addresses.pop(name, None)

    # ------------------------------------------------------------------ launch pieces

    def _resume(self, vm: dict[str, Any], req: LaunchRequest, deadline: float) -> CloudInstance:
        """A VM of this name exists already (a retry, a restart): answer it, or clean it up if it failed."""
        name = str(vm.get("name"))
        tags = vm.get("tags") or {}
        if tags.get(TAG_INTENT) != req.token or tags.get(TAG_DAEMON) != self.daemon_id:
            raise ConfigError(f"the VM name {name} is taken by a VM that is not this launch's ({tags})")
        state = props_of(vm).get("provisioningState")
        if state == "Deleting":
            raise TransientError(f"{name} is being deleted; the next tick launches it again", code="Deleting")
        if state in ("Failed", "Canceled"):
            code, message = failure_of(vm)
            self._clean_up(name, deadline)
            raise translate(code, message or f"{name}: provisioning {state}", None)
        return self._instance(vm, self.clock.now(), "")

    def _failed_creation(self, name: str, exc: AzureError, deadline: float) -> ProviderError:
        """Polling the creation raised. If the VM ended Failed (an allocation failure at the end of the
        operation, say), it is deleted with its NIC and disk; otherwise it may still come up: ask again later."""
        error = _launch_error(exc)
        try:
            vm = self._get_vm(name)
        except ProviderError:
            return error if isinstance(error, TransientError) else TransientError(str(error), code=error.code)
        if vm is not None and props_of(vm).get("provisioningState") not in ("Failed", "Canceled"):
            return TransientError(
                f"{name}: polling its creation failed ({error}); the next tick looks again", code=error.code
            )
        self._clean_up(name, deadline)
        return error

    def _clean_up(self, name: str, deadline: float) -> None:
        """Delete a failed VM, then its OS disk and NIC (already gone is fine), each polled to its end. The NIC goes
        last: its tag is how a later sweep knows a leftover disk is ours, should this be interrupted."""
        for kind, resource in (("vm", name), ("disk", f"{name}-osdisk"), ("nic", f"{name}-nic")):
            self._delete_quietly(kind, resource, deadline)

    def _delete_quietly(self, kind: str, resource: str, deadline: float) -> None:
        deletes: dict[str, Callable[..., LROPoller[None]]] = {
            "vm": self.compute.virtual_machines.begin_delete,
            "nic": self.network.network_interfaces.begin_delete,
            "disk": self.compute.disks.begin_delete,
        }
        begin = deletes[kind]
        try:
            begin(self.rg, resource, retry_total=0).wait(timeout=max(0.0, deadline - time.monotonic()))
        except AzureError as exc:
            error = from_exception(exc)
            if not isinstance(error, NotFound):
                log.warning("cleaning up %s %s failed (a later listing deletes it): %s", kind, resource, error)

    def _create_nic(self, name: str, req: LaunchRequest, deadline: float) -> str:
        body = nic_body(req, subnet_of(req))
        try:
            poller = self.network.network_interfaces.begin_create_or_update(
                self.rg, f"{name}-nic", cast(Any, body), retry_total=0
            )
            nic = poller.result(timeout=max(0.0, deadline - time.monotonic()))
        except AzureError as exc:
            raise _launch_error(exc) from None
        if not poller.done() or nic is None:
            raise TransientError(f"{name}-nic: still being created; the next tick looks again", code="Timeout")
        data = as_json(nic)
        address = nic_address(data)
        if address:
            with self._lock:
                self._addresses[name] = address
        return str(data.get("id") or nic_id(self.cfg.subscription_id, self.rg, name))

    def _get_vm(self, name: str) -> dict[str, Any] | None:
        try:
            return as_json(self.compute.virtual_machines.get(self.rg, name, expand="instanceView"))
        except AzureError as exc:
            error = from_exception(exc)
            if isinstance(error, NotFound):
                return None
            raise error from None

    # ------------------------------------------------------------------ list pieces

    def _instance(self, vm: Mapping[str, Any], now: datetime, power: str) -> CloudInstance:
        with self._lock:
            address = self._addresses.get(str(vm.get("name", "")))
        return instance_of(vm, now, power, address)

    def _power_states(self) -> dict[str, str]:
        """Resource id (lower case) -> PowerState code of every VM of the subscription, in one listing."""
        listed = self._call(
            lambda: [as_json(v) for v in self.compute.virtual_machines.list_all(status_only="true")]
        )
        return {str(vm.get("id", "")).lower(): power_of(vm) for vm in listed}

    def _learn_addresses(self, vms: Iterable[Mapping[str, Any]], now: datetime) -> None:
        """Private addresses of listed VMs not seen before, from one NIC listing (at most every few minutes)."""
        with self._lock:
            missing = [str(vm.get("name")) for vm in vms if str(vm.get("name")) not in self._addresses]
            due = self._address_lookup_at is None or now - self._address_lookup_at >= ADDRESS_LOOKUP_EVERY
            if not missing or not due:
                return
            self._address_lookup_at = now
        try:
            nics = self._call(lambda: [as_json(n) for n in self.network.network_interfaces.list(self.rg)])
        except ProviderError as exc:  # addresses are for health checks: a failure here must not fail the listing
            log.warning("listing network interfaces failed; addresses stay unknown for now: %s", exc)
            return
        by_nic = {str(n.get("name")): nic_address(n) for n in nics}
        with self._lock:
            for name in missing:
                if address := by_nic.get(f"{name}-nic"):
                    self._addresses[name] = address

    def _sweep_leftovers(self, vm_names: set[str], now: datetime) -> None:
        """Delete our NICs that no VM has (and their OS disks) once seen orphaned for the grace period."""
        grace = timedelta(seconds=self.cfg.leftover_grace_seconds)
        with self._lock:
            if self._swept_at is None:  # the first look comes grace / 2 after start: a restart lists no more
                self._swept_at = now
            if now - self._swept_at < grace / 2:
                return
            self._swept_at = now
        try:
            nics = self._call(lambda: [as_json(n) for n in self.network.network_interfaces.list(self.rg)])
        except ProviderError as exc:  # the sweep must not fail the listing: the next one tries again
            log.warning("listing network interfaces for leftovers failed (tried again later): %s", exc)
            return
        orphans = [
            str(nic.get("name"))
            for nic in nics
            if (nic.get("tags") or {}).get(TAG_DAEMON) == self.daemon_id
            and str(nic.get("name", "")).endswith("-nic")
            and str(nic.get("name"))[: -len("-nic")] not in vm_names
            and not props_of(nic).get("virtualMachine")
        ]
        with self._lock:
            self._orphans = {nic: self._orphans.get(nic, now) for nic in orphans}
            ripe = [nic for nic, since in self._orphans.items() if now - since >= grace]
        deadline = time.monotonic() + self.cfg.operation_timeout_seconds
        for nic in ripe:
            vm = nic[: -len("-nic")]
            log.warning(
                "deleting leftovers of VM %s (no such VM for %.0fs): its OS disk and NIC", vm, grace.seconds
            )
            self._delete_quietly("disk", f"{vm}-osdisk", deadline)
            self._delete_quietly("nic", nic, deadline)
            with self._lock:
                self._orphans.pop(nic, None)

    def _reap(self, name: str, now: datetime) -> None:
        """Delete an ended VM (failed, or an evicted spot VM) that is still there: it may keep billing. Not on its
        first sighting by this process: the tick that lists it ended first records that (a preemption, a failed
        launch); deleted at once, a crash before that record would leave the daemon only an instance gone
        without a trace, which it takes for lost only after `launch_retry_seconds`."""
        with self._lock:
            if name not in self._ended_seen:
                self._ended_seen.add(name)
                return
            sent = self._reaped.get(name)
            if sent is not None and now - sent < REAP_AGAIN_AFTER:
                return
            self._reaped[name] = now
        try:
            self.compute.virtual_machines.begin_delete(self.rg, name, polling=False, retry_total=0)
            log.info("deleting ended VM %s", name)
        except AzureError as exc:
            log.warning("deleting ended VM %s failed (tried again later): %s", name, from_exception(exc))

    def _sku_info(self, location: str, now: datetime) -> dict[str, SkuInfo]:
        with self._lock:
            cached = self._skus.get(location)
        if cached is not None and now - cached[0] < SKU_TTL:
            return cached[1]
        wanted = set(self.instance_types)
        skus: list[dict[str, Any]] = []
        if wanted:
            flt = f"location eq '{location}'"
            skus = self._call(lambda: [as_json(s) for s in self.compute.resource_skus.list(filter=flt)])
        info = {
            str(s.get("name")): sku_info(s, location)
            for s in skus
            if s.get("resourceType") == "virtualMachines" and s.get("name") in wanted
        }
        with self._lock:
            self._skus[location] = (now, info)
        return info

    def _call(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except AzureError as exc:
            raise from_exception(exc) from None


# ---------------------------------------------------------------------------------------------- helpers


def _launch_error(exc: AzureError) -> ProviderError:
    """A launch's error: "not found" here means a reference in the request is wrong (image, subnet)."""
    error = from_exception(exc)
    return ConfigError(str(error), code=error.code) if isinstance(error, NotFound) else error


# azure-core sleeps as long as a throttled answer's Retry-After says before it retries (ARM may say minutes): a
# tick must not. A longer wait is cut to this; a read still throttled then fails, and the next tick retries it.
RETRY_AFTER_CAP_SECONDS = 5.0


class _BoundedRetry(RetryPolicy[Any, Any]):
    def get_retry_after(self, response: Any) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, RETRY_AFTER_CAP_SECONDS)


def client_options(cfg: config.AzureCloud) -> dict[str, Any]:
    """Keyword arguments of the management clients: endpoint, CA bundle, timeouts, retries, polling."""
    options: dict[str, Any] = {
        "polling_interval": cfg.polling_interval_seconds,
        "retry_total": cfg.retry_total,
        "retry_policy": _BoundedRetry(retry_total=cfg.retry_total),
        "connection_timeout": cfg.timeout_seconds,
        "read_timeout": cfg.timeout_seconds,
    }
    if cfg.endpoint:
        endpoint = cfg.endpoint.rstrip("/")
        options["base_url"] = endpoint
        options["credential_scopes"] = [f"{endpoint}/.default"]
    if cfg.ca_bundle is not None:
        options["connection_verify"] = str(cfg.ca_bundle)
    return options


def default_credential() -> TokenCredential:
    """azure-identity's chain (environment, workload identity, managed identity, Azure CLI ...), imported only
    when no credential is injected."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def build(cfg: config.CloudBase, ctx: BuildContext) -> AzureProvider:
    if not isinstance(cfg, config.AzureCloud):
        raise TypeError(f"expected AzureCloud settings, got {type(cfg).__name__}")
    return AzureProvider(cfg, ctx.clock, ctx.daemon_id, ctx.instance_types, AzureCatalog.load(ctx.state_dir))
