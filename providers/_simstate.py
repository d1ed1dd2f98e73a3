"""The simulated cloud's instance table and its JSON file, so `gpu-autoscaler run` keeps its fake cloud (and the
daemon finds its instances again) across restarts. Only what the cloud itself would remember is saved: the
instances and their tokens. Capacity rules and faults come from the policy on every start.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from autoscaler.errors import ConfigError, TransientError
from autoscaler.model import Market, OfferingKey

VERSION = 1


@dataclass
class SimInstance:
    cloud_id: str
    key: OfferingKey
    tags: dict[str, str]
    token: str
    launched_at: datetime
    terminate_requested_at: datetime | None = None
    preempted_at: datetime | None = None  # an explicit preempt(); timed spot reclaims are computed


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError(f"time {value!r} has no timezone")
    return parsed


def _encode(inst: SimInstance) -> dict[str, Any]:
    return {
        "cloud_id": inst.cloud_id,
        "cloud": inst.key.cloud,
        "region": inst.key.region,
        "zone": inst.key.zone,
        "instance_type": inst.key.instance_type,
        "market": str(inst.key.market),
        "tags": inst.tags,
        "token": inst.token,
        "launched_at": _time(inst.launched_at),
        "terminate_requested_at": _time(inst.terminate_requested_at),
        "preempted_at": _time(inst.preempted_at),
    }


def _decode(row: dict[str, Any]) -> SimInstance:
    launched_at = _parse_time(row["launched_at"])
    if launched_at is None:
        raise ValueError(f"instance {row.get('cloud_id')!r} has no launch time")
    return SimInstance(
        cloud_id=str(row["cloud_id"]),
        key=OfferingKey(
            str(row["cloud"]),
            str(row["region"]),
            str(row["zone"]),
            str(row["instance_type"]),
            Market(row["market"]),
        ),
        tags={str(k): str(v) for k, v in dict(row["tags"]).items()},
        token=str(row["token"]),
        launched_at=launched_at,
        terminate_requested_at=_parse_time(row.get("terminate_requested_at")),
        preempted_at=_parse_time(row.get("preempted_at")),
    )


def load(path: Path) -> tuple[int, list[SimInstance]] | None:
    """(next id, instances), or None when there is no file yet. A file we cannot read is a ConfigError: silently
    starting an empty cloud would make the daemon forget (and relaunch) every instance it had."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the simulated cloud's state file {path}: {exc}") from exc
    try:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported version {data.get('version')!r}")
        return int(data["next_id"]), [_decode(row) for row in data["instances"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the simulated cloud's state file {path} is damaged: {exc}") from exc


def save(path: Path, next_id: int, instances: list[SimInstance]) -> None:
    """Write atomically (temp file + rename) so a crash mid-write never leaves half a file."""
    data = {"version": VERSION, "next_id": next_id, "instances": [_encode(i) for i in instances]}
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        # A provider raises only ProviderErrors; the change is still in memory, so a retry sees it.
        raise TransientError(f"cannot write the simulated cloud's state file {path}: {exc}") from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
