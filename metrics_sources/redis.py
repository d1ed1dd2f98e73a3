"""A queue kept in Redis: a list's length, a Celery queue's length, a stream consumer group's backlog, or a
sorted set's cardinality.

Modes (`RedisSource.mode`):

- list: LLEN key. A missing key is an empty list: 0.
- celery: Celery's Redis broker (kombu's redis transport) keeps a queue Q as the list Q plus, for message
  priorities, the lists Q + sep + step for the non-zero steps of `priority_steps`; kombu's defaults are
  sep = "\\x06\\x16" and priority_steps = [0, 3, 6, 9] (kombu/transport/redis.py: `Channel.sep`,
  `PRIORITY_STEPS`, `_q_for_pri`, and `_size`, which sums LLEN of the same four keys in one pipeline). The value
  is that sum, read in one round trip (MULTI/EXEC, so the four lengths are one consistent snapshot). An empty
  Celery queue has no key at all: 0. Messages a worker has taken but not acknowledged sit in kombu's global
  `unacked` hash, not per queue, and are not counted. With kombu's `global_keyprefix`, put the prefix in `key`.
- stream: XINFO GROUPS key, the `group`'s lag (entries not yet delivered to the group) + pending (delivered,
  not acknowledged). Redis reports lag as nil when it cannot tell (entries not yet delivered were deleted with
  XDEL, or the group's position was set with XSETID) and Redis < 7.0 has no lag at all. Then: when the group
  has read nothing yet (last-delivered-id 0-0), every entry is undelivered and XLEN (fetched in the same round
  trip) is the exact lag; otherwise the sample is an error, so the pool holds rather than scale on a guess
  (XLEN would over-count everything already delivered). A missing stream or group is an error.
- zset: ZCARD key. A missing key is an empty set: 0.

One client (with its connection pool) per source, created at the first read and speaking RESP2 (what every
Redis speaks); socket connect and read timeouts are the source's `timeout_seconds`. A broken connection is
dropped and the next command reconnects: a connection error is retried at once (a pooled connection the server
closed meanwhile), a timeout never is, so a read does not wait much more than `timeout_seconds` per phase. The
user is `username`, else the URL's; the password is read from its Secret by a credential provider at every
(re)connect, so a rotated one is used by the next connection. Errors name the source and what was wrong; the
password and the URL's password and query values are blanked from anything the client library said.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.retry import Retry

from autoscaler.config import RedisSource
from autoscaler.errors import ConfigError
from autoscaler.model import Sample
from autoscaler.sources._http import redact_url, scrub
from metrics_sources._secrets import SecretError, read_secret, url_secrets

# kombu's redis transport defaults (Channel.sep, PRIORITY_STEPS); see the module docstring.
CELERY_SEP = "\x06\x16"
CELERY_PRIORITY_STEPS = (0, 3, 6, 9)
MAX_CONNECTIONS = 4  # reads are sequential; a few spare for a read abandoned by the runner


def celery_keys(queue: str) -> list[str]:
    """The lists Celery's Redis broker keeps for `queue`, as kombu's `_q_for_pri` names them."""
    return [f"{queue}{CELERY_SEP}{step}" if step else queue for step in CELERY_PRIORITY_STEPS]


def build(cfg: RedisSource) -> RedisQueue:
    return RedisQueue(cfg)


class ReadError(Exception):
    """A failed read, with a message safe to show."""


class _SecretUnavailable(redis.exceptions.RedisError):
    """Raised by the credential provider inside redis-py's connect; a RedisError, so redis-py drops the
    half-open connection, and not a ConnectionError, so it is not retried."""


class _SecretCredentials(CredentialProvider):
    """(username, password) read at every new connection."""

    def __init__(self, cfg: RedisSource, username: str | None, url_password: str | None) -> None:
        self.cfg = cfg
        self.username = username
        self.url_password = url_password
        self.last_password = ""  # what was last sent, so that error texts can blank it

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self.url_password or ""
        if self.cfg.password is not None:
            try:
                password = read_secret(self.cfg.password, "the Redis password")
            except SecretError as exc:
                raise _SecretUnavailable(str(exc)) from None
        self.last_password = password
        if self.username:
            return (self.username, password)
        return (password,)


class RedisQueue:
    def __init__(self, cfg: RedisSource) -> None:
        if cfg.mode == "stream" and not cfg.group:
            raise ConfigError(f"redis source {cfg.name!r}: mode stream needs `group` (the consumer group)")
        self.cfg = cfg
        self.name: str = cfg.name
        self.kind: str = cfg.kind
        self.timeout_seconds: float = cfg.timeout_seconds
        self.keys = celery_keys(cfg.key) if cfg.mode == "celery" else [cfg.key]
        self.where = f"{redact_url(cfg.url)}, {cfg.mode} {cfg.key!r}"
        if cfg.group:
            self.where += f" group {cfg.group!r}"
        self._client: Any = None
        self._credentials: _SecretCredentials | None = None
        self._lock = threading.Lock()  # guards the creation of the client; the client itself is thread-safe

    def read(self, now: datetime) -> Sample:
        try:
            value = self._read()
        except ReadError as exc:
            return Sample(self.name, self.kind, None, None, f"redis source {self.name!r} ({self.where}): {exc}")
        except Exception as exc:  # read() never raises; the type is enough to find the bug, the text may leak
            what = f"unexpected {type(exc).__name__}"
            return Sample(self.name, self.kind, None, None, f"redis source {self.name!r} ({self.where}): {what}")
        # Redis answers with the current length: it was observed now.
        return Sample(self.name, self.kind, value, now)

    def close(self) -> None:
        """Close the pooled connections (a reload that drops this source may call it; GC does it otherwise)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ internals

    def _read(self) -> float:
        client = self._get_client()
        try:
            if self.cfg.mode == "stream":
                return self._stream_backlog(client)
            if self.cfg.mode == "zset":
                return float(_count(client.zcard(self.cfg.key), "ZCARD"))
            if self.cfg.mode == "list":
                return float(_count(client.llen(self.cfg.key), "LLEN"))
            with client.pipeline(transaction=True) as pipe:
                for key in self.keys:
                    pipe.llen(key)
                lengths = pipe.execute()
            if not isinstance(lengths, list) or len(lengths) != len(self.keys):
                raise ReadError("the answer to the LLEN pipeline is not one length per key")
            return float(sum(_count(n, "LLEN") for n in lengths))
        except redis.exceptions.RedisError as exc:
            raise ReadError(self._describe(exc)) from None

    def _stream_backlog(self, client: Any) -> float:
        with client.pipeline(transaction=True) as pipe:
            pipe.xinfo_groups(self.cfg.key)
            pipe.xlen(self.cfg.key)
            groups, length = pipe.execute(raise_on_error=False)
        if isinstance(groups, redis.exceptions.ResponseError) and "no such key" in str(groups).lower():
            raise ReadError(f"stream {self.cfg.key!r} does not exist")
        if isinstance(groups, Exception):
            raise groups
        if not isinstance(groups, list):
            raise ReadError("the answer to XINFO GROUPS is not a list")
        group = next((g for g in groups if isinstance(g, dict) and _text(g.get("name")) == self.cfg.group), None)
        if group is None:
            raise ReadError(f"stream {self.cfg.key!r} has no consumer group {self.cfg.group!r}")
        pending = _count(group.get("pending"), "XINFO GROUPS pending")
        lag = group.get("lag")
        if lag is None:
            if _text(group.get("last-delivered-id")) != "0-0":
                version = "" if "lag" in group else " (Redis < 7.0 reports no lag)"
                raise ReadError(
                    f"the lag of group {self.cfg.group!r} is unknown{version}: entries not yet delivered were "
                    "deleted, or the group's position was set by hand; it is known again once the group reads "
                    "past them"
                )
            if isinstance(length, Exception):
                raise length
            lag = length  # the group has read nothing: every entry is undelivered
        return float(_count(lag, "XINFO GROUPS lag") + pending)

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        cfg = self.cfg
        try:
            parts = urlsplit(cfg.url)
            username = cfg.username or (unquote(parts.username) if parts.username else None)
            url_password = unquote(parts.password) if parts.password else None
            bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
            scheme = parts.scheme
        except ValueError:
            raise ReadError("the url is not a valid URL") from None
        kwargs: dict[str, Any] = {
            "socket_timeout": cfg.timeout_seconds,
            "socket_connect_timeout": cfg.timeout_seconds,
            # One immediate retry of a connection error (a pooled connection the server closed meanwhile); a
            # timeout is not retried, so a read takes at most about `timeout_seconds` per phase.
            "retry": Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
            "max_connections": MAX_CONNECTIONS,
            "client_name": "gpu-autoscaler",
            # RESP2: what every Redis speaks (redis-py 8 defaults to RESP3's HELLO, which Redis < 6 refuses).
            "protocol": 2,
        }
        if cfg.password is not None or username or url_password:
            self._credentials = _SecretCredentials(cfg, username, url_password)
            kwargs["credential_provider"] = self._credentials
        if scheme == "rediss":
            if cfg.ca_file is not None:
                kwargs["ssl_ca_certs"] = str(cfg.ca_file)
            if not cfg.verify_tls:
                kwargs["ssl_cert_reqs"] = "none"
                kwargs["ssl_check_hostname"] = False
        try:
            return redis.Redis.from_url(bare, **kwargs)
        except (ValueError, TypeError, redis.exceptions.RedisError) as exc:
            raise ReadError(f"bad url: {scrub(str(exc), self._secrets())[:200]}") from None

    def _secrets(self) -> list[str]:
        out = url_secrets(self.cfg.url)
        if self._credentials is not None:
            out.append(self._credentials.last_password)
        return out

    def _describe(self, exc: redis.exceptions.RedisError) -> str:
        text = scrub(str(exc), self._secrets())[:300] or type(exc).__name__
        timeout = self.cfg.timeout_seconds
        if isinstance(exc, _SecretUnavailable):
            return text
        if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
            return f"authentication failed: {text}"
        if isinstance(exc, redis.exceptions.NoPermissionError):
            return f"permission denied: {text}"
        if isinstance(exc, redis.exceptions.TimeoutError):
            return f"timed out after {timeout:g} s ({text})"
        if isinstance(exc, redis.exceptions.ConnectionError):
            return f"cannot reach the server: {text}"
        if isinstance(exc, redis.exceptions.ResponseError):
            if text.startswith("WRONGTYPE"):
                wanted = {"stream": "stream", "zset": "sorted set"}.get(self.cfg.mode, "list")
                return f"a key is not a {wanted}: {text}"
            return f"the server refused the command: {text}"
        return f"bad answer from the server: {type(exc).__name__}: {text}"


def _count(raw: Any, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ReadError(f"{what} answered {str(raw)[:40]!r}, not a count")
    return raw


def _text(raw: Any) -> str | None:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return raw if isinstance(raw, str) else None
