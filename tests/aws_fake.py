"""A fake EC2 endpoint for provider tests: moto's real EC2 server over real HTTP, behind a thin WSGI middleware.

boto3 runs its real code path (SigV4 signing, query serialisation, XML parsing, retries, pagination) against
http://127.0.0.1:PORT. moto does the EC2 bookkeeping; the middleware adds what moto lacks and a provider must
cope with (see /work/shared/notes/cloud-sdks.md): ClientToken idempotency, fault injection (capacity errors with
EC2's HTTP 500), the zone offering check (`Unsupported`), realistic spot prices, spot interruption, lost answers,
and per-(action, region) call counts.

moto keeps its state in module globals, so everything here is per *process*: run one FakeEC2 at a time and do not
mix it with `moto.mock_aws` in the same test. Typical use (the fixture is a plain generator; wrap it yourself):

    fake_ec2 = pytest.fixture(scope="session")(fake_ec2_fixture)

    @pytest.fixture
    def ec2(fake_ec2):
        fake_ec2.reset()
        return fake_ec2
"""

from __future__ import annotations

import io
import os
import re
import threading
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.models.instance_types import INSTANCE_TYPE_OFFERINGS, INSTANCE_TYPES
from moto.ec2.models.instances import StateReason
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

# Read each time moto creates an EC2 backend (per region, again after every reset): loading moto's default AMIs
# costs ~0.3 s per region each time. setdefault: an explicit choice in the environment wins. ami() gives an image.
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

# A fixed id (moto does not check the format), so a provider config can name it before the fake starts.
TEST_AMI_ID = "ami-0a1b2c3d4e5f60718"
SPOT_DISCOUNT = 0.35  # spot = 0.35 x on-demand, then a small per-zone spread so zones are distinguishable
# Approximate us-east-1 Linux on-demand $/h; other types fall back to a vCPU + GPU-memory formula.
ON_DEMAND_USD = {
    "p5.48xlarge": 55.04, "p5en.48xlarge": 63.30, "p4d.24xlarge": 21.96, "p4de.24xlarge": 27.45,
    "g6e.xlarge": 1.861, "g6.xlarge": 0.805, "g5.xlarge": 1.006, "g5.2xlarge": 1.212, "g5.12xlarge": 5.672,
    "g5.48xlarge": 16.288, "g4dn.xlarge": 0.526,
}  # fmt: skip
REGION_FACTOR = {"us-east-1": 1.0, "us-east-2": 1.0, "us-west-2": 1.0}  # elsewhere 1.12
SPOT_TERMINATION = StateReason(
    message="Server.SpotInstanceTermination: Spot instance termination", code="Server.SpotInstanceTermination"
)
_EC2: Any = ec2_backends  # (account, region) -> moto EC2 backend; Any: these are moto internals
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/")
_XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
_SPOT_FILTERS = {"InstanceType": "instance-type", "ProductDescription": "product-description",
                 "AvailabilityZone": "availability-zone"}  # fmt: skip


class Call(NamedTuple):
    action: str
    region: str | None
    params: dict[str, str]  # the decoded query/form fields, e.g. params["Placement.AvailabilityZone"]


@dataclass
class _Fault:
    code: str
    status: int
    message: str | None
    match: dict[str, str | None]  # action, region, instance_type, zone, market; None matches anything
    remaining: int | None  # None = until reset or restore()
    exhaust: bool = False


def on_demand_price(instance_type: str, region: str = "us-east-1") -> float:
    base = ON_DEMAND_USD.get(instance_type)
    if base is None:
        info = INSTANCE_TYPES.get(instance_type, {})
        vcpus = info.get("VCpuInfo", {}).get("DefaultVCpus", 2)
        gpu_gib = info.get("GpuInfo", {}).get("TotalGpuMemoryInMiB", 0) / 1024
        base = 0.048 * vcpus + 0.08 * gpu_gib
    return round(base * REGION_FACTOR.get(region, 1.12), 4)


def _offered_zones(instance_type: str, region: str) -> list[str]:
    rows = INSTANCE_TYPE_OFFERINGS["availability-zone"].get(region, [])
    return sorted(r["Location"] for r in rows if r["InstanceType"] == instance_type)


