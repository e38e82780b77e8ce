"""TLS for clients, end to end, against a certificate each test makes (trustme).

- A TLS client (Python's ``ssl`` through trio's ``SSLStream``) and a plain one
  chat with each other through one gateway; ``openssl s_client`` does too when
  installed.
- A TLS client that never handshakes is closed after the handshake deadline, a
  plain-text client on the TLS port is closed at once; both are logged and
  counted, and neither disturbs anyone else.
- Behind a PROXY-protocol proxy the header comes before the TLS bytes and the
  session gets the header's address, also through real HAProxy passing TLS
  through to the gateway's TLS port (deploy/haproxy/haproxy.cfg).
- TLS clients get the same admission ("server full") and drain.
- Bad TLS configuration is one line at start and exit status 2.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio
import trustme

from services.common.config import HostPort
from services.common.probes import free_ports
from services.common.processes import Process, wait_until
from tests.conftest import StartGateway
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.haproxy import HAPROXY_CFG, haproxy_env, haproxy_server_states
from tests.support.processes import REPO
from tests.support.redis_server import RedisServer

TLS_ANY_PORT = HostPort("127.0.0.1", 0)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    """The server's certificate chain and key as PEM files (for localhost and 127.0.0.1)."""
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return str(cert), str(key)


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def failures(gw: object, reason: str) -> float:
    counter = gw.metrics.tls_handshake_failures_total  # type: ignore[attr-defined]
    return float(counter.labels(reason=reason)._value.get())


async def test_tls_and_plain_clients_chat_together(
    start_gateway: StartGateway, cert_files: tuple[str, str], client_context: ssl.SSLContext
) -> None:
    cert, key = cert_files
    gw = await start_gateway(tls_listen=TLS_ANY_PORT, tls_cert=cert, tls_key=key)
    assert gw.tls_ports and gw.tls_ports[0] != gw.ports[0]
    secure = await ChatClient.join(gw.tls_ports[0], "secure", tls=client_context)
    plain = await ChatClient.join(gw.ports[0], "plain")
    await secure.send("over tls \u202e")
    await plain.expect(r"^#lobby <secure> over tls <U\+202E>$")
    await plain.send("in the clear")
    await secure.expect(r"^#lobby <plain> in the clear$")
    await plain.send("/msg secure psst")
    await secure.expect(r"^@secure <plain> psst$")
    # A line split across TLS records and an over-long line behave as in plain text.
    await secure.send(b"split ")
    await secure.send(b"line\r\n" + b"x" * 5000 + b"\n")
    await plain.expect(r"^#lobby <secure> split line$")
    await secure.expect(r"^!! line too long")
    await secure.send("/quit bye")
    lines = await secure.read_until_closed()
    assert lines[-1] == "== bye"
    await plain.expect(r"^#lobby -- secure left the chat! \(bye\)$")
    await plain.aclose()


async def test_a_silent_or_plain_text_client_on_the_tls_port_is_closed_and_counted(
    start_gateway: StartGateway, cert_files: tuple[str, str], client_context: ssl.SSLContext
) -> None:
    cert, key = cert_files
    gw = await start_gateway(tls_listen=TLS_ANY_PORT, tls_cert=cert, tls_key=key,
                             tls_handshake_timeout_s=0.5)
    port = gw.tls_ports[0]
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    talker = await trio.open_tcp_stream("127.0.0.1", port)
    await talker.send_all(b"alice\nhello\n")
    with trio.fail_after(5):  # closed at once: no TLS record
        assert await talker.receive_some(100) == b""
    assert failures(gw, "error") == 1
    # Meanwhile a real TLS client gets in and is served.
    real = await ChatClient.join(port, "real", tls=client_context)
    with trio.fail_after(5):  # closed after the 0.5 s deadline, without a byte
        assert await silent.receive_some(100) == b""
    assert failures(gw, "timeout") == 1
    assert len(gw.sessions) == 1
    await real.send("still fine")
    await real.expect(r"^#lobby <real> still fine$")
    # A client that does not trust the certificate fails its own handshake.
    with pytest.raises(trio.BrokenResourceError):
        await ChatClient.connect_tls(port, ssl.create_default_context())
    await real.aclose()
    for stream in (silent, talker):
        await stream.aclose()


