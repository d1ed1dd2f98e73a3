"""An SQS queue's depth: GetQueueAttributes ApproximateNumberOfMessages (visible), plus
ApproximateNumberOfMessagesNotVisible (in flight: received, not yet deleted) when `include_in_flight`, plus
ApproximateNumberOfMessagesDelayed when `include_delayed`. SQS documents these as approximate (eventually
consistent, about a minute behind at worst): good enough to scale on, not to count.

`queue` is the queue's URL, used as is, or its name, looked up once with GetQueueUrl and cached (a lookup that
later finds the queue gone forgets the URL, so a recreated queue is found again). One boto3 client per source,
made at the first read from a session of `profile` (default: the standard credential chain) in `region`;
connect and read timeouts are `timeout_seconds` and botocore retries nothing within a read (the next tick is
the retry). Errors name the source, the queue and what AWS said; credentials never appear in them.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from autoscaler.config import SqsSource
from autoscaler.model import Sample
from autoscaler.sources._http import redact_url, scrub
from metrics_sources._secrets import url_secrets

VISIBLE = "ApproximateNumberOfMessages"
IN_FLIGHT = "ApproximateNumberOfMessagesNotVisible"
DELAYED = "ApproximateNumberOfMessagesDelayed"
MISSING_QUEUE_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
AUTH_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidSecurity",
}


def build(cfg: SqsSource) -> SqsQueue:
    return SqsQueue(cfg)


class ReadError(Exception):
    """A failed read, with a message safe to show."""


def is_queue_url(queue: str) -> bool:
    return queue.startswith(("https://", "http://"))


class SqsQueue:
    def __init__(self, cfg: SqsSource) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self.kind: str = cfg.kind
        self.timeout_seconds: float = cfg.timeout_seconds
        self.attributes = [VISIBLE]
        if cfg.include_in_flight:
            self.attributes.append(IN_FLIGHT)
        if cfg.include_delayed:
            self.attributes.append(DELAYED)
        queue = redact_url(cfg.queue) if is_queue_url(cfg.queue) else repr(cfg.queue)
        self.where = f"queue {queue} in {cfg.region}"
        self._queue_url: str | None = cfg.queue if is_queue_url(cfg.queue) else None
        self._client: Any = None
        self._session: Any = None
        self._lock = threading.Lock()  # guards making the client; boto3 clients themselves are thread-safe

    def read(self, now: datetime) -> Sample:
        try:
            value = self._read()
        except ReadError as exc:
            text = scrub(str(exc), self._secrets())
            return Sample(self.name, self.kind, None, None, f"sqs source {self.name!r} ({self.where}): {text}")
        except Exception as exc:  # read() never raises; the type is enough to find the bug, the text may leak
            what = f"unexpected {type(exc).__name__}"
            return Sample(self.name, self.kind, None, None, f"sqs source {self.name!r} ({self.where}): {what}")
        # SQS answers with its current (approximate) counts: they were observed now.
        return Sample(self.name, self.kind, value, now)

    def close(self) -> None:
        """Close the client's connection pool (a reload that drops this source may call it)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _read(self) -> float:
        try:
            client = self._get_client()
            url = self._get_queue_url(client)
            answer = client.get_queue_attributes(QueueUrl=url, AttributeNames=self.attributes)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
            code, message = str(error.get("Code", "")), str(error.get("Message", ""))[:300]
            if code in MISSING_QUEUE_CODES:
                if not is_queue_url(self.cfg.queue):
                    self._queue_url = None  # look it up again next time: it may be recreated
                raise ReadError("the queue does not exist") from None
            if code in AUTH_CODES:
                raise ReadError(f"AWS refused the credentials or the permission: {code}: {message}") from None
            raise ReadError(f"{code or 'error'}: {message}") from None
        except botocore.exceptions.NoCredentialsError:
            raise ReadError("no AWS credentials found (environment, profile, or instance role)") from None
        except botocore.exceptions.ProfileNotFound:
            raise ReadError(f"AWS profile {self.cfg.profile!r} is not configured") from None
        except (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError):
            raise ReadError(f"no answer within {self.cfg.timeout_seconds:g} s") from None
        except botocore.exceptions.EndpointConnectionError as exc:
            raise ReadError(f"cannot connect: {exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ReadError(f"{type(exc).__name__}: {str(exc)[:300]}") from None
        attrs = answer.get("Attributes") if isinstance(answer, dict) else None
        if not isinstance(attrs, dict):
            raise ReadError("the answer has no Attributes")
        return float(sum(_count(attrs, name) for name in self.attributes))

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._session = boto3.session.Session(profile_name=self.cfg.profile, region_name=self.cfg.region)
                config = Config(
                    connect_timeout=self.cfg.timeout_seconds,
                    read_timeout=self.cfg.timeout_seconds,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                )
                self._client = self._session.client("sqs", endpoint_url=self.cfg.endpoint_url, config=config)
            return self._client

    def _get_queue_url(self, client: Any) -> str:
        url = self._queue_url
        if url is None:
            answer = client.get_queue_url(QueueName=self.cfg.queue)
            url = answer.get("QueueUrl") if isinstance(answer, dict) else None
            if not isinstance(url, str) or not url:
                raise ReadError("GetQueueUrl answered no QueueUrl")
            self._queue_url = url
        return url

    def _secrets(self) -> list[str]:
        out = url_secrets(self.cfg.endpoint_url or "")
        try:  # the keys in use, should any AWS message echo them
            creds = self._session.get_credentials() if self._session is not None else None
            frozen = creds.get_frozen_credentials() if creds is not None else None
        except Exception:
            frozen = None
        if frozen is not None:  # real ones are 40+ characters; blanking a 1-letter test key would garble texts
            out += [s for s in (frozen.secret_key, frozen.token) if s and len(s) >= 16]
        return out


def _count(attrs: dict[str, Any], name: str) -> int:
    raw = attrs.get(name)
    if raw is None:
        raise ReadError(f"the answer has no {name}")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ReadError(f"{name} is {str(raw)[:40]!r}, not a count") from None
    if value < 0:
        raise ReadError(f"{name} is {value}, not a count")
    return value
