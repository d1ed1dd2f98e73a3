"""The Azure provider's pure half: the JSON it sends to Resource Manager and the reading of the JSON it gets back.

Request builders: the VM name of a launch (`vm_name`), the network interface and VM PUT bodies of a
`LaunchRequest` (`nic_body`, `vm_body`, with the `launch_templates.azure` checks and the `extra` keys described in
providers/azure.py), image references, subnet and NIC ids. Response readers: a VM's REST JSON as a
`CloudInstance` (`instance_of`: provisioning and power state, spot eviction), a failed VM's error code, a NIC's
private address, a resource SKU's GPUs, zones and restrictions (`sku_info`).

Kept apart from providers/azure.py (the `AzureProvider` class: SDK clients, calls, polling, caches, locks) because
none of this does I/O or touches an SDK: it works on plain JSON with the REST names (`as_json` turns an SDK model
into that), so it can be read, and changed, without the clients in view.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from autoscaler.errors import ConfigError
from autoscaler.model import CloudInstance, CloudState, LaunchRequest, Market, OfferingKey

CLOUD = "azure"
NAME_PREFIX = "gpua-"
EXTRA_KEYS = frozenset(
    {"subnets", "admin_username", "ssh_public_key", "os_disk_gb", "os_disk_type", "eviction_policy",
     "spot_max_price", "accelerated_networking", "network_security_group_id", "managed_identity_id"}
)  # fmt: skip


def vm_name(daemon_id: str, token: str) -> str:
    """The VM name of a launch: deterministic (a retried PUT is the same VM), 25 characters, a valid Linux VM and
    computer name. The daemon id is hashed in too, so two daemons sharing a resource group never collide."""
    return NAME_PREFIX + hashlib.sha256(f"{daemon_id}/{token}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class SkuInfo:
    gpus: int
    zones: frozenset[str]  # zones the size is offered in, minus zones restricted for this subscription
    available: bool  # False: restricted in the whole location for this subscription


# ---------------------------------------------------------------------------------------------- request builders


def subnet_of(req: LaunchRequest) -> str:
    for entry in _strings(req.template.extra.get("subnets")):
        location, sep, subnet = entry.partition("=")
        if sep and location.strip() == req.offering.region:
            return subnet.strip()
    if not req.template.network:
        raise ConfigError(
            f"pool {req.pool}: launch_templates.azure.network (a subnet resource id) is not set "
            f"for {req.offering.region}"
        )
    return req.template.network


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def nic_id(subscription: str, rg: str, name: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces/{name}-nic"


def nic_body(req: LaunchRequest, subnet: str) -> dict[str, Any]:
    extra = req.template.extra
    ip = {"subnet": {"id": subnet}, "privateIPAllocationMethod": "Dynamic", "primary": True}
    props: dict[str, Any] = {
        "ipConfigurations": [{"name": "ipconfig1", "properties": ip}],
        "enableAcceleratedNetworking": bool(extra.get("accelerated_networking", False)),
    }
    if nsg := extra.get("network_security_group_id"):
        props["networkSecurityGroup"] = {"id": str(nsg)}
    return {"location": req.offering.region, "tags": {**req.template.tags, **req.tags}, "properties": props}


def image_reference(image: str) -> dict[str, str]:
    if image.startswith("/CommunityGalleries/"):
        return {"communityGalleryImageId": image}
    if image.startswith("/SharedGalleries/"):
        return {"sharedGalleryImageId": image}
    if image.startswith("/"):
        return {"id": image}
    parts = image.split(":")
    if len(parts) != 4 or not all(parts):
        raise ConfigError(f"image {image!r} is neither a URN publisher:offer:sku:version nor a resource id")
    return dict(zip(("publisher", "offer", "sku", "version"), parts, strict=True))


def vm_body(req: LaunchRequest, name: str, nic: str, subscription: str, rg: str) -> dict[str, Any]:
    """The VM's PUT body. Raises ConfigError for a template Azure would refuse (or that names unknown keys)."""
    template, key = req.template, req.offering
    extra = dict(template.extra)
    if unknown := sorted(set(extra) - EXTRA_KEYS):
        raise ConfigError(f"pool {req.pool}: unknown launch_templates.azure.extra keys {unknown}")
    if not template.image:
        raise ConfigError(f"pool {req.pool}: launch_templates.azure.image is not set")
    subnet_of(req)
    admin = str(extra.get("admin_username") or "azureuser")
    ssh_key = str(extra.get("ssh_public_key") or "")
    if not ssh_key:
        raise ConfigError(f"pool {req.pool}: launch_templates.azure.extra.ssh_public_key is not set")
    os_disk: dict[str, Any] = {
        "name": f"{name}-osdisk",
        "createOption": "FromImage",
        "deleteOption": "Delete",
        "managedDisk": {"storageAccountType": str(extra.get("os_disk_type") or "StandardSSD_LRS")},
    }
    if disk_gb := extra.get("os_disk_gb") or template.disk_gb:
        os_disk["diskSizeGB"] = int(disk_gb)
    os_profile: dict[str, Any] = {
        "computerName": name,
        "adminUsername": admin,
        "linuxConfiguration": {
            "disablePasswordAuthentication": True,
            "ssh": {"publicKeys": [{"path": f"/home/{admin}/.ssh/authorized_keys", "keyData": ssh_key}]},
        },
    }
    if template.user_data:
        os_profile["customData"] = base64.b64encode(template.user_data.encode()).decode()
    props: dict[str, Any] = {
        "hardwareProfile": {"vmSize": key.instance_type},
        "storageProfile": {"imageReference": image_reference(template.image), "osDisk": os_disk},
        "osProfile": os_profile,
        "networkProfile": {
            "networkInterfaces": [
                {
                    "id": nic or nic_id(subscription, rg, name),
                    "properties": {"primary": True, "deleteOption": "Delete"},
                }
            ]
        },
    }
    if key.market == Market.SPOT:
        policy = str(extra.get("eviction_policy") or "Delete")
        if policy not in ("Delete", "Deallocate"):
            raise ConfigError(f"pool {req.pool}: eviction_policy must be Delete or Deallocate, not {policy!r}")
        try:
            max_price = float(extra.get("spot_max_price", -1))
        except (TypeError, ValueError):
            raise ConfigError(f"pool {req.pool}: spot_max_price must be a number") from None
        props.update(priority="Spot", evictionPolicy=policy, billingProfile={"maxPrice": max_price})
    body: dict[str, Any] = {"location": key.region, "tags": {**template.tags, **req.tags}, "properties": props}
    if key.zone != key.region:
        body["zones"] = [key.zone]
    if identity := extra.get("managed_identity_id"):
        body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {str(identity): {}}}
    return body