async def test_tls_clients_get_the_same_admission_and_drain(
    start_gateway: StartGateway, cert_files: tuple[str, str], client_context: ssl.SSLContext
) -> None:
    cert, key = cert_files
    gw = await start_gateway(tls_listen=TLS_ANY_PORT, tls_cert=cert, tls_key=key, max_clients=1)
    port = gw.tls_ports[0]
    first = await ChatClient.join(port, "first", tls=client_context)
    refused = await ChatClient.connect_tls(port, client_context)
    lines = await refused.read_until_closed()
    assert lines == ["!! disconnected: server full; try again later"]
    await gw.drain()
    lines = await first.read_until_closed()
    assert lines[-1].startswith("!! disconnected: this gateway is shutting down")
    with pytest.raises(OSError):  # the TLS listener is closed too
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_connections_still_in_their_tls_handshake_count_against_their_address(
    start_gateway: StartGateway, cert_files: tuple[str, str], client_context: ssl.SSLContext
) -> None:
    """Sockets that never start their handshake hold their address's connection
    slots (they are admitted before the handshake), so one address cannot pile
    them up; a refused TLS client is still told why, over TLS; another address
    gets in."""
    cert, key = cert_files
    gw = await start_gateway(tls_listen=TLS_ANY_PORT, tls_cert=cert, tls_key=key,
                             max_connections_per_ip=3, tls_handshake_timeout_s=30)
    port = gw.tls_ports[0]
    silent = [await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.7")
              for _ in range(3)]
    refused = await ChatClient.connect_tls(port, client_context, source="127.0.0.7")
    lines = await refused.read_until_closed()
    assert lines == ["!! disconnected: too many connections from your address (3, at most 3)"]
    other = await ChatClient.join(port, "other", tls=client_context, source="127.0.0.8")
    await other.send("fine")
    await other.expect(r"^#lobby <other> fine$")
    for stream in silent:
        await stream.aclose()
    await other.aclose()


class HeaderFirst(trio.abc.Stream):
    """A client transport that sends a PROXY header in the same write as the
    first TLS bytes (the ClientHello), as a proxy may: the gateway then reads
    TLS bytes together with the header and must hand them to the handshake."""

    def __init__(self, stream: trio.SocketStream, header: bytes) -> None:
        self.stream, self.header = stream, header

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data, self.header = self.header + bytes(data), b""
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.mark.parametrize("together", [False, True])
async def test_proxy_header_before_tls_gives_the_real_client_address(
    start_gateway: StartGateway, cert_files: tuple[str, str], client_context: ssl.SSLContext,
    together: bool,
) -> None:
    cert, key = cert_files
    gw = await start_gateway(tls_listen=TLS_ANY_PORT, tls_cert=cert, tls_key=key,
                             proxy_protocol=True)
    raw = await trio.open_tcp_stream("127.0.0.1", gw.tls_ports[0])
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 7000\r\n"
    transport: trio.abc.Stream = raw
    if together:
        transport = HeaderFirst(raw, header)
    else:
        await raw.send_all(header)
    stream = trio.SSLStream(transport, client_context, server_hostname="localhost")
    try:
        await stream.do_handshake()
        await stream.send_all(b"proxied\n")
        with trio.fail_after(10):
            received = b""
            while b"== welcome, proxied!" not in received:
                received += await stream.receive_some(65536)
        peers = {session.peer for session in gw.sessions}
        assert peers == {"192.0.2.7:40000"}
    finally:
        await trio.aclose_forcefully(stream)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_openssl_s_client_chats(
    start_gateway: StartGateway, cert_files: tuple[str, str], ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = cert_files
    gw = await start_gateway(tls_listen=TLS_ANY_PORT, tls_cert=cert, tls_key=key)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    watcher = await ChatClient.join(gw.ports[0], "watcher")
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.tls_ports[0]}", "-quiet",
               "-verify_return_error", "-CAfile", str(ca_file), "-servername", "localhost"]
    with trio.fail_after(20):
        result = await trio.run_process(
            command, stdin=b"carol\nhello from openssl\n/quit\n", capture_stdout=True,
            capture_stderr=True, check=False,
        )
    out = result.stdout.decode()
    assert "== welcome, carol!" in out, (out, result.stderr)
    assert out.endswith("== bye\r\n")
    await watcher.expect(r"^#lobby <carol> hello from openssl$")
    await watcher.aclose()


