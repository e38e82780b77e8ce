"""TLS to Redis (``rediss://``), end to end, against certificates the test makes.

One redis-server for the module speaks only TLS and wants a client certificate
(mutual TLS).  Two gateway processes chat through it; chat-admin works over it;
each way the certificates can be wrong at start-up (a CA that did not sign
Redis's certificate, a host name the certificate does not name, no client
certificate, an unreadable file) is one line on stderr and exit status 2.  After
start-up, a failed handshake is a connection failure: logged and retried.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trio
import trustme

from services.admin.cli import main as admin_main
from services.common.config import parse_redis_url
from services.common.redis import RedisClient, stream_socket
from tests.common.test_redis_keepalive import assert_keepalive
from tests.conftest import StartGateway
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.processes import REPO
from tests.support.redis_server import TLSRedisServer
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TLSRedisServer]:
    with TLSRedisServer() as server:
        yield server


async def test_two_gateways_chat_over_mutual_tls(tls_redis: TLSRedisServer) -> None:
    procs = [GatewayProcess(tls_redis.url, f"tls-gw{i}", **_settings(tls_redis.tls_env))
             for i in (1, 2)]
    try:
        for proc in procs:
            proc.start()
        alice = await ChatClient.join(procs[0].port, "alice")
        bob = await ChatClient.join(procs[1].port, "bob")
        await alice.expect(r"^#lobby -- bob joined the chat!$")
        await alice.send("secret over tls")
        await bob.expect(r"^#lobby <alice> secret over tls$")
        # The gateways' connections are the certificate's: Redis lists them by name.
        with tls_redis.client() as rc:
            names = {c["name"] for c in rc.client_list()}
        assert {"chat:tls-gw1:cmd", "chat:tls-gw1:sub", "chat:tls-gw2:cmd"} <= names
        started = procs[0].wait_for_event("gateway.started")
        assert started["redis"].startswith("rediss://127.0.0.1:")
    finally:
        for proc in procs:
            proc.stop()
            proc.cleanup()


def _settings(env: dict[str, str]) -> dict[str, str]:
    return {name.removeprefix("CHAT_").lower(): value for name, value in env.items()}


def _run_gateway(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": "/usr/bin:/bin", "CHAT_LISTEN": "127.0.0.1:0", "CHAT_LOG_FORMAT": "json",
            **env}
    return subprocess.run([sys.executable, "-m", "services.gateway"], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong CA", "certificate verify failed"),
        ("host name mismatch", "Hostname mismatch"),
        ("no client certificate", "TLS to Redis at 127.0.0.1"),
        ("unreadable CA file", "cannot read CHAT_REDIS_TLS_CA"),
    ],
)
def test_a_certificate_problem_at_start_up_is_one_line_and_exit_2(
    tls_redis: TLSRedisServer, tmp_path: Path, case: str, message: str
) -> None:
    env = {"CHAT_REDIS_URL": tls_redis.url, **tls_redis.tls_env}
    if case == "wrong CA":
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        env["CHAT_REDIS_TLS_CA"] = str(other)
    elif case == "host name mismatch":  # the certificate names 127.0.0.1 only
        env["CHAT_REDIS_URL"] = f"rediss://localhost:{tls_redis.port}/0"
    elif case == "no client certificate":
        del env["CHAT_REDIS_TLS_CERT"], env["CHAT_REDIS_TLS_KEY"]
    else:
        env["CHAT_REDIS_TLS_CA"] = str(tmp_path / "missing.pem")
    result = _run_gateway(env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("chat-gateway: error: "), result.stderr
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "gateway.started" not in result.stdout  # it never began to serve


async def test_chat_admin_works_over_tls(
    tls_redis: TLSRedisServer, start_gateway: StartGateway, key_prefix: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in tls_redis.tls_env.items():
        monkeypatch.setenv(name, value)
    gw = await start_gateway(
        redis_url=tls_redis.url, redis_tls_ca=tls_redis.ca_file,
        redis_tls_cert=tls_redis.client_cert, redis_tls_key=tls_redis.client_key,
    )
    carol = await ChatClient.join(gw.ports[0], "carol")
    code = await trio.to_thread.run_sync(
        admin_main, ["--redis-url", tls_redis.url, "--key-prefix", key_prefix, "who"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "carol" in out
    await carol.aclose()


async def test_gateway_redis_sockets_over_tls_have_keepalive(
    tls_redis: TLSRedisServer, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(
        redis_url=tls_redis.url, redis_tls_ca=tls_redis.ca_file,
        redis_tls_cert=tls_redis.client_cert, redis_tls_key=tls_redis.client_key,
    )
    await wait_until(lambda: gw.redis._conn is not None and gw.subscriber._stream is not None)
    assert gw.redis._conn is not None and gw.subscriber._stream is not None
    for stream in (gw.redis._conn.stream, gw.subscriber._stream):
        assert isinstance(stream, trio.SSLStream)
        assert_keepalive(stream_socket(stream))


async def test_a_failed_handshake_after_start_up_is_logged_and_retried(
    tls_redis: TLSRedisServer,
) -> None:
    wrong = ssl.create_default_context()
    trustme.CA().configure_trust(wrong)
    client = RedisClient(parse_redis_url(tls_redis.url), name="chat:late:cmd", tls=wrong)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await wait_until(lambda: any(e["event"] == "redis.connect_failed" for e in logs))
            assert not client.connected
            nursery.cancel_scope.cancel()  # still retrying: run() did not raise
    failed = next(e for e in logs if e["event"] == "redis.connect_failed")
    assert "certificate verify failed" in failed["error"]