def _error(start_response: Any, status: int, code: str, message: str) -> list[bytes]:
    body = (
        f"{_XML_HEAD}<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", "text/xml;charset=UTF-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # one line per request drowns pytest output
        pass


class FakeEC2:
    def __init__(self) -> None:
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._lock = threading.Lock()  # guards the middleware state below
        self._launch_lock = threading.Lock()  # serialises RunInstances with a token: no two instances per token
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""
        self.calls: Counter[tuple[str, str | None]] = Counter()  # (Action, region) -> requests, rejected included
        self.log: list[Call] = []  # every request in arrival order
        self._faults: list[_Fault] = []
        self._tokens: dict[tuple[str | None, str], tuple[dict[str, str], str, list[Any], bytes]] = {}
        self._spot_prices: dict[tuple[str, str], float] = {}
        self._lose: list[str] = []
        self._clients: dict[tuple[str, str, str], Any] = {}

    def _clear_state(self) -> None:
        with self._lock:  # cleared in place, so references a test holds stay live
            for state in (self.calls, self.log, self._faults, self._tokens, self._spot_prices, self._lose):
                state.clear()

    # ---- lifecycle ----
    def start(self) -> FakeEC2:
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_port}"
        # poll_interval: shutdown() waits up to one poll, and the default 0.5 s makes every teardown slow.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakeEC2:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget every instance, AMI, fault, token, price and count (moto's reset takes ~0.01 s)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")).read()
        self._clear_state()

    def client(self, region: str = "us-east-1", **config: Any) -> Any:
        """A boto3 EC2 client on this endpoint that does not retry (one call = one request), unless overridden.

        Cached per (region, config): building a client costs 10-150 ms, more than the call it makes.
        """
        import boto3
        from botocore.config import Config

        key = (self.endpoint_url, region, repr(sorted(config.items())))
        if key not in self._clients:
            cfg = Config(**{"retries": {"total_max_attempts": 1, "mode": "standard"}, **config})
            self._clients[key] = boto3.client(
                "ec2", region_name=region, endpoint_url=self.endpoint_url, config=cfg,
                aws_access_key_id="testing", aws_secret_access_key="testing",
            )  # fmt: skip
        return self._clients[key]

    # ---- test controls ----
    def ami(self, region: str) -> str:
        """An AMI id usable in `region` (registered on first use and again after a reset)."""
        backend = _EC2[os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)][region]
        if TEST_AMI_ID not in backend.amis:
            backend.amis[TEST_AMI_ID] = Ami(
                backend, TEST_AMI_ID, name="gpu-autoscaler-test", architecture="x86_64",
                virtualization_type="hvm", root_device_type="ebs", region_name=region,
            )  # fmt: skip
        return TEST_AMI_ID

    def inject(
        self, code: str, *, status: int | None = None, message: str | None = None,
        instance_type: str | None = None, zone: str | None = None, market: str | None = None,
        region: str | None = None, action: str = "RunInstances", times: int | None = 1,
    ) -> None:  # fmt: skip
        """The next `times` matching calls (None: all, until reset) answer EC2 error `code` without reaching moto.

        status defaults to 500 for InsufficientInstanceCapacity/InternalError (as EC2 has been seen to), else 400.
        """
        if status is None:
            status = 500 if code in ("InsufficientInstanceCapacity", "InternalError") else 400
        match = {
            "action": action,
            "region": region,
            "instance_type": instance_type,
            "zone": zone,
            "market": market,
        }
        with self._lock:
            self._faults.append(_Fault(code, status, message, match, times))

    def exhaust(self, instance_type: str, zone: str, market: str | None = None) -> None:
        """Every matching RunInstances answers InsufficientInstanceCapacity (HTTP 500) until restore()."""
        match = {"action": "RunInstances", "instance_type": instance_type, "zone": zone, "market": market}
        with self._lock:
            self._faults.append(_Fault("InsufficientInstanceCapacity", 500, None, match, None, exhaust=True))

    def restore(
        self, instance_type: str | None = None, zone: str | None = None, market: str | None = None
    ) -> None:
        """End exhaust() rules matching the given fields (no arguments: all of them)."""
        wanted = {"instance_type": instance_type, "zone": zone, "market": market}
        with self._lock:
            self._faults[:] = [
                f
                for f in self._faults
                if not f.exhaust or any(v not in (None, f.match[k]) for k, v in wanted.items())
            ]

    def lose_next_answer(self, action: str = "RunInstances") -> None:
        """The next `action` call reaches moto (so it takes effect) but the client gets 503 ServiceUnavailable."""
        with self._lock:
            self._lose.append(action)

    def set_spot_price(self, instance_type: str, zone: str, price: float) -> None:
        with self._lock:
            self._spot_prices[(instance_type, zone)] = price

    def spot_price(self, instance_type: str, zone: str) -> float:
        """The price DescribeSpotPriceHistory answers for this pair (set_spot_price or the derived default)."""
        with self._lock:
            if (instance_type, zone) in self._spot_prices:
                return self._spot_prices[(instance_type, zone)]
        spread = 1 + 0.04 * (ord(zone[-1]) - ord("a"))  # deterministic: zone a cheapest
        return round(SPOT_DISCOUNT * on_demand_price(instance_type, zone[:-1]) * spread, 6)

    def interrupt(self, instance_id: str, *, final_state: str = "terminated") -> None:
        """End a spot instance as EC2 does when it reclaims it; final_state "shutting-down" stops half-way."""
        instance = self._instance(instance_id)
        if instance.lifecycle != "spot":
            raise ValueError(f"{instance_id} is not a spot instance: EC2 does not interrupt on-demand instances")
        if final_state == "terminated":
            instance.terminate()  # moto's own termination detaches NICs and volumes
        elif final_state == "shutting-down":
            instance._state.name, instance._state.code = "shutting-down", 32
        else:
            raise ValueError(f"final_state must be 'terminated' or 'shutting-down', not {final_state!r}")
        instance._reason = f"Service initiated ({datetime.now(UTC):%Y-%m-%d %H:%M:%S} GMT)"
        instance.state_reason = StateReason(SPOT_TERMINATION.message, SPOT_TERMINATION.code)

    def forget_terminated(self) -> None:
        """Stop listing terminated instances, as EC2 does about an hour after they end (moto keeps them)."""
        for _, _, backend in list(_EC2.iter_backends()):
            for rid, reservation in list(backend.reservations.items()):
                reservation.instances = [i for i in reservation.instances if i._state.name != "terminated"]
                if not reservation.instances:
                    del backend.reservations[rid]

    def count(self, action: str, region: str | None = None) -> int:
        with self._lock:
            return sum(n for (a, r), n in self.calls.items() if a == action and region in (None, r))

    # ---- internals ----
    @staticmethod
    def _instance(instance_id: str) -> Any:
        for _, _, backend in list(_EC2.iter_backends()):
            instance = backend.get_instance_by_id(instance_id)
            if instance is not None:
                return instance
        raise KeyError(instance_id)

    @staticmethod
    def _zone_of(params: dict[str, str], region: str | None) -> str | None:
        zone = params.get("Placement.AvailabilityZone")
        subnet = params.get("SubnetId") or params.get("NetworkInterface.1.SubnetId")
        if zone or not subnet:
            return zone
        for _, backend_region, backend in list(_EC2.iter_backends()):
            if backend_region == region:
                for by_id in backend.subnets.values():
                    if subnet in by_id:
                        return str(by_id[subnet].availability_zone)
        return None

    def _take_fault(
        self, action: str, region: str | None, params: dict[str, str], zone: str | None
    ) -> _Fault | None:
        actual = {"action": action, "region": region, "instance_type": params.get("InstanceType"), "zone": zone,
                  "market": "spot" if params.get("InstanceMarketOptions.MarketType") == "spot" else "on-demand"}  # fmt: skip
        with self._lock:
            for fault in self._faults:
                if all(v in (None, actual[k]) for k, v in fault.match.items()):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _call_moto(self, environ: dict[str, Any]) -> tuple[str, list[Any], bytes]:
        captured: list[Any] = []
        chunks = self._moto(environ, lambda status, headers, exc_info=None: captured.extend([status, headers]))
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        return captured[0], captured[1], body

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self._moto(environ, start_response)  # type: ignore[no-any-return]
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)  # moto reads the body again
        params = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        params.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action", "")
        scope = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        region = scope.group(1) if scope else None
        with self._lock:
            self.calls[(action, region)] += 1
            self.log.append(Call(action, region, params))
        if action == "DescribeSpotPriceHistory":
            return self._spot_price_history(start_response, region or "us-east-1", params)
        token = params.get("ClientToken") if action == "RunInstances" else None
        if token is None:
            return self._guarded(environ, start_response, action, region, params, None)
        with self._launch_lock:
            return self._guarded(environ, start_response, action, region, params, token)

    def _guarded(self, environ: dict[str, Any], start_response: Any, action: str, region: str | None,
                 params: dict[str, str], token: str | None) -> Iterable[bytes]:  # fmt: skip
        if token is not None and (region, token) in self._tokens:
            # EC2 answers a repeated token with the original reservation, and refuses a changed request.
            first_params, status, headers, body = self._tokens[(region, token)]
            if first_params != params:
                return _error(start_response, 400, "IdempotentParameterMismatch",
                              "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).")  # fmt: skip
            start_response(status, headers)
            return [body]
        zone = self._zone_of(params, region)
        fault = self._take_fault(action, region, params, zone)
        instance_type = params.get("InstanceType")
        if fault is not None:
            message = fault.message or f"Injected {fault.code}."
            if fault.code == "InsufficientInstanceCapacity" and not fault.message and instance_type and zone:
                others = ", ".join(z for z in _offered_zones(instance_type, zone[:-1]) if z != zone)
                message = (f"We currently do not have sufficient {instance_type} capacity in the Availability Zone "
                           f"you requested ({zone}). Our system will be working on provisioning additional capacity. "
                           f"You can currently get {instance_type} capacity by not specifying an Availability Zone "
                           f"in your request or choosing {others}.")  # fmt: skip
            return _error(start_response, fault.status, fault.code, message)
        # A zone outside the region is moto's to refuse (InvalidParameterValue), not an offering question.
        if action == "RunInstances" and instance_type and region and (zone or region).startswith(region):
            if instance_type not in INSTANCE_TYPES:
                invalid = f"Invalid value '{instance_type}' for InstanceType."
                return _error(start_response, 400, "InvalidParameterValue", invalid)
            zones = _offered_zones(instance_type, region)
            if (zone and zone not in zones) or not zones:
                # moto launches any type anywhere; EC2 refuses a type its zone (or region) does not offer.
                where = f"Availability Zone ({zone})" if zone else f"region ({region})"
                return _error(start_response, 400, "Unsupported",
                              f"Your requested instance type ({instance_type}) is not supported in your requested "
                              f"{where}. Please retry your request by not specifying an Availability Zone or "
                              f"choosing {', '.join(zones) or 'another region'}.")  # fmt: skip
        status, headers, body = self._call_moto(environ)
        if token is not None and status.startswith("200"):
            self._tokens[(region, token)] = (params, status, headers, body)
        with self._lock:
            lost = action in self._lose
            if lost:
                self._lose.remove(action)
        if lost:  # the work is done and remembered (token included); only the answer goes missing
            unavailable = "The service is unavailable. Please try again shortly."
            return _error(start_response, 503, "ServiceUnavailable", unavailable)
        start_response(status, headers)
        return [body]

    def _spot_price_history(self, start_response: Any, region: str, params: dict[str, str]) -> list[bytes]:
        """moto answers 0.00001 dated 2006 for everything; answer current prices in EC2's XML shape instead."""

        def listed(prefix: str) -> set[str]:
            values = {v for k, v in params.items() if re.fullmatch(rf"{prefix}\.\d+", k)}
            for k, name in params.items():  # Filter.N.Name=x with Filter.N.Value.M
                if re.fullmatch(r"Filter\.\d+\.Name", k) and name == _SPOT_FILTERS[prefix]:
                    values |= {v for kk, v in params.items() if kk.startswith(k[: -len("Name")] + "Value.")}
            return values

        types, zones = listed("InstanceType"), listed("AvailabilityZone")
        if "AvailabilityZone" in params:
            zones.add(params["AvailabilityZone"])
        products = sorted(listed("ProductDescription") & {"Linux/UNIX", "Linux/UNIX (Amazon VPC)"}) or (
            [] if listed("ProductDescription") else ["Linux/UNIX"]
        )
        with self._lock:
            pairs = {(t, z) for t, z in self._spot_prices if z.startswith(region) and z[len(region) :].isalpha()}
        pairs |= {
            (r["InstanceType"], r["Location"])
            for r in INSTANCE_TYPE_OFFERINGS["availability-zone"].get(region, [])
        }
        rows = [(t, z, p) for t, z in sorted(pairs) for p in products
                if (not types or t in types) and (not zones or z in zones)]  # fmt: skip
        start = int(params.get("NextToken") or 0)
        limit = int(params.get("MaxResults") or 1000)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        items = "".join(
            f"<item><instanceType>{t}</instanceType><productDescription>{escape(p)}</productDescription>"
            f"<spotPrice>{self.spot_price(t, z):.6f}</spotPrice><timestamp>{now}</timestamp>"
            f"<availabilityZone>{z}</availabilityZone></item>"
            for t, z, p in rows[start : start + limit]
        )
        next_token = f"<nextToken>{start + limit}</nextToken>" if start + limit < len(rows) else ""
        body = (
            f'{_XML_HEAD}<DescribeSpotPriceHistoryResponse xmlns="{_NS}"><requestId>{uuid.uuid4()}</requestId>'
            f"<spotPriceHistorySet>{items}</spotPriceHistorySet>{next_token}</DescribeSpotPriceHistoryResponse>"
        ).encode()
        start_response("200 OK", [("Content-Type", "text/xml;charset=UTF-8"), ("Content-Length", str(len(body)))])
        return [body]


def fake_ec2_fixture() -> Iterator[FakeEC2]:
    """A started FakeEC2, stopped afterwards. Plain generator: wrap it with pytest.fixture(scope=...)."""
    with FakeEC2() as fake:
        yield fake
