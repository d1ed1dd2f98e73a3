"""A fake Compute Engine endpoint for provider tests: a small threaded HTTP server (plain http on 127.0.0.1) that
answers the REST shapes google-cloud-compute's REST transport sends, so the real SDK's serialisation, error
parsing and pagination run (see /work/shared/notes/cloud-sdks.md, GCP section).

It speaks: zones/{z}/instances insert (deduplicated by ?requestId, 409 alreadyExists on a name taken), get,
delete, list (filter `labels.k = "v"`, pageToken); aggregated/instances; zones/{z}/machineTypes and
aggregated/machineTypes (guestCpus, memoryMb, accelerators); aggregated/acceleratorTypes; zones/{z}/operations/
{op} get and wait. Ids are uint64 numeric strings, as the SDK needs; errors use Google's JSON envelope.

Test controls: `inject` (a synchronous HTTP error with a reason), `fail_operation` and `exhaust` (the insert is
accepted and its operation ends DONE with an error such as ZONE_RESOURCE_POOL_EXHAUSTED, httpErrorStatusCode
503, as a real stockout does), `stall_operations` (operations never finish), `lose_next_answer` (the insert is
applied, the client gets a 503), `unreachable` (zones an aggregated list reports UNREACHABLE), `preempt` (a spot VM is stopped, TERMINATED, or deleted), and `calls`, a count
of requests per (method, zone). Operations finish when read (get, wait, or any later request).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

PROJECT = "gpu-test-project"
API = "https://www.googleapis.com/compute/v1"
ZONES = {
    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
    "us-east1": ["us-east1-b", "us-east1-c", "us-east1-d"],
    "europe-west4": ["europe-west4-a", "europe-west4-b", "europe-west4-c"],
}
# name -> (guestCpus, memoryMb, bundled accelerator, count, zones offering it)
MACHINE_TYPES: dict[str, tuple[int, int, str | None, int, list[str]]] = {
    "g2-standard-8": (
        8,
        32768,
        "nvidia-l4",
        1,
        ["us-central1-a", "us-central1-b", "us-east1-b", "europe-west4-a"],
    ),
    "g2-standard-24": (24, 98304, "nvidia-l4", 2, ["us-central1-a", "us-east1-b"]),
    "a2-highgpu-1g": (12, 87040, "nvidia-tesla-a100", 1, ["us-central1-a", "us-central1-b", "europe-west4-a"]),
    "a3-highgpu-8g": (208, 1916928, "nvidia-h100-80gb", 8, ["us-central1-a", "europe-west4-b"]),
    "n1-standard-8": (8, 30720, None, 0, [z for zs in ZONES.values() for z in zs]),
}
# accelerator -> (zones, maximumCardsPerInstance)
ACCELERATOR_TYPES = {
    "nvidia-tesla-t4": (["us-central1-a", "us-central1-b", "us-east1-c", "europe-west4-a"], 4),
    "nvidia-tesla-v100": (["us-central1-a", "europe-west4-a"], 8),
}
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_CLAUSE = re.compile(r'\(?\s*([A-Za-z][\w.-]*)\s*(=|!=|eq|ne)\s*"?([^"()]*?)"?\s*\)?\s*(?:\b(AND|OR)\b|$)')


def _name(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[-1]


def _now() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="milliseconds")


def matches_filter(resource: dict[str, Any], text: str) -> bool:
    """The subset of Compute Engine's list filter the provider uses: `field = "v"` clauses (dotted paths such as
    labels.k), all joined by AND or all by OR, each optionally in parentheses."""
    text = text.strip()
    if not text:
        return True
    results: list[bool] = []
    joins: set[str] = set()
    for path, op, value, join in _CLAUSE.findall(text):
        actual: Any = resource
        for part in path.split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        equal = str(actual) == value if actual is not None else False
        results.append(equal if op in ("=", "eq") else not equal)
        if join:
            joins.add(join)
    if not results:
        raise ValueError(f"unsupported filter {text!r}")
    return any(results) if joins == {"OR"} else all(results)


@dataclass
class _Op:
    body: dict[str, Any]
    zone: str
    instance: str | None  # the instance an insert makes (removed if the operation fails)
    error: tuple[str, str, int] | None = None  # (code, message, httpErrorStatusCode) it ends with
    stalled: bool = False


@dataclass
class _Fault:
    status: int
    reason: str
    message: str
    match: dict[str, str | None]  # zone, machine_type, market: an absent or None value matches anything
    method: str
    remaining: int | None
    at_end: bool = False  # the operation is accepted and ends with this error


@dataclass
class FakeGCE:
    project: str = PROJECT
    page_size: int = 500  # the most items one list page holds (tests lower it to exercise pagination)
    calls: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    log: list[tuple[str, str | None, dict[str, Any], dict[str, str]]] = field(
        default_factory=list
    )  # (method, zone, body, query)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(4_611_686_018_427_387_904)  # uint64 ids above 2**62, as real ones look
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}  # (zone, name) -> Instance JSON
        self._ops: dict[str, _Op] = {}
        self._requests: dict[str, str] = {}  # requestId -> operation name
        self._faults: list[_Fault] = []
        self._lose: list[str] = []
        self._stall = False
        self.unreachable: set[str] = set()  # zones an aggregated list reports with warning UNREACHABLE
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeGCE:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # headers and body leave in one write: no Nagle/delayed-ACK stall of ~40 ms per request

            def log_message(self, *args: Any) -> None:  # one line per request drowns pytest output
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reset(self) -> None:
        with self._lock:
            for state in (
                self.calls,
                self.log,
                self.instances,
                self._ops,
                self._requests,
                self._faults,
                self._lose,
            ):
                state.clear()
            self._stall = False
            self.unreachable.clear()
            self.page_size = 500

    # ------------------------------------------------------------------ test controls
    def inject(self, reason: str, status: int, *, message: str = "", method: str = "instances.insert",
               times: int | None = 1, **match: str | None) -> None:  # fmt: skip
        """The next `times` matching calls (None: every one) answer HTTP `status` with `reason`, changing nothing.
        `match`: zone, machine_type, market ("spot" or "on-demand"); an absent key matches anything."""
        with self._lock:
            self._faults.append(_Fault(status, reason, message or f"Injected {reason}.", match, method, times))

    def fail_operation(self, code: str, *, message: str = "", http_status: int = 503, times: int | None = 1,
                       **match: str | None) -> None:  # fmt: skip
        """The next `times` matching inserts are accepted, then their operation ends DONE with error `code`."""
        text = message or "The zone does not have enough resources available to fulfill the request."
        with self._lock:
            self._faults.append(_Fault(http_status, code, text, match, "instances.insert", times, at_end=True))

    def exhaust(self, machine_type: str, zone: str, market: str | None = None) -> None:
        """Every matching insert ends with ZONE_RESOURCE_POOL_EXHAUSTED (inside the operation) until restore()."""
        message = (f"The zone 'projects/{self.project}/zones/{zone}' does not have enough resources available to "
                   "fulfill the request.  Try a different zone, or try again later.")  # fmt: skip
        match = {"zone": zone, "machine_type": machine_type, "market": market}
        with self._lock:
            self._faults.append(_Fault(503, "ZONE_RESOURCE_POOL_EXHAUSTED", message, match, "instances.insert", None,
                                       at_end=True))  # fmt: skip

    def restore(self) -> None:
        with self._lock:
            self._faults.clear()

    def stall_operations(self, stalled: bool = True) -> None:
        """Operations of inserts stay RUNNING (a wait answers RUNNING) until this is called with False."""
        with self._lock:
            self._stall = stalled
            for op in self._ops.values():
                op.stalled = op.stalled and stalled

    def lose_next_answer(self, method: str = "instances.insert") -> None:
        """The next `method` call takes effect, but the client gets 503 backendError instead of the answer."""
        with self._lock:
            self._lose.append(method)

    def preempt(self, zone: str, name: str, *, delete: bool | None = None) -> None:
        """Take a spot VM back: TERMINATED (instanceTerminationAction STOP) or gone (DELETE); `delete` overrides."""
        with self._lock:
            inst = self.instances[(zone, name)]
            scheduling = inst.get("scheduling", {})
            if scheduling.get("provisioningModel") != "SPOT":
                raise ValueError(f"{name} is not a spot VM: Compute Engine does not preempt it")
            if delete if delete is not None else scheduling.get("instanceTerminationAction") == "DELETE":
                del self.instances[(zone, name)]
            else:
                inst.update(status="TERMINATED", lastStopTimestamp=_now())

    def count(self, method: str, zone: str | None = None) -> int:
        with self._lock:
            return sum(n for (m, z), n in self.calls.items() if m == method and zone in (None, z))

    def inserted(self) -> list[dict[str, Any]]:
        """The body of every insert call, in order (rejected ones included)."""
        with self._lock:
            return [body for method, _, body, _ in self.log if method == "instances.insert"]

    # ------------------------------------------------------------------ HTTP
    def _handle(self, h: BaseHTTPRequestHandler, verb: str) -> None:
        url = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        size = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(size)) if size else {}
        prefix = f"/compute/v1/projects/{self.project}/"
        try:
            if not url.path.startswith(prefix):
                raise _HttpError(404, "notFound", f"The resource '{url.path}' was not found")
            status, answer = self._route(verb, url.path[len(prefix) :].split("/"), query, body)
        except _HttpError as exc:
            status, answer = exc.status, exc.envelope()
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=UTF-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, verb: str, parts: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            self._settle()
            method, zone, run = self._resolve(verb, parts, query, body)
            self.calls[(method, zone)] += 1
            self.log.append((method, zone, body, query))
            fault = self._take_fault(method, zone, body)
            if fault is not None and not fault.at_end:
                raise _HttpError(fault.status, fault.reason, fault.message)
            answer = run(fault)
            if method in self._lose:
                self._lose.remove(method)
                raise _HttpError(503, "backendError", "The service is currently unavailable.")
            return 200, answer

    def _resolve(self, verb: str, parts: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[
            str, str | None, Callable[[_Fault | None], Any]]:  # fmt: skip
        match verb, parts:
            case "POST", ["zones", zone, "instances"]:
                return "instances.insert", zone, lambda end: self._insert(zone, body, query, end)
            case "GET", ["zones", zone, "instances"]:
                return "instances.list", zone, lambda _: self._page(query, self._rows("instances", zone, query))
            case "GET", ["zones", zone, "instances", name]:
                return "instances.get", zone, lambda _: self._get(zone, name)
            case "DELETE", ["zones", zone, "instances", name]:
                return "instances.delete", zone, lambda _: self._delete(zone, name)
            case "GET", ["zones", zone, ("machineTypes" | "acceleratorTypes") as kind]:
                return f"{kind}.list", zone, lambda _: self._page(query, self._rows(kind, zone, query))
            case "GET", ["aggregated", ("instances" | "machineTypes" | "acceleratorTypes") as kind]:
                return f"{kind}.aggregatedList", None, lambda _: self._aggregated(query, kind)
            case "GET", ["zones", zone, "operations", name]:
                return "zoneOperations.get", zone, lambda _: self._operation(zone, name)
            case "POST", ["zones", zone, "operations", name, "wait"]:
                return "zoneOperations.wait", zone, lambda _: self._operation(zone, name)
        raise _HttpError(404, "notFound", f"The resource '{'/'.join(parts)}' was not found")

    def _take_fault(self, method: str, zone: str | None, body: dict[str, Any]) -> _Fault | None:
        scheduling = body.get("scheduling") or {}
        actual = {"zone": zone, "machine_type": _name(body.get("machineType", "")) or None,
                  "market": "spot" if scheduling.get("provisioningModel") == "SPOT" else "on-demand"}  # fmt: skip
        for fault in self._faults:
            if fault.method == method and all(v is None or v == actual[k] for k, v in fault.match.items()):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # ------------------------------------------------------------------ resources
    def _zone_url(self, zone: str) -> str:
        return f"{API}/projects/{self.project}/zones/{zone}"

    def _check_zone(self, zone: str) -> None:
        if not any(zone in zs for zs in ZONES.values()):
            raise _HttpError(400, "invalid", f"Invalid value for field 'zone': '{zone}'. Unknown zone.")

    def _insert(self, zone: str, body: dict[str, Any], query: dict[str, str], end: _Fault | None) -> Any:
        self._check_zone(zone)
        request_id = query.get("requestId")
        if request_id is not None:
            try:
                uuid.UUID(request_id)
            except ValueError:
                raise _HttpError(400, "invalid", f"Invalid value for field 'requestId': '{request_id}'.") from None
            if request_id in self._requests:  # the same request again: the same operation, nothing new
                return self._ops[self._requests[request_id]].body
        name = body.get("name", "")
        if (zone, name) in self.instances:
            where = f"projects/{self.project}/zones/{zone}/instances/{name}"
            raise _HttpError(409, "alreadyExists", f"The resource '{where}' already exists")
        self._validate(zone, body)
        instance = self._instance(zone, body)
        self.instances[(zone, name)] = instance
        op = self._new_op(zone, "insert", instance, name)
        if end is not None:
            op.error = (end.reason, end.message, end.status)
        if request_id is not None:
            self._requests[request_id] = op.body["name"]
        return op.body

    def _validate(self, zone: str, body: dict[str, Any]) -> None:
        machine = _name(body.get("machineType", ""))
        spec = MACHINE_TYPES.get(machine)
        if spec is None or zone not in spec[4]:
            raise _HttpError(400, "invalid", f"Invalid value for field 'resource.machineType': "
                             f"'{body.get('machineType')}'. Machine type with name '{machine}' does not exist in "
                             f"zone '{zone}'.")  # fmt: skip
        for key, value in (body.get("labels") or {}).items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(value)):
                raise _HttpError(400, "invalid", f"Invalid value for field 'resource.labels': '{key}={value}'.")
        disks = body.get("disks") or []
        if not disks or not (disks[0].get("initializeParams") or {}).get("sourceImage"):
            raise _HttpError(400, "invalid", "Invalid value for field 'resource.disks': no boot disk image.")
        for acc in body.get("guestAccelerators") or []:
            zones, most = ACCELERATOR_TYPES.get(_name(acc.get("acceleratorType", "")), ([], 0))
            if zone not in zones or int(acc.get("acceleratorCount", 0)) > most:
                where = "resource.guestAccelerators[0].acceleratorType"
                raise _HttpError(
                    400, "invalid", f"Invalid value for field '{where}': '{acc.get('acceleratorType')}'."
                )
        on_maintenance = (body.get("scheduling") or {}).get("onHostMaintenance", "MIGRATE")
        if (body.get("guestAccelerators") or spec[2]) and on_maintenance != "TERMINATE":
            raise _HttpError(400, "badRequest", "Instances with guest accelerators do not support live migration.")

    def _instance(self, zone: str, body: dict[str, Any]) -> dict[str, Any]:
        machine = _name(body["machineType"])
        _, _, bundled, count, _ = MACHINE_TYPES[machine]
        url = self._zone_url(zone)
        attached = [{"acceleratorType": f"{url}/acceleratorTypes/{bundled}", "acceleratorCount": count}]
        network = f"{API}/projects/{self.project}/global/networks/default"
        return {
            **body, "kind": "compute#instance", "id": str(next(self._ids)), "creationTimestamp": _now(),
            "zone": url, "machineType": f"{url}/machineTypes/{machine}", "status": "PROVISIONING",
            "guestAccelerators": body.get("guestAccelerators") or (attached if bundled else []),
            "networkInterfaces": [{"name": "nic0", "networkIP": f"10.128.{len(self.instances) // 250}."
                                   f"{len(self.instances) % 250 + 2}", "network": network}],
            "selfLink": f"{url}/instances/{body['name']}",
        }  # fmt: skip

    def _get(self, zone: str, name: str) -> dict[str, Any]:
        self._check_zone(zone)
        inst = self.instances.get((zone, name))
        if inst is None:
            where = f"projects/{self.project}/zones/{zone}/instances/{name}"
            raise _HttpError(404, "notFound", f"The resource '{where}' was not found")
        return inst

    def _delete(self, zone: str, name: str) -> Any:
        inst = self._get(zone, name)
        del self.instances[(zone, name)]
        return self._new_op(zone, "delete", inst, None).body

    def _rows(self, kind: str, zone: str | None, query: dict[str, str]) -> list[Any]:
        """The (zone, resource) pairs of one kind, in one zone or all, that pass the request's filter."""
        if zone is not None:
            self._check_zone(zone)
        rows: list[tuple[str, dict[str, Any]]] = []
        if kind == "instances":
            rows = [(z, i) for (z, _), i in sorted(self.instances.items())]
        elif kind == "machineTypes":
            for name, (cpus, memory, acc, count, zones) in sorted(MACHINE_TYPES.items()):
                extra = (
                    {"accelerators": [{"guestAcceleratorType": acc, "guestAcceleratorCount": count}]}
                    if acc
                    else {}
                )
                rows += [(z, {"kind": "compute#machineType", "id": str(1000 + len(rows)), "name": name,
                              "guestCpus": cpus, "memoryMb": memory, "zone": z, **extra}) for z in zones]  # fmt: skip
        else:
            for name, (zones, most) in sorted(ACCELERATOR_TYPES.items()):
                rows += [(z, {"kind": "compute#acceleratorType", "id": str(2000 + len(rows)), "name": name,
                              "zone": self._zone_url(z), "maximumCardsPerInstance": most}) for z in zones]  # fmt: skip
        wanted = [(z, r) for z, r in rows if zone in (None, z) and matches_filter(r, query.get("filter", ""))]
        return wanted if zone is None else [r for _, r in wanted]

    def _page(self, query: dict[str, str], rows: list[Any]) -> dict[str, Any]:
        size = min(int(query.get("maxResults") or 500), self.page_size)
        start = int(query.get("pageToken") or 0)
        answer: dict[str, Any] = {"items": rows[start : start + size]}
        if start + size < len(rows):
            answer["nextPageToken"] = str(start + size)
        return answer

    def _aggregated(self, query: dict[str, str], kind: str) -> dict[str, Any]:
        """`{"items": {"zones/<zone>": {kind: [...]}}}`, paged over the resources (not the zones)."""
        page = self._page(query, self._rows(kind, None, query))
        items: dict[str, Any] = {}
        for zone, row in page["items"]:
            items.setdefault(f"zones/{zone}", {kind: []})[kind].append(row)
        for zone in sorted(self.unreachable):  # as Compute Engine reports a zone it could not read
            message = f"Scope 'zones/{zone}' is unreachable."
            items[f"zones/{zone}"] = {"warning": {"code": "UNREACHABLE", "message": message, "data": []}}
        return {**page, "items": items}

    # ------------------------------------------------------------------ operations
    def _new_op(self, zone: str, kind: str, instance: dict[str, Any], made: str | None) -> _Op:
        name = f"operation-{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}"
        body = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name, "zone": self._zone_url(zone),
            "operationType": kind, "targetLink": instance["selfLink"], "targetId": instance["id"],
            "status": "RUNNING" if kind == "insert" else "DONE", "progress": 0, "insertTime": _now(),
            "selfLink": f"{self._zone_url(zone)}/operations/{name}",
        }  # fmt: skip
        op = _Op(body, zone, made, stalled=self._stall and kind == "insert")
        self._ops[name] = op
        return op

    def _operation(self, zone: str, name: str) -> Any:
        op = self._ops.get(name)
        if op is None or op.zone != zone:
            where = f"projects/{self.project}/zones/{zone}/operations/{name}"
            raise _HttpError(404, "notFound", f"The resource '{where}' was not found")
        if op.stalled:
            time.sleep(0.02)  # a real wait answers RUNNING after its own deadline: do not let a client spin hot
        return op.body

    def _settle(self) -> None:
        """Operations in flight finish (unless stalled): their instance runs, or is removed if they failed."""
        for op in self._ops.values():
            if op.body["status"] == "DONE" or op.stalled:
                continue
            op.body.update(status="DONE", progress=100, endTime=_now())
            if op.error is not None:
                code, message, status = op.error
                op.body["error"] = {"errors": [{"code": code, "message": message}]}
                op.body.update(httpErrorStatusCode=status, httpErrorMessage=HTTPStatus(status).phrase.upper())
                self.instances.pop((op.zone, op.instance or ""), None)
            elif (inst := self.instances.get((op.zone, op.instance or ""))) and inst["status"] == "PROVISIONING":
                inst["status"] = "RUNNING"


class _HttpError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def envelope(self) -> dict[str, Any]:
        error = {"message": self.message, "domain": "global", "reason": self.reason}
        return {"error": {"code": self.status, "message": self.message, "errors": [error]}}


_SERVER: FakeGCE | None = None


def shared_server(config: pytest.Config | None = None) -> FakeGCE:
    """One fake for the whole test session, started on first use (stopped when pytest ends)."""
    global _SERVER
    if _SERVER is None:
        _SERVER = FakeGCE().start()
        if config is not None:
            config.add_cleanup(_stop_shared)
    return _SERVER


def _stop_shared() -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.stop()
        _SERVER = None


@pytest.fixture
def fake_gce(request: pytest.FixtureRequest) -> Iterator[FakeGCE]:
    """The session's fake Compute Engine, emptied for this test. Import it into a test module to use it."""
    fake = shared_server(request.config)
    fake.reset()
    yield fake
    fake.reset()
