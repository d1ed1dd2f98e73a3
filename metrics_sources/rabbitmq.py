"""A RabbitMQ queue's depth, over AMQP (a passive queue declare) or the management plugin's HTTP API.

- via amqp: `queue_declare(queue, passive=True)` answers the number of messages ready for delivery and the
  number of consumers. Messages delivered but not yet acknowledged are not in that count (AMQP does not say),
  so `include_unacked` has no effect here. One connection per source, opened at the first read and kept across
  reads; a connection the broker or the network closed meanwhile is noticed at the start of the next read and
  replaced. A missing queue (the broker closes the channel with 404 NOT_FOUND) is an error naming the queue; the
  connection stays, the next read opens a new channel.
- via management: GET {management_url}/api/queues/{vhost}/{queue} with basic auth: messages_ready, plus
  messages_unacknowledged when `include_unacked`; the queue's consumer count is kept too. A queue declared
  moments ago may have no message statistics yet: that is an error (the pool holds) until the broker's next
  statistics round (every 5 s by default).

The consumer count of the last good read is in `consumers` (a Sample carries one number: the depth).

Credentials: the user is `username` when set in the policy, else the URL's user, else guest; the password is
read from its Secret at every connect (management: every request); without a Secret it is the URL's password
if the URL has one (it should not), else the guest account's well-known "guest". Via amqp the vhost is the URL's
path ("/%2F" is "/"), else `vhost`; a URL and a `vhost` (or user and `username`) naming different things is
refused when the source is built, rather than guessed at. amqps:// and https:// verify the server against the
system's trust store unless `verify_tls` is off.

Deadlines: connecting is bounded by `timeout_seconds` (TCP connect and the whole AMQP handshake), and so is the
declare (a timer on the connection's I/O loop drops a connection that does not answer in time). A read that
finds the previous one still running (possible only if the runner gave up on it) fails at once instead of
sharing the connection across threads. Errors name the source and never carry the password.
"""

from __future__ import annotations

import base64
import math
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]

from autoscaler.config import RabbitMQSource
from autoscaler.errors import ConfigError
from autoscaler.model import Sample
from autoscaler.sources import _http
from autoscaler.sources._http import FetchError, redact_url, scrub
from metrics_sources._secrets import SecretError, read_secret, url_secrets

GUEST_PASSWORD = "guest"  # RabbitMQ's default account; the broker accepts it from localhost only


def build(cfg: RabbitMQSource) -> RabbitMQQueue:
    return RabbitMQQueue(cfg)


class ReadError(Exception):
    """A failed read, with a message safe to show."""


class _Deadline(pika.exceptions.AMQPConnectionError):  # type: ignore[misc]
    """Ends a blocked declare: the connection is dropped with this as the reason."""


