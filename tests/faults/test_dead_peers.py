"""Half-open and silent clients: TCP keepalive, idle and nickname timeouts."""

from __future__ import annotations

import socket

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
    gw = await start_gateway(nick_timeout_s=1.0)
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