def run_gateway(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        cwd=REPO, env=full, capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.fixture
def bad_files(ca: trustme.CA, tmp_path: Path) -> Iterator[dict[str, str]]:
    one, other = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    files = {
        "cert": one.cert_chain_pems[0].bytes(),
        "other_key": other.private_key_pem.bytes(),
        "garbage": b"not a pem file\n",
    }
    paths = {}
    for name, data in files.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = str(path)
    paths["missing"] = str(tmp_path / "missing.pem")
    paths["directory"] = str(tmp_path)  # exists, cannot be read as a file (even by root)
    yield paths


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("", "", "CHAT_TLS_LISTEN needs both CHAT_TLS_CERT and CHAT_TLS_KEY"),
        ("missing", "other_key", "cannot read CHAT_TLS_CERT"),
        ("cert", "missing", "cannot read CHAT_TLS_KEY"),
        ("cert", "directory", "cannot read CHAT_TLS_KEY"),
        ("cert", "other_key", "are not a usable PEM certificate chain"),
        ("garbage", "other_key", "are not a usable PEM certificate chain"),
        ("cert", "garbage", "are not a usable PEM certificate chain"),
    ],
)
def test_bad_tls_configuration_is_one_line_and_exit_2(
    bad_files: dict[str, str], cert: str, key: str, message: str
) -> None:
    env = {"CHAT_TLS_LISTEN": "127.0.0.1:0", "CHAT_REDIS_URL": "redis://127.0.0.1:1/0"}
    if cert:
        env["CHAT_TLS_CERT"] = bad_files[cert]
    if key:
        env["CHAT_TLS_KEY"] = bad_files[key]
    result = run_gateway(env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("chat-gateway: error: ")
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_tls_through_haproxy_with_proxy_v2_keeps_the_real_address(
    redis_server: RedisServer, cert_files: tuple[str, str], client_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    """HAProxy as deployed (TCP mode, send-proxy-v2), its backend pointed at the
    gateway's TLS port: the encrypted bytes pass through, the gateway reads the
    PROXY v2 header, then the handshake, and logs the client's own address."""
    cert, key = cert_files
    lb_port, tls_port, http_port = free_ports(3)
    settings = {"http_port": http_port, "proxy_protocol": "true", "trusted_proxies": "127.0.0.1/32",
                "tls_listen": f"127.0.0.1:{tls_port}", "tls_cert": cert, "tls_key": key}
    with ExitStack() as stack:
        gw = stack.enter_context(GatewayProcess(redis_server.url, "tlsgw", **settings)).start(20)
        assert gw.wait_for_event("gateway.started")["tls_ports"] == [tls_port]
        sock = tmp_path / "haproxy.sock"
        env = haproxy_env(lb_port, [(tls_port, http_port)], sock)
        argv = [shutil.which("haproxy") or "haproxy", "-db", "-f", str(HAPROXY_CFG)]
        stack.enter_context(Process("haproxy", argv, env=env, cwd=REPO))
        wait_until(lambda: haproxy_server_states(sock) == {"gw1": "UP"}, 15, "gw1 UP")
        with (
            socket.create_connection(("127.0.0.1", lb_port), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            local_port = tls.getsockname()[1]
            tls.sendall(b"viaproxy\nhello through haproxy\n/quit\n")
            received = b""
            while not received.endswith(b"== bye\r\n"):
                data = tls.recv(65536)
                if not data:
                    break
                received += data
        assert b"#lobby <viaproxy> hello through haproxy\r\n" in received, received
        connected = gw.wait_for_event("client.connected", 5, peer=f"127.0.0.1:{local_port}")
        assert connected["peer"] == f"127.0.0.1:{local_port}"
