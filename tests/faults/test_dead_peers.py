"""Half-open and silent clients: TCP keepalive, idle and nickname timeouts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
import redis
import trio

from services.common.names import fold_nick
from tests.conftest import StartGateway
from tests.support.chat_client import ChatClient
from tests.support.waiting import wait_until, wait_until_sync


async def test_client_sockets_have_tcp_keepalive(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    client = await ChatClient.join(gw.ports[0], "kept")
    (session,) = gw.sessions
    stream = session.stream
    assert stream.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1  # type: ignore[attr-defined]
    assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60  # type: ignore[attr-defined]
    await client.aclose()


def _iptables_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        return False
    listed = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, check=False)
    return listed.returncode == 0


@pytest.mark.skipif(
    not _iptables_usable(),
    reason="making a TCP peer stop answering takes root and a usable iptables"
    " (.ci/run installs it)",
)
async def test_a_peer_that_stops_answering_is_closed_by_keepalive_and_a_quiet_one_is_not(
    start_gateway: StartGateway,
) -> None:
    """Keepalive, not an idle timeout, finds dead peers: a client whose host stops
    answering (its packets dropped from now on) is closed after the probes, while
    one that is as silent but alive stays."""
    gw = await start_gateway(keepalive_idle_s=1, keepalive_interval_s=1, keepalive_count=2)
    watcher = await ChatClient.join(gw.ports[0], "watcher")
    quiet = await ChatClient.join(gw.ports[0], "quiet")
    gone = await ChatClient.join(gw.ports[0], "gone")
    client_port = gone.stream.socket.getsockname()[1]
    # Only this connection's packets towards the gateway: its ACKs of the probes.
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(client_port),
            "--dport", str(gw.ports[0]), "-j", "DROP"]
    await trio.run_process(["iptables", "-I", *rule])
    try:
        await watcher.expect(r"^#lobby -- gone left the chat!$", timeout=20)
    finally:
        with trio.CancelScope(shield=True):
            await trio.run_process(["iptables", "-D", *rule])
    await watcher.send("/who")
    await watcher.expect(r"^== 2 online: quiet, watcher$")  # as silent, but answering
    await quiet.send("still here")
    await watcher.expect(r"^#lobby <quiet> still here$")


async def test_idle_timeout_disconnects_with_a_reason(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    gw = await start_gateway(idle_timeout_s=0.5)
    quiet = await ChatClient.join(gw.ports[0], "quiet")
    lines = await quiet.read_until_closed(timeout=10)
    assert lines[-1] == "!! disconnected: idle for 0.5s"
    await wait_until_sync(lambda: not rc.hexists(f"{key_prefix}nicks", fold_nick("quiet")))


async def test_nick_timeout_disconnects_clients_that_never_choose(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(nick_timeout_s=0.5)
    silent = await ChatClient.connect(gw.ports[0])
    lines = await silent.read_until_closed(timeout=10)
    assert lines[-1] == "!! disconnected: no nickname chosen in 0.5s"
    await wait_until(lambda: not gw.sessions)


async def test_nick_timeout_is_not_reset_by_rejected_attempts(start_gateway: StartGateway) -> None:
    # Neither the line limit nor the flood budget may end it first: the timer is under test.
    gw = await start_gateway(nick_timeout_s=1.0, max_lines_before_nick=100000,
                             flood_burst=100000, flood_rate=100000)
    pest = await ChatClient.connect(gw.ports[0])
    with trio.fail_after(10):
        while not pest.closed:
            try:
                await pest.send("9invalid")
                await pest.expect(r"^(!! |\?\? )", timeout=0.5)
            except (trio.BrokenResourceError, trio.TooSlowError, EOFError):
                break
    lines = await pest.read_until_closed(timeout=10)
    assert lines[-1] == "!! disconnected: no nickname chosen in 1s"
