"""The Redis metric source against real servers: the shared one on 127.0.0.1:6379 for the counting modes, and a
private redis-server started here with TLS (a CA and certificate made in the test) and a password, for TLS,
authentication, secrets and reconnects. Broken servers are local sockets (tests.brokers)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from autoscaler import config
from autoscaler.errors import ConfigError
from autoscaler.model import Market, Sample
from autoscaler.sources import build_sources, combine
from metrics_sources import redis as redis_source
from metrics_sources.redis import RedisQueue, celery_keys
from tests.brokers import (
    REDIS_URL,
    free_port,
    garbage_server,
    require_redis,
    require_redis_server_binary,
    silent_server,
)

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
PASSWORD = "redis-pw-Zq8!hunter2"  # the private server's password: must never appear in an error
WRONG = "wrong-pw-Kx3$swordfish"
ALICE_PASSWORD = "alice-pw-7Yt#marlin"
SECRETS = (PASSWORD, WRONG, ALICE_PASSWORD)
TIMEOUT = 0.4
BOUND = TIMEOUT + 1.5  # a read bounded by TIMEOUT returns well within this, even on a loaded runner


def source(key: str, mode: str = "list", **kw: Any) -> RedisQueue:
    cfg = config.RedisSource(type="redis", name="jobs", key=key, mode=mode, **kw)
    return redis_source.build(cfg)


def assert_value(sample: Sample, value: float) -> None:
    assert sample.error == ""
    assert sample.value == value
    assert isinstance(sample.value, float)
    assert sample.observed_at == NOW


def assert_error(sample: Sample, *fragments: str) -> None:
    assert sample.value is None
    assert sample.observed_at is None
    assert sample.error.startswith("redis source 'jobs' ("), sample.error
    for fragment in fragments:
        assert fragment in sample.error, sample.error
    for secret in SECRETS:
        assert secret not in sample.error


# ---------------------------------------------------------------- the shared server


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    require_redis()
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def key(r: redis.Redis) -> Iterator[str]:
    """A unique key name; every key starting with it is deleted afterwards."""
    name = f"test-source-{uuid.uuid4().hex[:12]}"
    yield name
    doomed = list(r.scan_iter(match=f"{name}*"))
    if doomed:
        r.delete(*doomed)


def test_celery_key_layout_is_kombus() -> None:
    # kombu/transport/redis.py: sep = '\x06\x16', PRIORITY_STEPS = [0, 3, 6, 9], _q_for_pri(q, 0) = q.
    assert celery_keys("Q") == ["Q", "Q\x06\x163", "Q\x06\x166", "Q\x06\x169"]


def test_list_length(r: redis.Redis, key: str) -> None:
    src = source(key)
    assert_value(src.read(NOW), 0.0)  # a missing list is an empty one
    r.rpush(key, "a", "b", "c")
    assert_value(src.read(NOW), 3.0)
    r.lpop(key)
    assert_value(src.read(NOW), 2.0)


def test_celery_sums_the_priority_lists_in_one_round_trip(
    r: redis.Redis, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source(key, "celery")
    assert_value(src.read(NOW), 0.0)  # an empty Celery queue has no key at all
    r.rpush(key, *"ab")
    r.rpush(f"{key}\x06\x163", "c")
    r.rpush(f"{key}\x06\x169", *"defg")
    r.rpush(f"{key}\x06\x161", "not-a-step")  # not one of kombu's steps: not Celery's
    r.rpush(f"{key}:6", "other-separator")
    assert_value(src.read(NOW), 7.0)

    sends: list[int] = []
    original: Any = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    assert_value(src.read(NOW), 7.0)  # the connection is open: the four LLENs are one send, one answer
    assert len(sends) == 1


def test_sorted_set_cardinality(r: redis.Redis, key: str) -> None:
    src = source(key, "zset")
    assert_value(src.read(NOW), 0.0)
    r.zadd(key, {"a": 1, "b": 2, "c": 3})
    assert_value(src.read(NOW), 3.0)


def test_stream_group_backlog_is_lag_plus_pending(r: redis.Redis, key: str) -> None:
    ids = [r.xadd(key, {"n": i}) for i in range(5)]
    r.xgroup_create(key, "workers", id="0")
    src = source(key, "stream", group="workers")
    assert_value(src.read(NOW), 5.0)  # lag 5, nothing pending
    r.xreadgroup("workers", "w1", {key: ">"}, count=2)
    assert_value(src.read(NOW), 5.0)  # lag 3 + pending 2
    r.xack(key, "workers", ids[0])
    assert_value(src.read(NOW), 4.0)
    r.xadd(key, {"n": 5})
    assert_value(src.read(NOW), 5.0)


def test_stream_unknown_lag_reads_xlen_before_the_first_read_and_holds_after(r: redis.Redis, key: str) -> None:
    ids = [r.xadd(key, {"n": i}) for i in range(5)]
    r.xgroup_create(key, "workers", id="0")
    r.xdel(key, ids[2])  # an undelivered entry deleted: Redis no longer knows the lag
    assert r.xinfo_groups(key)[0]["lag"] is None
    src = source(key, "stream", group="workers")
    assert_value(src.read(NOW), 4.0)  # the group has read nothing: every entry left is undelivered (XLEN)

    r.xreadgroup("workers", "w1", {key: ">"}, count=1)
    r.xdel(key, ids[4])
    assert_error(src.read(NOW), "the lag of group 'workers' is unknown")


def test_missing_stream_or_group_is_an_error(r: redis.Redis, key: str) -> None:
    assert_error(source(key, "stream", group="workers").read(NOW), f"stream {key!r} does not exist")
    r.xadd(key, {"n": 1})
    r.xgroup_create(key, "others", id="0")
    assert_error(source(key, "stream", group="workers").read(NOW), "has no consumer group 'workers'")


def test_a_key_of_another_type_is_an_error(r: redis.Redis, key: str) -> None:
    r.set(key, "hello")
    assert_error(source(key).read(NOW), "not a list", "WRONGTYPE")
    assert_error(source(key, "zset").read(NOW), "not a sorted set")
    assert_error(source(key, "stream", group="g").read(NOW), "not a stream")


def test_stream_mode_without_a_group_is_refused_when_built() -> None:
    with pytest.raises(ConfigError, match="mode stream needs `group`"):
        source("k", "stream")


def test_build_sources_loads_the_module_and_a_failure_holds_the_pool() -> None:
    pool = config.Pool(
        name="p",
        max_capacity=4,
        targets=config.Targets(queue_per_unit=10),
        metrics=[
            config.RedisSource(
                type="redis", name="jobs", key="k", url=f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=1
            )
        ],
        candidates=[
            config.Candidate(cloud="simulated", instance_type="sim.l4x1", market=Market.ON_DEMAND, throughput=1)
        ],
    )
    (src,) = build_sources(pool, NOW)
    assert isinstance(src, RedisQueue)
    assert src.timeout_seconds == 1
    demand = combine(pool, [src.read(NOW)], NOW)
    assert demand.hold and demand.queue_depth is None
    assert "'jobs'" in demand.hold_reason and "cannot reach the server" in demand.hold_reason


# ---------------------------------------------------------------- broken servers


def test_server_down_is_an_error_at_once() -> None:
    started = time.monotonic()
    sample = source("k", url=f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=TIMEOUT).read(NOW)
    assert time.monotonic() - started < BOUND
    assert_error(sample, "cannot reach the server", "Connection refused")


def test_a_server_that_never_answers_times_out() -> None:
    with silent_server() as port:
        src = source("k", "celery", url=f"redis://127.0.0.1:{port}/0", timeout_seconds=TIMEOUT)
        for _ in range(2):  # the second read must not wait on a connection left over from the first
            started = time.monotonic()
            sample = src.read(NOW)
            assert time.monotonic() - started < BOUND
            assert_error(sample, "timed out after 0.4 s")


def test_a_server_answering_garbage_is_an_error() -> None:
    with garbage_server() as port:
        sample = source("k", url=f"redis://127.0.0.1:{port}/0", timeout_seconds=TIMEOUT).read(NOW)
    assert_error(sample)
    assert sample.error.split("): ", 1)[1]  # says what went wrong


# ---------------------------------------------------------------- a private server: TLS and a password


@dataclass
class PrivateRedis:
    port: int
    ca_file: Path
    admin: redis.Redis

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    binary = require_redis_server_binary()
    directory = tmp_path_factory.mktemp("redis-tls")
    ca, cert, key = _certificates(directory)
    port = free_port()
    # The password is the one secret on the command line: argv of a test process on a throwaway server.
    args = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
    args += ["--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no"]
    args += ["--dir", str(directory), "--logfile", str(directory / "redis.log")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    admin = redis.Redis(
        host="127.0.0.1", port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(ca), socket_timeout=5
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (directory / "redis.log").read_text(errors="replace")[-2000:]
                    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                    pytest.fail(f"the private redis-server (TLS) did not start: {stderr}{log}")
                time.sleep(0.05)
        admin_any: Any = admin
        admin_any.execute_command("ACL", "SETUSER", "alice", "on", f">{ALICE_PASSWORD}", "~*", "+@all")
        yield PrivateRedis(port, ca, admin)
    finally:
        admin.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def pkey(private_redis: PrivateRedis) -> Iterator[str]:
    name = f"test-tls-{uuid.uuid4().hex[:12]}"
    private_redis.admin.rpush(name, "a", "b")
    yield name
    private_redis.admin.delete(name)


def tls_source(server: PrivateRedis, key: str, **kw: Any) -> RedisQueue:
    kw.setdefault("ca_file", server.ca_file)
    kw.setdefault("timeout_seconds", 2.0)
    return source(key, url=server.url, **kw)


def test_tls_with_the_password_from_an_environment_variable(
    private_redis: PrivateRedis, pkey: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_REDIS_PW", PASSWORD)
    src = tls_source(private_redis, pkey, password=config.Secret(env="TEST_REDIS_PW"))
    assert_value(src.read(NOW), 2.0)


def test_tls_with_the_password_from_a_file(private_redis: PrivateRedis, pkey: str, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")  # the trailing line break is not part of it
    src = tls_source(private_redis, pkey, password=config.Secret(file=tmp_path / "pw"))
    assert_value(src.read(NOW), 2.0)


def test_an_acl_user_and_password(private_redis: PrivateRedis, pkey: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS_PW", ALICE_PASSWORD)
    src = tls_source(private_redis, pkey, username="alice", password=config.Secret(env="TEST_REDIS_PW"))
    assert_value(src.read(NOW), 2.0)


def test_a_wrong_or_missing_password_is_an_error_without_the_password(
    private_redis: PrivateRedis, pkey: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_REDIS_PW", WRONG)
    wrong = tls_source(private_redis, pkey, password=config.Secret(env="TEST_REDIS_PW")).read(NOW)
    assert_error(wrong, "authentication failed")
    assert_error(tls_source(private_redis, pkey).read(NOW), "authentication failed")  # none given
    # A password in the URL (against the advice) is used, and blanked from errors all the same.
    in_url = source(pkey, url=f"rediss://:{WRONG}@127.0.0.1:{private_redis.port}/0", ca_file=private_redis.ca_file)
    assert_error(in_url.read(NOW), "authentication failed")


def test_an_unavailable_secret_names_its_variable_or_file(
    private_redis: PrivateRedis, pkey: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_REDIS_PW_UNSET", raising=False)
    unset = tls_source(private_redis, pkey, password=config.Secret(env="TEST_REDIS_PW_UNSET")).read(NOW)
    assert_error(unset, "environment variable TEST_REDIS_PW_UNSET (the Redis password) is not set")
    missing = tmp_path / "no-such-file"
    gone = tls_source(private_redis, pkey, password=config.Secret(file=missing)).read(NOW)
    assert_error(gone, f"cannot read the Redis password from file {missing}: No such file or directory")
    (tmp_path / "empty").write_text("\n")
    empty = tls_source(private_redis, pkey, password=config.Secret(file=tmp_path / "empty")).read(NOW)
    assert_error(empty, "is empty")
    # The variable wins when both are given; the file is the fallback when it is unset.
    (tmp_path / "pw").write_text(PASSWORD)
    both = config.Secret(env="TEST_REDIS_PW_UNSET", file=tmp_path / "pw")
    assert_value(tls_source(private_redis, pkey, password=both).read(NOW), 2.0)


def test_tls_verification(private_redis: PrivateRedis, pkey: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS_PW", PASSWORD)
    secret = config.Secret(env="TEST_REDIS_PW")
    untrusted = tls_source(private_redis, pkey, password=secret, ca_file=None).read(NOW)
    assert_error(untrusted, "cannot reach the server", "CERTIFICATE_VERIFY_FAILED")
    unverified = tls_source(private_redis, pkey, password=secret, ca_file=None, verify_tls=False)
    assert_value(unverified.read(NOW), 2.0)
    plain = source(pkey, url=f"redis://127.0.0.1:{private_redis.port}/0", password=secret, timeout_seconds=TIMEOUT)
    assert_error(plain.read(NOW))  # plain text to a TLS port: an error, whatever the library calls it


def test_one_client_reconnects_and_rereads_the_password(
    private_redis: PrivateRedis, pkey: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(PASSWORD)
    src = tls_source(private_redis, pkey, password=config.Secret(file=secret_file))
    assert_value(src.read(NOW), 2.0)
    client = src._client
    assert_value(src.read(NOW), 2.0)
    assert src._client is client  # one client (and pool) per source

    # The server drops every connection (a restart, a failover): the next read reconnects by itself.
    private_redis.admin.client_kill_filter(_type="normal", skipme=True)
    assert_value(src.read(NOW), 2.0)

    # The password is rotated: the file is read again at the next connect, not cached from the first.
    rotated = PASSWORD + "-rotated"
    private_redis.admin.config_set("requirepass", rotated)
    try:
        private_redis.admin.client_kill_filter(_type="normal", skipme=True)
        assert_error(src.read(NOW), "authentication failed")
        secret_file.write_text(rotated)
        assert_value(src.read(NOW), 2.0)
    finally:
        private_redis.admin.config_set("requirepass", PASSWORD)
    assert src._client is client