class RabbitMQQueue:
    def __init__(self, cfg: RabbitMQSource) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self.kind: str = cfg.kind
        self.timeout_seconds: float = cfg.timeout_seconds
        self.consumers: int | None = None  # of the last good read
        self.username, self.vhost, self._amqp_url = _amqp_target(cfg)
        if cfg.via == "management":
            self.username = cfg.username
            self.vhost = cfg.vhost
            base = cfg.management_url.rstrip("/")
            self.endpoint = f"{base}/api/queues/{quote(cfg.vhost, safe='')}/{quote(cfg.queue, safe='')}"
            self.where = f"{redact_url(self.endpoint)}"
        else:
            self.endpoint = self._amqp_url
            self.where = f"{redact_url(self._amqp_url)}, queue {cfg.queue!r}"
        self._connection: Any = None
        self._channel: Any = None
        self._password = ""  # the last one used, blanked from error texts
        self._busy = threading.Lock()

    def read(self, now: datetime) -> Sample:
        if not self._busy.acquire(blocking=False):
            error = f"rabbitmq source {self.name!r} ({self.where}): the previous read is still running"
            return Sample(self.name, self.kind, None, None, error)
        prefix = f"rabbitmq source {self.name!r} ({self.where})"
        try:
            value, consumers = self._read_management() if self.cfg.via == "management" else self._read_amqp()
        except (ReadError, FetchError) as exc:
            return Sample(self.name, self.kind, None, None, f"{prefix}: {scrub(str(exc), self._secrets())}")
        except Exception as exc:  # read() never raises; the type is enough to find the bug, the text may leak
            return Sample(self.name, self.kind, None, None, f"{prefix}: unexpected {type(exc).__name__}")
        finally:
            self._busy.release()
        self.consumers = consumers
        # The broker reports the queue as it is: it was observed now.
        return Sample(self.name, self.kind, value, now)

    def close(self) -> None:
        """Close the AMQP connection (a reload that drops this source may call it)."""
        with self._busy:
            self._drop(clean=True)

    # ------------------------------------------------------------------ management API

    def _read_management(self) -> tuple[float, int]:
        password = self._get_password()
        headers = {"Accept": "application/json", "Authorization": _basic_auth(self.username, password)}
        status, body = _http.get(
            self.endpoint, headers=headers, timeout=self.cfg.timeout_seconds, verify=self.cfg.verify_tls
        )
        if status == 404:
            raise ReadError(f"queue {self.cfg.queue!r} does not exist in vhost {self.cfg.vhost!r} (HTTP 404)")
        if status == 401:
            raise ReadError(f"authentication failed for user {self.username!r} (HTTP 401)")
        if status == 403:
            raise ReadError(f"user {self.username!r} may not read this queue (HTTP 403)")
        if not 200 <= status < 300:
            raise ReadError(f"HTTP {status}")
        data = _http.parse_json(body)
        if not isinstance(data, dict):
            raise ReadError("the answer is not a queue object")
        hint = " (a new queue's statistics take a few seconds to appear)"
        ready = _field(data, "messages_ready", hint)
        unacked = _field(data, "messages_unacknowledged", hint) if self.cfg.include_unacked else 0
        return float(ready + unacked), _field(data, "consumers")

    # ------------------------------------------------------------------ AMQP

    def _read_amqp(self) -> tuple[float, int]:
        deadline = time.monotonic() + self.cfg.timeout_seconds
        if self._connection is not None and not self._alive():
            self._drop(clean=False)
        if self._connection is None:
            self._connect()
        try:
            if self._channel is None or not self._channel.is_open:
                self._channel = self._within(deadline, self._connection.channel)
            frame = self._within(deadline, lambda: self._channel.queue_declare(self.cfg.queue, passive=True))
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None
            if exc.reply_code == 404:
                raise ReadError(f"queue {self.cfg.queue!r} does not exist in vhost {self.vhost!r}") from None
            raise ReadError(f"the broker closed the channel: {exc.reply_code} {exc.reply_text}") from None
        except _Deadline:
            self._drop(clean=False)
            raise ReadError(f"no answer within {self.cfg.timeout_seconds:g} s (connection dropped)") from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop(clean=False)
            raise ReadError(f"connection lost: {_describe(exc)}") from None
        method = getattr(frame, "method", None)
        counts = {name: getattr(method, name, None) for name in ("message_count", "consumer_count")}
        return float(_field(counts, "message_count")), _field(counts, "consumer_count")

    def _connect(self) -> None:
        password = self._get_password()
        try:
            params = pika.URLParameters(self._amqp_url)
        except ValueError as exc:
            raise ReadError(f"bad url: {exc}") from None
        params.credentials = pika.PlainCredentials(self.username, password)
        params.virtual_host = self.vhost
        params.socket_timeout = self.cfg.timeout_seconds
        params.stack_timeout = self.cfg.timeout_seconds
        params.connection_attempts = 1
        params.retry_delay = 0
        if params.ssl_options is not None and "ssl_options" not in urlsplit(self._amqp_url).query:
            context = ssl.create_default_context()
            if not self.cfg.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
        try:
            self._connection = pika.BlockingConnection(params)
        except pika.exceptions.ProbableAuthenticationError:
            raise ReadError(f"authentication failed for user {self.username!r}") from None
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise ReadError(f"access to vhost {self.vhost!r} refused: {_describe(exc)}") from None
        except Exception as exc:  # pika raises AMQPError subclasses, its connector's own errors, OSError...
            if _is_timeout(exc):
                raise ReadError(f"cannot connect within {self.cfg.timeout_seconds:g} s") from None
            raise ReadError(f"cannot connect: {_describe(exc)}") from None
        self._channel = None

    def _within(self, deadline: float, call: Callable[[], Any]) -> Any:
        """Run a blocking call on the connection; past `deadline` the connection is dropped and it raises."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Deadline("deadline passed")
        impl = self._connection._impl
        timer = None
        try:  # pika's own heartbeat checker ends a connection the same way
            timer = impl.ioloop.call_later(remaining, lambda: impl._terminate_stream(_Deadline("deadline")))
        except AttributeError:  # a pika without these internals: the runner's timeout still bounds the read
            timer = None
        try:
            return call()
        finally:
            if timer is not None and not self._connection.is_closed:
                impl.ioloop.remove_timeout(timer)

    def _alive(self) -> bool:
        """Process what arrived since the last read (heartbeats, a broker's close): False if it is gone."""
        try:
            if not self._connection.is_open:
                return False
            self._connection.process_data_events(0)
            return bool(self._connection.is_open)
        except Exception:
            return False

    def _drop(self, *, clean: bool) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is None:
            return
        try:
            if clean and connection.is_open:
                connection.close()
            elif not connection.is_closed:  # no goodbye, the peer may not be answering: abort, let the loop close
                connection._impl._terminate_stream(_Deadline("dropped"))
                for _ in range(5):  # the abort completes on the loop; it raises once the socket is closed
                    connection.process_data_events(0)
        except Exception:
            pass

    # ------------------------------------------------------------------ secrets

    def _get_password(self) -> str:
        if self.cfg.password is None:
            url_password = urlsplit(self.cfg.url).password if self.cfg.via == "amqp" else None
            self._password = unquote(url_password) if url_password else GUEST_PASSWORD
            return self._password
        try:
            self._password = read_secret(self.cfg.password, "the RabbitMQ password")
        except SecretError as exc:
            raise ReadError(str(exc)) from None
        return self._password

    def _secrets(self) -> list[str]:
        out = [*url_secrets(self.cfg.url), *url_secrets(self.cfg.management_url)]
        if self._password != GUEST_PASSWORD:
            out.append(self._password)
        return out


def _amqp_target(cfg: RabbitMQSource) -> tuple[str, str, str]:
    """(user, vhost, URL without userinfo) for AMQP; ConfigError when the URL and the fields disagree."""
    try:
        parts = urlsplit(cfg.url)
        url_user = unquote(parts.username) if parts.username else None
        url_vhost = unquote(parts.path.split("/")[1]) if len(parts.path) > 1 else None
        bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    except (ValueError, IndexError):
        if cfg.via == "amqp":
            raise ConfigError(f"rabbitmq source {cfg.name!r}: url is not a valid URL") from None
        return cfg.username, cfg.vhost, cfg.url
    explicit = cfg.model_fields_set
    if cfg.via == "amqp":
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ConfigError(f"rabbitmq source {cfg.name!r}: url must be amqp://HOST... or amqps://HOST...")
        if url_user and "username" in explicit and url_user != cfg.username:
            raise ConfigError(
                f"rabbitmq source {cfg.name!r}: url names user {url_user!r} but username is {cfg.username!r}"
            )
        if url_vhost is not None and "vhost" in explicit and url_vhost != cfg.vhost:
            raise ConfigError(
                f"rabbitmq source {cfg.name!r}: url names vhost {url_vhost!r} but vhost is {cfg.vhost!r}"
            )
    user = cfg.username if "username" in explicit else (url_user or cfg.username)
    vhost = url_vhost if url_vhost is not None else cfg.vhost
    return user, vhost, bare


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _field(data: dict[str, Any], name: str, hint: str = "") -> int:
    if data.get(name) is None:
        raise ReadError(f"the answer has no {name}{hint}")
    raw = data[name]
    if not _is_count(raw):
        raise ReadError(f"{name} is {str(raw)[:40]!r}, not a count")
    return int(raw)


def _is_count(raw: Any) -> bool:
    if isinstance(raw, bool):
        return False
    if isinstance(raw, float):
        return math.isfinite(raw) and raw >= 0 and raw == int(raw)
    return isinstance(raw, int) and raw >= 0


def _is_timeout(exc: BaseException) -> bool:
    name = type(exc).__name__
    if "Timeout" in name or isinstance(exc, TimeoutError):
        return True
    return any(_is_timeout(e) for e in getattr(exc, "exceptions", ()) if isinstance(e, BaseException))


def _describe(exc: BaseException) -> str:
    """The innermost cause pika wrapped (it nests the socket's error two or three deep), as "Type: text"."""
    for _ in range(5):
        nested = (*exc.args, *getattr(exc, "exceptions", ()), getattr(exc, "exception", None))
        inner = [a for a in nested if isinstance(a, BaseException)]
        if not inner:
            break
        exc = inner[-1]
    text = str(exc)[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