# ---------------------------------------------------------------------------------------------- response readers


def as_json(model: Any) -> dict[str, Any]:
    """An SDK model (a MutableMapping over the REST JSON) as plain JSON with the REST names."""
    if hasattr(model, "as_dict"):
        return dict(model.as_dict())
    return dict(model)


def props_of(vm: Mapping[str, Any]) -> Mapping[str, Any]:
    props = vm.get("properties")
    return props if isinstance(props, Mapping) else {}


def _statuses(vm: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((props_of(vm).get("instanceView") or {}).get("statuses") or [])


def power_of(vm: Mapping[str, Any]) -> str:
    codes = [str(s.get("code", "")) for s in _statuses(vm)]
    return next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), "")


def failure_of(vm: Mapping[str, Any]) -> tuple[str, str]:
    """(code, message) of a failed VM's instance view: "ProvisioningState/failed/ZonalAllocationFailed"."""
    for status in _statuses(vm):
        parts = str(status.get("code", "")).split("/")
        if len(parts) == 3 and parts[0] == "ProvisioningState" and parts[1].lower() == "failed":
            return parts[2], str(status.get("message") or status.get("displayStatus") or "")
    return "", ""


def _state(provisioning: str, power: str, spot: bool) -> tuple[CloudState, str]:
    if provisioning == "Deleting":
        return CloudState.TERMINATED, "deleting"
    if provisioning in ("Failed", "Canceled"):
        return CloudState.TERMINATED, f"provisioning {provisioning.lower()}"
    if power in ("deallocated", "deallocating", "stopped", "stopping"):
        if spot:
            return CloudState.TERMINATED, f"spot VM evicted: PowerState/{power} (preempted)"
        return CloudState.STOPPING, f"PowerState/{power}"
    if provisioning == "Creating":
        return CloudState.PENDING, ""
    if provisioning in ("Succeeded", "Updating", "Migrating"):
        return CloudState.RUNNING, ""
    return CloudState.PENDING, provisioning


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def sku_info(sku: Mapping[str, Any], location: str) -> SkuInfo:
    gpus = 0
    for cap in sku.get("capabilities") or []:
        if cap.get("name") == "GPUs":
            try:
                gpus = int(float(cap.get("value") or 0))
            except ValueError:
                gpus = 0
    zones: set[str] = set()
    for info in sku.get("locationInfo") or []:
        if str(info.get("location", "")).lower() == location.lower():
            zones |= {str(z) for z in info.get("zones") or []}
    available = True
    for restriction in sku.get("restrictions") or []:
        where = restriction.get("restrictionInfo") or {}
        if restriction.get("type") == "Location":
            places = [str(x).lower() for x in where.get("locations") or restriction.get("values") or []]
            available = available and location.lower() not in places
        elif restriction.get("type") == "Zone":
            zones -= {str(z) for z in where.get("zones") or []}
    return SkuInfo(gpus, frozenset(zones), available)


def nic_address(nic: Mapping[str, Any]) -> str | None:
    for ip in props_of(nic).get("ipConfigurations") or []:
        if address := (ip.get("properties") or {}).get("privateIPAddress"):
            return str(address)
    return None


def instance_of(vm: Mapping[str, Any], now: datetime, power: str, address: str | None) -> CloudInstance:
    """A VM's REST JSON as the core sees it. `power`: its PowerState code from a status listing ("" to read the
    instance view, if the JSON has one); `address`: its private IP, if known; `now`: launched_at when Azure gives
    no creation time."""
    props = props_of(vm)
    name = str(vm.get("name", ""))
    location = str(vm.get("location", "")).replace(" ", "").lower()
    zones = vm.get("zones") or []
    spot = props.get("priority") == "Spot"
    size = str((props.get("hardwareProfile") or {}).get("vmSize", ""))
    state, reason = _state(str(props.get("provisioningState") or ""), power or power_of(vm), spot)
    created = _parse_time(props.get("timeCreated"))
    return CloudInstance(
        cloud_id=name,
        offering=OfferingKey(
            CLOUD,
            location,
            str(zones[0]) if zones else location,
            size,
            Market.SPOT if spot else Market.ON_DEMAND,
        ),
        state=state,
        launched_at=created or now,
        tags=dict(vm.get("tags") or {}),
        state_reason=reason,
        address=address,
    )
