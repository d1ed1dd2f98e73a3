"""A fake Azure Resource Manager for provider tests: HTTPS on 127.0.0.1, answering the request shapes the real
azure-mgmt-compute / azure-mgmt-network SDKs send, so their serialisation, bearer-token policy, retry policy,
paging (nextLink) and long-running-operation polling (Azure-AsyncOperation, Location) all run.

HTTPS because azure-core's bearer-token policy refuses plain http: the server, its self-signed certificate
(made once per test session, trusted through the provider's `ca_bundle`) and the `StaticToken` credential are in
tests/azure_fake_https.py; this module is the Resource Manager behaviour. Every request must carry
"Authorization: Bearer <FAKE_TOKEN>".

What it serves (subscription SUBSCRIPTION, resource group RESOURCE_GROUP; anything else is 404):
- `GET .../providers/Microsoft.Compute/skus?$filter=location eq 'x'`: resource SKUs of the sizes in `self.skus`,
  with GPU counts, zones and `restrictions` (see `restrict`).
- virtual machines: PUT (201 + Azure-AsyncOperation, provisioningState Creating; the VM name is the key: a second
  PUT answers the same VM), GET (`$expand=instanceView`), DELETE (202 + Azure-AsyncOperation + Location), the
  resource group's list (paged with nextLink, `page_size`), and the subscription's `statusOnly=true` list
  (instance views, no tags, as Azure answers it). The NIC and OS disk go with a VM whose deleteOption says so.
- network interfaces: PUT (201 + Azure-AsyncOperation, a private address), GET, DELETE (400 NicInUse while a VM
  holds it), list. Managed disks: GET, DELETE (the OS disk is made with its VM).
- operations: `.../locations/{loc}/operations/{id}` answers InProgress once (`op_steps`), then Succeeded or
  Failed with the operation's error; `.../operationResults/{id}` answers 202 then 204. "Time" passes per poll and
  per listing: a VM whose creation nobody polls still completes after a listing or two.

Test controls: `inject` (a synchronous error with any status and code, or a failure at the end of the operation
that leaves the VM in provisioningState Failed with its NIC and disk, optionally nested in error.details),
`exhaust`/`restore` (every matching creation fails at its end), `restrict` (a SKU restriction by location or
zone), `evict` (a spot VM deallocated or deleted), `lose_next_answer` (the request is applied, the client gets a
503), `calls`/`count` (requests per operation name, e.g. "vm.put", "vm.list", "op.get"), `leave_leftovers` (a VM
that failed leaves its NIC and OS disk behind when deleted, deleteOption or not, as failed creations can),
`leftovers` (what is left that can bill) and `created` (every VM ever made, with its tags).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from autoscaler import config
from tests.azure_fake_https import FAKE_TOKEN as FAKE_TOKEN  # re-exported: tests import it from here
from tests.azure_fake_https import HttpsServer, Reply, StaticToken

SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
RESOURCE_GROUP = "gpu-rg"
ZONES = ("1", "2", "3")
# size -> (GPUs, vCPUs); offered in every location of LOCATIONS, in every zone the location has
SIZES = {
    "Standard_NC4as_T4_v3": (1, 4), "Standard_NC8as_T4_v3": (1, 8), "Standard_NC16as_T4_v3": (1, 16),
    "Standard_NC64as_T4_v3": (4, 64), "Standard_NC24ads_A100_v4": (1, 24), "Standard_NC48ads_A100_v4": (2, 48),
    "Standard_NC96ads_A100_v4": (4, 96), "Standard_ND96asr_v4": (8, 96), "Standard_ND96amsr_A100_v4": (8, 96),
    "Standard_NC40ads_H100_v5": (1, 40), "Standard_NC80adis_H100_v5": (2, 80), "Standard_ND96isr_H100_v5": (8, 96),
    "Standard_NV36ads_A10_v5": (1, 36), "Standard_NV72ads_A10_v5": (2, 72), "Standard_D4s_v5": (0, 4),
}  # fmt: skip
LOCATIONS = {"eastus": ZONES, "eastus2": ZONES, "westus2": ZONES, "southcentralus": ZONES, "westus": ()}
_PREFIX = r"^/subscriptions/(?P<sub>[^/]+)"
_RG = _PREFIX + r"/resourceGroups/(?P<rg>[^/]+)/providers"
ROUTES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern + "$", re.IGNORECASE))
    for name, pattern in (
        ("skus", _PREFIX + r"/providers/Microsoft\.Compute/skus"),
        ("vms_all", _PREFIX + r"/providers/Microsoft\.Compute/virtualMachines"),
        ("op", _PREFIX + r"/providers/Microsoft\.(Compute|Network)/locations/(?P<loc>[^/]+)/operations/(?P<id>[^/]+)"),
        ("op_result", _PREFIX + r"/providers/Microsoft\.(Compute|Network)/locations/(?P<loc>[^/]+)/operationResults/(?P<id>[^/]+)"),
        ("vms", _RG + r"/Microsoft\.Compute/virtualMachines"),
        ("vm", _RG + r"/Microsoft\.Compute/virtualMachines/(?P<name>[^/]+)"),
        ("nics", _RG + r"/Microsoft\.Network/networkInterfaces"),
        ("nic", _RG + r"/Microsoft\.Network/networkInterfaces/(?P<name>[^/]+)"),
        ("disk", _RG + r"/Microsoft\.Compute/disks/(?P<name>[^/]+)"),
    )
]  # fmt: skip


@dataclass
class _Fault:
    op: str
    status: int
    error: dict[str, Any]
    match: dict[str, str | None]  # size, zone, priority ("Spot" / "Regular"); None matches anything
    at_end: bool
    remaining: int | None  # None: until restore()/reset()


@dataclass
class _Op:
    location: str
    kind: str  # "vm.create", "vm.delete", "nic.create", "nic.delete", "disk.delete"
    name: str
    steps: int
    error: dict[str, Any] | None = None
    done: bool = False


def _error(code: str, message: str, nested: bool = False) -> dict[str, Any]:
    inner = {"code": code, "message": message}
    if nested:
        return {"code": "Conflict", "message": "The operation failed.", "details": [inner]}
    return inner


class FakeARM:
    def __init__(self) -> None:
        self._https = HttpsServer(self.handle, prefix="fake-arm-")
        self.ca_path = self._https.ca_path
        self.credential = StaticToken(FAKE_TOKEN)
        self.subscription = SUBSCRIPTION
        self.resource_group = RESOURCE_GROUP
        self.url = ""
        self._lock = threading.RLock()
        self.now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []  # (operation, path) in arrival order
        self.vms: dict[str, dict[str, Any]] = {}
        self.nics: dict[str, dict[str, Any]] = {}
        self.disks: dict[str, dict[str, Any]] = {}
        # Every VM the fake made, in order: (name, tags, ends Failed?). A retried PUT of an existing name adds
        # nothing, so two entries with one intent tag are a launch made twice.
        self.created: list[tuple[str, dict[str, str], bool]] = []
        self.skus: dict[str, dict[str, Any]] = {}
        self._ops: dict[str, _Op] = {}
        self._faults: list[_Fault] = []
        self._lose: list[str] = []
        self._ips = 0
        self.page_size = 50
        self.op_steps = 1
        self.leave_leftovers = False  # deleting a Failed VM leaves its NIC and disk (see _remove_vm)
        self.reset()

    # ---- lifecycle ----
    def start(self) -> FakeARM:
        self.url = self._https.start()
        return self

    def stop(self) -> None:
        self._https.stop()

    def reset(self) -> None:
        """Forget every resource, fault, restriction and count (the server keeps running)."""
        with self._lock:
            for state in (self.calls, self.log, self.vms, self.nics, self.disks, self._ops, self._faults,
                          self._lose, self.created):  # fmt: skip
                state.clear()
            self.skus.clear()
            for size, (gpus, vcpus) in SIZES.items():
                self.skus[size] = {"gpus": gpus, "vcpus": vcpus, "where": dict(LOCATIONS), "restrictions": []}
            self.page_size, self.op_steps, self._ips = 50, 1, 0
            self.leave_leftovers = False
            self.credential.calls = 0
            self.now = lambda: dt.datetime.now(dt.UTC)

    # ---- what a provider needs ----
    def cloud_config(self, regions: dict[str, list[str]] | None = None, **overrides: Any) -> config.AzureCloud:
        """Settings of a provider pointed at this fake: no retries, no polling delay, short timeouts."""
        settings: dict[str, Any] = {
            "regions": regions if regions is not None else {"eastus": ["1", "2"]},
            "subscription_id": self.subscription,
            "resource_group": self.resource_group,
            "endpoint": self.url,
            "ca_bundle": self.ca_path,
            "polling_interval_seconds": 0,
            "retry_total": 0,
            "timeout_seconds": 5,
            "operation_timeout_seconds": 10,
            **overrides,
        }
        return config.AzureCloud(**settings)

    def subnet_id(self, location: str = "eastus") -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/Microsoft.Network/"
            f"virtualNetworks/vnet-{location}/subnets/gpu"
        )

    # ---- test controls ----
    def inject(
        self, code: str, *, status: int = 409, message: str | None = None, op: str = "vm.put",
        size: str | None = None, zone: str | None = None, priority: str | None = None, at_end: bool = False,
        nested: bool = False, times: int | None = 1,
    ) -> None:  # fmt: skip
        """The next `times` matching `op` requests (None: all until reset) fail with `code` (any operation name of
        `calls`; size, zone and priority match VM PUTs only). `at_end`: the VM PUT is accepted and its operation
        ends Failed, leaving the VM in provisioningState Failed (with its NIC and disk)."""
        error = _error(code, message or f"{code} (injected)", nested)
        match = {"size": size, "zone": zone, "priority": priority}
        with self._lock:
            self._faults.append(_Fault(op, status, error, match, at_end, times))

    def exhaust(self, size: str, zone: str | None = None, priority: str | None = None, *,
                code: str = "ZonalAllocationFailed") -> None:  # fmt: skip
        """Every matching VM creation fails at the end of its operation with `code`, until restore()."""
        message = f"Allocation failed. We do not have sufficient capacity for the requested VM size {size}."
        self.inject(code, message=message, size=size, zone=zone, priority=priority, at_end=True, times=None)

    def restore(self) -> None:
        with self._lock:
            self._faults[:] = [f for f in self._faults if f.remaining is not None]

    def restrict(self, size: str, location: str, zones: list[str] | None = None) -> None:
        """A SKU restriction for this subscription: the whole location (zones None) or some of its zones."""
        with self._lock:
            info: dict[str, Any] = {"locations": [location]}
            if zones is not None:
                info["zones"] = zones
            self.skus[size]["restrictions"].append({
                "type": "Location" if zones is None else "Zone", "values": [location],
                "restrictionInfo": info, "reasonCode": "NotAvailableForSubscription",
            })  # fmt: skip

    def lose_next_answer(self, op: str = "vm.put") -> None:
        """The next `op` request takes effect, but the client gets 503 ServiceUnavailable."""
        with self._lock:
            self._lose.append(op)

    def evict(self, name: str, *, deallocate: bool = True) -> None:
        """Azure takes a spot VM back: deallocated (it stays, PowerState/deallocated) or deleted."""
        with self._lock:
            vm = self.vms[name]
            if vm["properties"].get("priority") != "Spot":
                raise ValueError(f"{name} is not a spot VM: Azure does not evict it")
            for op in self._ops.values():  # a VM is evicted once it runs: its creation has ended
                while op.name == name and op.kind == "vm.create" and not op.done:
                    self._step(op)
            if deallocate:
                vm["_power"] = "deallocated"
            else:
                self._remove_vm(name)

    def count(self, op: str) -> int:
        with self._lock:
            return self.calls[op]

    def leftovers(self) -> dict[str, list[str]]:
        """Everything that could bill: VMs, NICs and disks still there."""
        with self._lock:
            return {"vms": sorted(self.vms), "nics": sorted(self.nics), "disks": sorted(self.disks)}

    def orphans(self) -> dict[str, list[str]]:
        """What bills for nothing: Failed VMs, and NICs and disks no VM holds."""
        with self._lock:
            held = {f"{name}-nic" for name in self.vms} | {
                vm["properties"]["storageProfile"]["osDisk"]["name"] for vm in self.vms.values()
            }
            failed = [n for n, vm in self.vms.items() if vm["properties"]["provisioningState"] == "Failed"]
            return {
                "failed_vms": sorted(failed),
                "nics": sorted(set(self.nics) - held),
                "disks": sorted(set(self.disks) - held),
            }

    # ---- dispatch ----
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        parts = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        route, found = next(((n, m) for n, p in ROUTES if (m := p.match(parts.path))), ("", None))
        op = _OPS.get((route, method), f"{route or 'unknown'}.{method.lower()}")
        with self._lock:
            self.calls[op] += 1
            self.log.append((op, parts.path))
            auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
            if auth != f"Bearer {self.credential.token}":
                return Reply(401, {"error": _error("AuthenticationFailed", "missing or wrong bearer token")})
            if "api-version" not in query:
                return Reply(400, {"error": _error("MissingApiVersionParameter", "api-version is required")})
            if found is None:
                return Reply(404, {"error": _error("NotFound", f"no route for {method} {parts.path}")})
            groups = found.groupdict()
            if groups.get("sub") != self.subscription:
                return Reply(404, {"error": _error("SubscriptionNotFound", f"subscription {groups['sub']}")})
            if "rg" in groups and groups["rg"].lower() != self.resource_group.lower():
                return Reply(404, {"error": _error("ResourceGroupNotFound", f"resource group {groups['rg']}")})
            try:
                payload = json.loads(body) if body else {}
            except ValueError:
                return Reply(400, {"error": _error("InvalidRequestContent", "the body is not JSON")})
            handler = getattr(self, f"_{op.replace('.', '_')}", None)
            if handler is None:
                return Reply(405, {"error": _error("MethodNotAllowed", f"{method} {parts.path}")})
            if op not in ("vm.put", "nic.put") and (fault := self._take_fault(op, {})) is not None:
                return Reply(fault.status, {"error": fault.error})
            reply: Reply = handler(groups, query, payload)
            if op in self._lose and reply.status < 400:
                self._lose.remove(op)
                return Reply(503, {"error": _error("ServiceUnavailable", "the answer was lost (injected)")})
            return reply

    # ---- helpers ----
    def _id(self, kind: str, name: str) -> str:
        provider = "Microsoft.Network/networkInterfaces" if kind == "nic" else f"Microsoft.Compute/{kind}"
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/{provider}/{name}"
        )

    def _start_op(self, location: str, kind: str, name: str, steps: int, error: Any = None) -> dict[str, str]:
        op_id = str(uuid.uuid4())
        self._ops[op_id] = _Op(location, kind, name, steps, error)
        rp = "Network" if kind.startswith("nic") else "Compute"
        base = f"{self.url}/subscriptions/{self.subscription}/providers/Microsoft.{rp}/locations/{location}"
        headers = {"Azure-AsyncOperation": f"{base}/operations/{op_id}?api-version=2024-01-01"}
        if kind.endswith("delete"):
            headers["Location"] = f"{base}/operationResults/{op_id}?api-version=2024-01-01"
        return headers

    def _step(self, op: _Op) -> None:
        """Time passes for one operation: after `steps` steps it ends, and its resource with it."""
        if op.done:
            return
        if op.steps > 0:
            op.steps -= 1
            return
        op.done = True
        if op.kind == "vm.create" and op.name in self.vms:
            vm = self.vms[op.name]
            vm["properties"]["provisioningState"] = "Failed" if op.error else "Succeeded"
            vm["_failure"] = op.error
        elif op.kind == "vm.delete":
            self._remove_vm(op.name)

    def _advance(self, names: set[str] | None = None) -> None:
        for op in list(self._ops.values()):
            if op.kind.startswith("vm.") and (names is None or op.name in names):
                self._step(op)

    def _remove_vm(self, name: str) -> None:
        vm = self.vms.pop(name, None)
        if vm is None:
            return
        props = vm["properties"]
        if self.leave_leftovers and vm.get("_failure"):  # its creation failed: NIC and disk stay, detached
            self.disks.get(props["storageProfile"]["osDisk"]["name"], {}).pop("managedBy", None)
            return
        for ref in props["networkProfile"]["networkInterfaces"]:
            if (ref.get("properties") or {}).get("deleteOption") == "Delete":
                self.nics.pop(ref["id"].rsplit("/", 1)[-1], None)
        os_disk = props["storageProfile"]["osDisk"]
        if os_disk.get("deleteOption") == "Delete":
            self.disks.pop(os_disk["name"], None)
        else:
            self.disks.get(os_disk["name"], {}).pop("managedBy", None)

    def _take_fault(self, op: str, match: dict[str, str | None]) -> _Fault | None:
        for fault in self._faults:
            if fault.op == op and all(v in (None, match.get(k)) for k, v in fault.match.items()):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _vm_view(self, vm: dict[str, Any], *, instance_view: bool) -> dict[str, Any]:
        out = {k: v for k, v in vm.items() if not k.startswith("_")}
        out["properties"] = {k: v for k, v in vm["properties"].items()}
        out["properties"]["osProfile"] = {
            k: v for k, v in vm["properties"]["osProfile"].items() if k not in ("customData", "adminPassword")
        }
        if instance_view:
            out["properties"]["instanceView"] = {"statuses": _statuses(vm)}
        return out

    def _page(self, items: list[Any], query: dict[str, str], path: str) -> dict[str, Any]:
        start = int(query.get("$skiptoken") or 0)
        page: dict[str, Any] = {"value": items[start : start + self.page_size]}
        if start + self.page_size < len(items):
            rest = "&".join(f"{k}={v}" for k, v in query.items() if k != "$skiptoken")
            page["nextLink"] = f"{self.url}{path}?{rest}&$skiptoken={start + self.page_size}"
        return page

    # ---- resource SKUs ----
    def _skus_list(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        wanted = re.fullmatch(r"\s*location\s+eq\s+'([^']+)'\s*", query.get("$filter", ""), re.IGNORECASE)
        value = []
        for size, sku in sorted(self.skus.items()):
            for location, zones in sorted(sku["where"].items()):
                if wanted and wanted.group(1).lower() != location:
                    continue
                restrictions = [r for r in sku["restrictions"] if location in r["values"]]
                caps = [{"name": "vCPUs", "value": str(sku["vcpus"])}]
                if sku["gpus"]:
                    caps.append({"name": "GPUs", "value": str(sku["gpus"])})
                value.append({
                    "resourceType": "virtualMachines", "name": size, "tier": "Standard", "size": size[9:],
                    "locations": [location], "capabilities": caps, "restrictions": restrictions,
                    "locationInfo": [{"location": location, "zones": list(zones), "zoneDetails": []}],
                })  # fmt: skip
        value.append({"resourceType": "disks", "name": "Premium_LRS", "locations": ["eastus"], "restrictions": []})
        return Reply(200, {"value": value})

    # ---- virtual machines ----
    def _vm_put(self, groups: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        name = groups["name"]
        if name in self.vms:  # the name is the key: the same VM, its tags updated
            vm = self.vms[name]
            vm["tags"] = body.get("tags") or vm.get("tags") or {}
            return Reply(200, self._vm_view(vm, instance_view=False))
        props = body.get("properties") or {}
        location = str(body.get("location", "")).lower()
        size = (props.get("hardwareProfile") or {}).get("vmSize")
        zones = body.get("zones") or []
        zone = zones[0] if zones else None
        priority = props.get("priority") or "Regular"
        bad = self._invalid_vm(location, size, zone, props)
        if bad is not None:
            return bad
        fault = self._take_fault("vm.put", {"size": size, "zone": zone, "priority": priority})
        if fault is not None and not fault.at_end:
            return Reply(fault.status, {"error": fault.error})
        os_disk = dict(props["storageProfile"].get("osDisk") or {})
        os_disk.setdefault("name", f"{name}_OsDisk_1_{uuid.uuid4().hex}")
        vm_id = self._id("virtualMachines", name)
        vm = {
            "id": vm_id, "name": name, "type": "Microsoft.Compute/virtualMachines", "location": location,
            "tags": body.get("tags") or {}, **({"zones": zones} if zones else {}),
            **({"identity": body["identity"]} if "identity" in body else {}),
            "properties": {
                **props, "storageProfile": {**props["storageProfile"], "osDisk": os_disk},
                "provisioningState": "Creating", "vmId": str(uuid.uuid4()), "timeCreated": self.now().isoformat(),
            },
            "_power": "running",
        }  # fmt: skip
        self.vms[name] = vm
        self.created.append((name, dict(vm["tags"]), fault is not None))
        self.disks[os_disk["name"]] = {"id": self._id("disks", os_disk["name"]), "name": os_disk["name"],
                                       "location": location, "managedBy": vm_id}  # fmt: skip
        headers = self._start_op(location, "vm.create", name, self.op_steps, fault.error if fault else None)
        return Reply(201, self._vm_view(vm, instance_view=False), headers)

    def _invalid_vm(self, location: str, size: Any, zone: str | None, props: dict[str, Any]) -> Reply | None:
        def bad(code: str, message: str, status: int = 400) -> Reply:
            return Reply(status, {"error": _error(code, message)})

        sku = self.skus.get(str(size))
        if sku is None or location not in sku["where"]:
            return bad(
                "InvalidParameter", f"The value {size} provided for the VM size is not valid in {location}."
            )
        if zone is not None and zone not in sku["where"][location]:
            return bad("SkuNotAvailable", f"The requested size {size} is not available in zone {zone}.", 409)
        image = (props.get("storageProfile") or {}).get("imageReference")
        if not image:
            return bad("InvalidParameter", "storageProfile.imageReference is required")
        os_profile = props.get("osProfile") or {}
        keys = ((os_profile.get("linuxConfiguration") or {}).get("ssh") or {}).get("publicKeys")
        if not os_profile.get("adminUsername") or not (keys or os_profile.get("adminPassword")):
            return bad("InvalidParameter", "osProfile needs adminUsername and an SSH key or a password")
        refs = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if not refs or any(r.get("id", "").rsplit("/", 1)[-1] not in self.nics for r in refs):
            return bad("InvalidResourceReference", f"network interface {refs} not found")
        if props.get("priority") == "Spot" and props.get("evictionPolicy") not in ("Delete", "Deallocate"):
            return bad("InvalidParameter", "a spot VM needs evictionPolicy Delete or Deallocate")
        return None

    def _vm_get(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        self._advance({groups["name"]})
        vm = self.vms.get(groups["name"])
        if vm is None:
            return Reply(404, {"error": _error("ResourceNotFound", f"virtual machine {groups['name']} not found")})
        return Reply(200, self._vm_view(vm, instance_view=query.get("$expand") == "instanceView"))

    def _vm_delete(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        vm = self.vms.get(groups["name"])
        if vm is None:
            return Reply(204)
        vm["properties"]["provisioningState"] = "Deleting"
        return Reply(202, None, self._start_op(vm["location"], "vm.delete", groups["name"], 0))

    def _vms_list(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        if not query.get("$skiptoken"):
            self._advance()
        items = [self._vm_view(vm, instance_view=False) for _, vm in sorted(self.vms.items())]
        return Reply(200, self._page(items, query, self._id("virtualMachines", "").rstrip("/")))

    def _vms_all_list(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        if query.get("statusOnly", "").lower() != "true":
            return self._vms_list(groups, query, _)
        self._advance()
        value = [
            {"id": vm["id"], "name": name, "location": vm["location"],
             "properties": {"instanceView": {"statuses": _statuses(vm)}}}
            for name, vm in sorted(self.vms.items())
        ]  # fmt: skip
        return Reply(200, {"value": value})

    # ---- network interfaces and disks ----
    def _nic_put(self, groups: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        name = groups["name"]
        location = str(body.get("location", "")).lower()
        if name in self.nics:
            return Reply(200, self.nics[name])
        configs = (body.get("properties") or {}).get("ipConfigurations") or []
        subnet = ((configs[0].get("properties") or {}).get("subnet") or {}).get("id", "") if configs else ""
        if "/subnets/" not in subnet:
            return Reply(400, {"error": _error("InvalidResourceReference", f"subnet {subnet!r} not found")})
        fault = self._take_fault("nic.put", {})
        if fault is not None:
            return Reply(fault.status, {"error": fault.error})
        self._ips += 1
        ip = {**configs[0], "properties": {**configs[0]["properties"], "privateIPAddress":
                                           f"10.0.{self._ips // 250}.{self._ips % 250 + 4}"}}  # fmt: skip
        nic = {"id": self._id("nic", name), "name": name, "location": location, "tags": body.get("tags") or {},
               "properties": {**body["properties"], "ipConfigurations": [ip], "provisioningState": "Succeeded"}}  # fmt: skip
        self.nics[name] = nic
        return Reply(201, nic, self._start_op(location, "nic.create", name, 0))

    def _nic_get(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        nic = self.nics.get(groups["name"])
        if nic is None:
            return Reply(404, {"error": _error("NotFound", f"network interface {groups['name']} not found")})
        return Reply(200, nic)

    def _nic_delete(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        nic = self.nics.get(groups["name"])
        if nic is None:
            return Reply(204)
        for vm in self.vms.values():
            if any(
                r["id"].lower() == nic["id"].lower()
                for r in vm["properties"]["networkProfile"]["networkInterfaces"]
            ):
                return Reply(400, {"error": _error("NicInUse", f"{groups['name']} is attached to {vm['name']}")})
        del self.nics[groups["name"]]
        return Reply(202, None, self._start_op(nic["location"], "nic.delete", groups["name"], 0))

    def _nics_list(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        return Reply(200, {"value": [nic for _, nic in sorted(self.nics.items())]})

    def _disk_get(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        disk = self.disks.get(groups["name"])
        if disk is None:
            return Reply(404, {"error": _error("ResourceNotFound", f"disk {groups['name']} not found")})
        return Reply(200, disk)

    def _disk_delete(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        disk = self.disks.get(groups["name"])
        if disk is None:
            return Reply(204)
        if disk.get("managedBy") and disk["managedBy"].rsplit("/", 1)[-1] in self.vms:
            return Reply(409, {"error": _error("OperationNotAllowed", f"disk {groups['name']} is attached")})
        del self.disks[groups["name"]]
        return Reply(202, None, self._start_op(disk["location"], "disk.delete", groups["name"], 0))

    # ---- operations ----
    def _op_get(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        op = self._ops.get(groups["id"])
        if op is None:
            return Reply(404, {"error": _error("NotFound", f"operation {groups['id']}")})
        self._step(op)
        if not op.done:
            return Reply(200, {"name": groups["id"], "status": "InProgress"})
        if op.error is not None:
            return Reply(200, {"name": groups["id"], "status": "Failed", "error": op.error})
        return Reply(200, {"name": groups["id"], "status": "Succeeded"})

    def _op_result_get(self, groups: dict[str, str], query: dict[str, str], _: Any) -> Reply:
        op = self._ops.get(groups["id"])
        if op is None:
            return Reply(404, {"error": _error("NotFound", f"operation {groups['id']}")})
        self._step(op)
        return Reply(204) if op.done else Reply(202)


_OPS = {
    ("skus", "GET"): "skus.list", ("vms_all", "GET"): "vms_all.list", ("vms", "GET"): "vms.list",
    ("vm", "PUT"): "vm.put", ("vm", "GET"): "vm.get", ("vm", "DELETE"): "vm.delete",
    ("nics", "GET"): "nics.list", ("nic", "PUT"): "nic.put", ("nic", "GET"): "nic.get",
    ("nic", "DELETE"): "nic.delete", ("disk", "GET"): "disk.get", ("disk", "DELETE"): "disk.delete",
    ("op", "GET"): "op.get", ("op_result", "GET"): "op_result.get",
}  # fmt: skip


def _statuses(vm: dict[str, Any]) -> list[dict[str, str]]:
    state = vm["properties"]["provisioningState"]
    if state == "Failed":
        failure = vm.get("_failure") or {}
        inner = (failure.get("details") or [failure])[0]
        code = inner.get("code", "InternalError")
        return [{"code": f"ProvisioningState/failed/{code}", "level": "Error", "displayStatus": "Provisioning failed",
                 "message": inner.get("message", "")}]  # fmt: skip
    statuses = [{"code": f"ProvisioningState/{state.lower()}", "level": "Info"}]
    if state == "Succeeded":
        statuses.append({"code": f"PowerState/{vm['_power']}", "level": "Info"})
    return statuses


_SHARED: list[FakeARM] = []
_SHARED_LOCK = threading.Lock()


def shared_fake(pytest_config: pytest.Config | None = None) -> FakeARM:
    """The one fake of this test session, started on first use and stopped when the session ends."""
    with _SHARED_LOCK:
        if not _SHARED:
            fake = FakeARM().start()
            _SHARED.append(fake)
            if pytest_config is not None:
                pytest_config.add_cleanup(fake.stop)
        return _SHARED[0]


def fresh_fake(pytest_config: pytest.Config | None = None) -> FakeARM:
    """The session's fake, emptied: what a test starts from."""
    fake = shared_fake(pytest_config)
    fake.reset()
    return fake


@pytest.fixture
def fake_arm(request: pytest.FixtureRequest) -> FakeARM:
    """The session's fake Resource Manager, emptied for this test (for tests/conftest.py to offer everywhere)."""
    return fresh_fake(request.config)
