"""The AWS provider: EC2 through boto3, one client pair per configured region.

- offerings: where each candidate type is offered (`describe_instance_type_offerings`, paginated), its GPUs
  (`describe_instance_types`), on-demand prices from the shipped catalog (overlaid by `prices refresh`), spot
  prices from `describe_spot_price_history`. Type placement is cached for an hour; spot prices are read on every
  call (the daemon asks every 10 minutes).
- launch: `run_instances` with ClientToken = the intent's token, so a retry or a restart gets the same instance.
- list: one paginated `describe_instances` per region, filtered by our daemon tag.
- terminate: batched `terminate_instances` per region; an instance already gone is success.

Every botocore error is translated by `_aws_errors` at this boundary. Launches use a client that never retries
(a stockout answered with HTTP 500 must not be retried blindly: the daemon falls back to the next offering and
the next tick is the retry); reads use botocore's standard retry mode with `max_attempts` attempts in all.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import boto3
import botocore.credentials
import botocore.exceptions
import botocore.parsers
import botocore.session
from botocore.config import Config

from autoscaler import config
from autoscaler.errors import ConfigError, NotFound
from autoscaler.interfaces import Clock
from autoscaler.model import (
    TAG_DAEMON,
    CloudInstance,
    CloudState,
    LaunchRequest,
    Market,
    Offering,
    OfferingKey,
)
from providers import BuildContext
from providers._aws_errors import from_exception
from providers.aws_catalog import AwsCatalog

CLOUD = "aws"
# What a botocore call may raise. ResponseParserError is no BotoCoreError: a garbled or cut-off answer (a proxy,
# a dropped connection) raises it, and it must be translated too (TransientError), not escape the provider.
_SDK_ERRORS = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    botocore.parsers.ResponseParserError,
)
PLACEMENT_TTL = timedelta(hours=1)
TERMINATE_BATCH = 500  # EC2 accepts up to 1,000 ids per call; stay well inside
_STATES = {
    "pending": CloudState.PENDING,
    "running": CloudState.RUNNING,
    "shutting-down": CloudState.STOPPING,
    "stopping": CloudState.STOPPING,
    "stopped": CloudState.STOPPING,
    "terminated": CloudState.TERMINATED,
}


class AwsProvider:
    name = CLOUD

    def __init__(
        self,
        cfg: config.AwsCloud,
        clock: Clock,
        daemon_id: str,
        instance_types: frozenset[str],
        catalog: AwsCatalog,
        *,
        session: boto3.session.Session | None = None,
    ) -> None:
        if not cfg.regions:
            raise ConfigError("clouds.aws.regions is empty: name at least one region")
        self.cfg = cfg
        self.clock = clock
        self.daemon_id = daemon_id
        self.instance_types = sorted(instance_types)
        self.catalog = catalog
        self._session = session or aws_session(cfg)
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Any] = {}
        self._placement: dict[
            str, tuple[datetime, list[tuple[str, str, int]]]
        ] = {}  # region -> (at, [(type, zone, gpus)])
        self._region_of: dict[str, str] = {}  # instance id -> region, learnt from launches and listings
        self._subnet_zone: dict[tuple[str, str], str] = {}  # (region, subnet id) -> zone

    # ------------------------------------------------------------------ Provider

    def offerings(self) -> Sequence[Offering]:
        now = self.clock.now()
        out: list[Offering] = []
        for region, zones in sorted(self.cfg.regions.items()):
            placed = self._placements(region, now)
            wanted = [(t, z, g) for t, z, g in placed if not zones or z in zones]
            spot = self._spot_prices(region, sorted({t for t, _, _ in wanted}))
            for itype, zone, gpus in wanted:
                on_demand = self.catalog.price(itype, region)
                if on_demand is not None:
                    observed = datetime.combine(on_demand.as_of, datetime.min.time(), tzinfo=now.tzinfo)
                    key = OfferingKey(CLOUD, region, zone, itype, Market.ON_DEMAND)
                    out.append(Offering(key, on_demand.usd_per_hour, gpus, observed, on_demand.source))
                if (itype, zone) in spot:
                    price, at = spot[(itype, zone)]
                    key = OfferingKey(CLOUD, region, zone, itype, Market.SPOT)
                    out.append(Offering(key, price, gpus, at, "aws-spot-price-history"))
        return out

    def list_instances(self) -> Sequence[CloudInstance]:
        out: list[CloudInstance] = []
        for region in sorted(self.cfg.regions):
            for reservation in self._paginate(region, "describe_instances", "Reservations", Filters=[
                {"Name": f"tag:{TAG_DAEMON}", "Values": [self.daemon_id]},
            ]):  # fmt: skip
                for raw in reservation.get("Instances", []):
                    inst = _instance(raw, region, self.clock.now())
                    if inst is not None:
                        self._region_of[inst.cloud_id] = region
                        out.append(inst)
        return out

    def launch(self, req: LaunchRequest) -> CloudInstance:
        region = req.offering.region
        if region not in self.cfg.regions:
            raise ConfigError(f"region {region} is not configured under clouds.aws.regions")
        params = self._run_params(req)
        response = self._call(region, "run_instances", launch=True, **params)
        instances = response.get("Instances") or []
        if not instances:
            raise ConfigError(f"run_instances answered no instance for {req.offering}")
        inst = _instance(instances[0], region, self.clock.now())
        if inst is None:
            raise ConfigError(f"run_instances answered an instance without an id for {req.offering}")
        self._region_of[inst.cloud_id] = region
        return inst

    def terminate(self, cloud_ids: Sequence[str]) -> None:
        by_region: dict[str, list[str]] = defaultdict(list)
        for cid in cloud_ids:
            region = self._region_of.get(cid)
            for r in [region] if region else sorted(self.cfg.regions):
                by_region[r].append(cid)
        for region, ids in by_region.items():
            for start in range(0, len(ids), TERMINATE_BATCH):
                self._terminate_batch(region, ids[start : start + TERMINATE_BATCH])

    # ------------------------------------------------------------------ pieces

    def _terminate_batch(self, region: str, ids: list[str]) -> None:
        try:
            self._call(region, "terminate_instances", InstanceIds=ids)
        except NotFound:
            # One unknown id fails the whole batch: ask again one by one, and let "already gone" be success.
            if len(ids) == 1:
                return
            for cid in ids:
                self._terminate_batch(region, [cid])

    def _run_params(self, req: LaunchRequest) -> dict[str, Any]:
        key, template = req.offering, req.template
        extra = dict(template.extra)
        if not template.image:
            raise ConfigError(f"pool {req.pool}: launch_templates.aws.image (an AMI id) is not set")
        tags = [{"Key": k, "Value": v} for k, v in sorted({**template.tags, **req.tags}.items())]
        params: dict[str, Any] = {
            "ImageId": template.image,
            "InstanceType": key.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": req.token,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        subnet = self._subnet_for(key.region, key.zone, _strings(extra.get("subnet_ids")))
        if subnet:
            params["SubnetId"] = subnet
        else:
            params["Placement"] = {"AvailabilityZone": key.zone}
        if groups := _strings(extra.get("security_group_ids")):
            params["SecurityGroupIds"] = groups
        if profile := extra.get("iam_instance_profile"):
            text = str(profile)
            params["IamInstanceProfile"] = {"Arn": text} if text.startswith("arn:") else {"Name": text}
        if key_name := extra.get("key_name"):
            params["KeyName"] = str(key_name)
        if template.user_data:
            params["UserData"] = template.user_data
        if template.disk_gb:
            params["BlockDeviceMappings"] = [
                {
                    "DeviceName": str(extra.get("root_device_name", "/dev/sda1")),
                    "Ebs": {
                        "VolumeSize": template.disk_gb,
                        "VolumeType": str(extra.get("volume_type", "gp3")),
                        "DeleteOnTermination": True,
                    },
                }
            ]
        if key.market == Market.SPOT:
            spot: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if "spot_max_price" in extra:
                spot["MaxPrice"] = str(extra["spot_max_price"])
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        return params

    def _subnet_for(self, region: str, zone: str, subnets: list[str]) -> str | None:
        """The configured subnet that lies in `zone` (their zones are looked up once); None if none is set."""
        if not subnets:
            return None
        unknown = [s for s in subnets if (region, s) not in self._subnet_zone]
        if unknown:
            for subnet in self._paginate(region, "describe_subnets", "Subnets", SubnetIds=unknown):
                self._subnet_zone[(region, subnet["SubnetId"])] = subnet["AvailabilityZone"]
        for s in subnets:
            if self._subnet_zone.get((region, s)) == zone:
                return s
        raise ConfigError(
            f"none of the subnets {subnets} is in {zone}: add one, or drop the zone from the candidate"
        )

    def _placements(self, region: str, now: datetime) -> list[tuple[str, str, int]]:
        cached = self._placement.get(region)
        if cached is not None and now - cached[0] < PLACEMENT_TTL:
            return cached[1]
        if not self.instance_types:
            return []
        offered = [
            (o["InstanceType"], o["Location"])
            for o in self._paginate(
                region,
                "describe_instance_type_offerings",
                "InstanceTypeOfferings",
                LocationType="availability-zone",
                Filters=[{"Name": "instance-type", "Values": self.instance_types}],
            )
        ]
        gpus: dict[str, int] = {}
        for info in self._paginate(
            region, "describe_instance_types", "InstanceTypes", InstanceTypes=sorted({t for t, _ in offered})
        ) if offered else []:  # fmt: skip
            gpus[info["InstanceType"]] = sum(g.get("Count", 0) for g in info.get("GpuInfo", {}).get("Gpus", []))
        placed = sorted((t, z, gpus.get(t, 0)) for t, z in offered)
        self._placement[region] = (now, placed)
        return placed

    def _spot_prices(self, region: str, types: list[str]) -> dict[tuple[str, str], tuple[float, datetime]]:
        if not types:
            return {}
        latest: dict[tuple[str, str], tuple[float, datetime]] = {}
        for row in self._paginate(
            region,
            "describe_spot_price_history",
            "SpotPriceHistory",
            InstanceTypes=types,
            ProductDescriptions=["Linux/UNIX"],
            StartTime=self.clock.now(),
        ):
            key = (row["InstanceType"], row["AvailabilityZone"])
            at: datetime = row["Timestamp"]
            if key not in latest or at > latest[key][1]:
                latest[key] = (float(row["SpotPrice"]), at)
        return latest

    def _paginate(self, region: str, operation: str, result_key: str, **params: Any) -> Iterator[dict[str, Any]]:
        client = self._client(region, launch=False)
        try:
            for page in client.get_paginator(operation).paginate(**params):
                yield from page.get(result_key, [])
        except _SDK_ERRORS as exc:
            raise from_exception(exc) from None

    def _call(self, region: str, operation: str, *, launch: bool = False, **params: Any) -> dict[str, Any]:
        client = self._client(region, launch=launch)
        try:
            result: dict[str, Any] = getattr(client, operation)(**params)
            return result
        except _SDK_ERRORS as exc:
            raise from_exception(exc) from None

    def _client(self, region: str, *, launch: bool) -> Any:
        with self._lock:
            client = self._clients.get((region, "launch" if launch else "read"))
            if client is None:
                attempts = 1 if launch else self.cfg.max_attempts
                client = self._session.client(
                    "ec2",
                    region_name=region,
                    endpoint_url=self.cfg.endpoint_url,
                    config=Config(
                        retries={"total_max_attempts": attempts, "mode": "standard"},
                        connect_timeout=self.cfg.connect_timeout_seconds,
                        read_timeout=self.cfg.read_timeout_seconds,
                    ),
                )
                self._clients[(region, "launch" if launch else "read")] = client
            return client


def _instance(raw: dict[str, Any], region: str, now: datetime) -> CloudInstance | None:
    cloud_id = raw.get("InstanceId")
    if not cloud_id:
        return None
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", []) if "Key" in t}
    market = Market.SPOT if raw.get("InstanceLifecycle") == "spot" else Market.ON_DEMAND
    zone = (raw.get("Placement") or {}).get("AvailabilityZone", "")
    state = _STATES.get((raw.get("State") or {}).get("Name", ""), CloudState.PENDING)
    reason = raw.get("StateReason") or {}
    reason_text = ": ".join(x for x in (reason.get("Code", ""), reason.get("Message", "")) if x)
    if reason_text.startswith("Server.SpotInstanceTermination:") and "preempt" not in reason_text.lower():
        reason_text += " (preempted)"
    launched = raw.get("LaunchTime")
    return CloudInstance(
        cloud_id=cloud_id,
        offering=OfferingKey(CLOUD, region, zone, raw.get("InstanceType", ""), market),
        state=state,
        launched_at=launched if isinstance(launched, datetime) else now,
        tags=tags,
        state_reason=reason_text,
        address=raw.get("PrivateIpAddress"),
    )


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [s.strip() for s in str(value).split(",") if s.strip()]


def aws_session(cfg: config.AwsCloud) -> boto3.session.Session:
    """Credentials the standard boto3 way (environment, profile, instance role), optionally assuming a role."""
    try:
        base = boto3.session.Session(profile_name=cfg.profile)
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError(str(exc), code="ProfileNotFound") from None
    if not cfg.role_arn:
        return base
    # Credentials that renew themselves before the role session expires (a daemon runs for months).
    # STS in the first configured region: a regional endpoint, and a region botocore will not ask for.
    sts_region = sorted(cfg.regions)[0] if cfg.regions else "us-east-1"
    fetcher = botocore.credentials.AssumeRoleCredentialFetcher(
        client_creator=functools.partial(base.client, region_name=sts_region),
        source_credentials=base.get_credentials(),
        role_arn=cfg.role_arn,
        extra_args={"RoleSessionName": "gpu-autoscaler"},
    )
    creds = botocore.credentials.DeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials
    )
    session = botocore.session.Session(profile=cfg.profile)
    session._credentials = creds  # type: ignore[attr-defined]  # no public setter for refreshable credentials
    return boto3.session.Session(botocore_session=session)


def build(cfg: config.CloudBase, ctx: BuildContext) -> AwsProvider:
    if not isinstance(cfg, config.AwsCloud):
        raise TypeError(f"expected AwsCloud settings, got {type(cfg).__name__}")
    return AwsProvider(cfg, ctx.clock, ctx.daemon_id, ctx.instance_types, AwsCatalog.load(ctx.state_dir))
