"""In-process gateways on port 0 against a real Redis: the session behaviour."""

from __future__ import annotations

import contextlib
import json
import re
import time

import redis
import trio

from services.common.names import fold_nick
from tests.conftest import StartGateway
from tests.support.chat_client import ChatClient
from tests.support.redis_server import RedisServer, free_port
from tests.support.waiting import wait_until, wait_until_sync


async def test_greeting_prompt_and_join(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    client = await ChatClient.connect(gw.ports[0])
    assert (await client.expect(r"^== ")).startswith("== welcome to the chat")
    await client.expect(r"^\?\? Choose a nickname:$")
    await client.send("alice")
    await client.expect(r"^== welcome, alice! You are in #lobby")
    await client.expect(r"^#lobby -- alice joined the chat!$")
    await client.aclose()


async def test_nickname_sent_before_prompt_is_accepted(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    stream = await trio.open_tcp_stream("127.0.0.1", gw.ports[0])
    await stream.send_all(b"early\nhello\n")  # before reading anything
    client = ChatClient(stream)
    await client.expect(r"^#lobby <early> hello$")
    await client.aclose()


async def test_taken_nickname_is_refused_case_insensitively_then_retry(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    gw1 = await start_gateway()
    gw2 = await start_gateway()
    alice = await ChatClient.join(gw1.ports[0], "Alice")
    other = await ChatClient.connect(gw2.ports[0])
    await other.send("aLiCe")
    await other.expect(r'^!! nickname "aLiCe" is taken, choose another$')
    await other.expect(r"^\?\? Choose a nickname:$")
    await other.send("bob")
    await other.expect(r"^== welcome, bob!")
    assert rc.hget(f"{key_prefix}nicks", fold_nick("alice")) == f"{gw1.incarnation} Alice".encode()
    assert rc.hget(f"{key_prefix}nicks", "bob") == f"{gw2.incarnation} bob".encode()
    assert rc.smembers(f"{key_prefix}gw:{gw1.incarnation}:nicks") == {fold_nick("alice").encode()}
    await alice.aclose()
    await other.aclose()


async def test_invalid_nickname_gets_error_and_new_prompt(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    client = await ChatClient.connect(gw.ports[0])
    await client.send("9lives")
    await client.expect(r"^!! invalid nickname: .*digit")
    await client.send("x" * 40)
    await client.expect(r"^!! invalid nickname: .*32")
    await client.send("has space")  # "NICK PASSWORD" logs in to a registered nickname
    await client.expect(r"^!! has is not registered \(a nickname is one word")
    await client.expect(r"^\?\? Choose a nickname:")
    await client.send("fine")
    await client.expect(r"^== welcome, fine!")
    await client.aclose()


async def test_relay_across_gateways_exactly_once_in_order(start_gateway: StartGateway) -> None:
    gw1 = await start_gateway(flood_burst=1000)
    gw2 = await start_gateway()
    sender = await ChatClient.join(gw1.ports[0], "sender")
    local = await ChatClient.join(gw1.ports[0], "local")
    remote = await ChatClient.join(gw2.ports[0], "remote")
    for i in range(100):
        await sender.send(f"message {i}")
    await sender.send("/quit")
    for client in (sender, local, remote):
        if client is sender:
            await client.expect(r"^== bye$")
        else:
            await client.expect(r"^#lobby -- sender left the chat!")
        received = [m for m in client.lines if m.startswith("#lobby <sender> ")]
        assert len(received) == 100, (client.nick, client.lines[-5:])
        assert received == [f"#lobby <sender> message {i}" for i in range(100)]
    await local.aclose()
    await remote.aclose()


async def test_join_and_leave_reach_other_gateways(start_gateway: StartGateway) -> None:
    gw1 = await start_gateway()
    gw2 = await start_gateway()
    watcher = await ChatClient.join(gw1.ports[0], "watcher")
    bob = await ChatClient.join(gw2.ports[0], "bob")
    await watcher.expect(r"^#lobby -- bob joined the chat!$")
    await bob.aclose()  # an unclean close: no /quit
    await watcher.expect(r"^#lobby -- bob left the chat!$")
    await watcher.aclose()


async def test_commands_help_who_quit_unknown(start_gateway: StartGateway) -> None:
    gw1 = await start_gateway()
    gw2 = await start_gateway()
    a = await ChatClient.join(gw1.ports[0], "amy")
    b = await ChatClient.join(gw2.ports[0], "Ben")
    await a.send("/help")
    await a.expect(r"^== commands:")
    await a.expect(r"^==   /who")
    await a.send("/WHO")
    await a.expect(r"^== 2 online: amy, Ben$")
    await a.send("/frobnicate now")
    await a.expect(r"^!! unknown command /frobnicate; type /help for the list$")
    await a.send("//not a command")
    await b.expect(r"^#lobby <amy> /not a command$")
    await a.send("/quit")
    await a.expect(r"^== bye$")
    await a.read_until_closed()
    await b.aclose()


async def test_bad_lines_get_errors_and_are_never_relayed(start_gateway: StartGateway) -> None:
    gw = await start_gateway(max_line_bytes=100)
    sender = await ChatClient.join(gw.ports[0], "sender")
    reader = await ChatClient.join(gw.ports[0], "reader")
    await sender.send(b"A" * 101 + b"\n")
    await sender.expect(r"^!! line too long \(max 100 bytes\); it was not sent$")
    await sender.send(b"B" * 60 + b"\xff\xfe" + b"\n")
    await sender.expect(r"^!! line is not valid UTF-8")
    await sender.send(b"\x1b[2J\x1b[31mCLEAR\n")
    await sender.expect(r"^!! line contains control characters")
    # An overlong line split over many writes: no part of it may leak through.
    for _ in range(10):
        await sender.send(b"C" * 50)
    await sender.send(b"\n")
    await sender.expect(r"^!! line too long")
    await sender.send("marker")
    await reader.expect(r"^#lobby <sender> marker$")
    relayed = [m for m in reader.lines if m.startswith("#lobby <sender>")]
    assert relayed == ["#lobby <sender> marker"]
    assert not any("\x1b" in m for m in reader.lines)
    await sender.aclose()
    await reader.aclose()


async def test_garbage_client_harms_no_one(start_gateway: StartGateway) -> None:
    gw = await start_gateway(max_line_bytes=200)
    a = await ChatClient.join(gw.ports[0], "a")
    b = await ChatClient.join(gw.ports[0], "b")
    garbage = await ChatClient.connect(gw.ports[0])
    import random

    rng = random.Random(7)
    # Before a nickname only a few lines are taken: the gateway cuts it off early.
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        for _ in range(200):
            await garbage.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600))))
    await a.send("still here")
    await b.expect(r"^#lobby <a> still here$")
    await garbage.aclose()
    await a.send("and now")
    await b.expect(r"^#lobby <a> and now$")
    await a.aclose()
    await b.aclose()


async def test_disconnect_mid_handshake_or_mid_line_leaves_no_trace(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    gw = await start_gateway()
    half = await ChatClient.connect(gw.ports[0])
    await half.send(b"carol")  # no newline: never a nickname
    await half.expect(r"^\?\? ")
    await half.aclose()
    joined = await ChatClient.join(gw.ports[0], "dave")
    await joined.send(b"half a line with no end")
    await wait_until_sync(lambda: rc.hexists(f"{key_prefix}nicks", "dave"))
    await joined.aclose()
    await wait_until_sync(lambda: not rc.exists(f"{key_prefix}nicks"))
    await wait_until(lambda: not gw.sessions)
    assert rc.smembers(f"{key_prefix}gw:{gw.incarnation}:nicks") == set()
    assert rc.hgetall(f"{key_prefix}room:#lobby:members") == {}
    assert not rc.exists(f"{key_prefix}nick:dave:rooms")


async def test_slow_consumer_is_cut_and_others_keep_receiving(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    gw = await start_gateway(outbox_bytes=64 * 1024, flood_burst=100000, flood_rate=100000)
    slow = await ChatClient.join(gw.ports[0], "slow")
    fast = await ChatClient.join(gw.ports[0], "fast")
    sender = await ChatClient.join(gw.ports[0], "sender")
    line = "x" * 1000
    sent = 0

    async def keep_reading(client: ChatClient) -> None:
        while True:
            await client.expect(r"^#lobby <sender> ")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_reading, fast)
        nursery.start_soon(keep_reading, sender)
        # `slow` never reads; kernel buffers fill, then its outbox overflows.
        with trio.fail_after(60):
            while rc.hexists(f"{key_prefix}nicks", "slow"):
                await sender.send(f"{sent} {line}")
                sent += 1
        await sender.send("after")
        nursery.cancel_scope.cancel()
    await fast.expect(r"^#lobby <sender> after$")
    fast_msgs = [m for m in fast.lines if m.startswith("#lobby <sender> ")]
    assert len(fast_msgs) == sent + 1  # nothing lost for the client that reads
    # The leave was published in the same atomic step that released the nickname,
    # so it came before "after".
    assert any(m.startswith("#lobby -- slow left the chat!") for m in fast.lines)
    lines = await slow.read_until_closed(timeout=30)
    assert re.match(r"^!! disconnected: output buffer full", lines[-1]), lines[-3:]
    await fast.aclose()
    await sender.aclose()


async def test_redis_unreachable_at_start_then_recovers(start_gateway: StartGateway) -> None:
    port = free_port()
    gw = await start_gateway(
        redis_url=f"redis://127.0.0.1:{port}/0", wait_available=False, redis_timeout_s=0.5
    )
    client = await ChatClient.connect(gw.ports[0])
    await client.expect(r"^!! chat is unavailable right now")
    await client.send("eve")
    await client.expect(r"^!! chat is unavailable right now")
    await client.expect(r"^\?\? Choose a nickname:$")
    with RedisServer(port=port):
        await wait_until(lambda: gw.available, timeout=15)
        await client.send("eve")
        await client.expect(r"^== welcome, eve!")
        await client.expect(r"^#lobby -- eve joined the chat!$")
        await client.aclose()
        await wait_until(lambda: not gw.sessions)


async def test_flood_control_refuses_lines_over_the_burst(start_gateway: StartGateway) -> None:
    gw = await start_gateway(flood_burst=4, flood_rate=0.01)  # the nickname costs one
    a = await ChatClient.join(gw.ports[0], "flooder")
    b = await ChatClient.join(gw.ports[0], "victim")
    for i in range(5):
        await a.send(f"line {i}")
    await a.send("/who")  # commands spend the same budget
    # The first refusal is told at once, the next two in one notice a second later.
    await a.expect(r"^!! too many lines, slow down; your line was not sent$")
    await a.expect(r"^!! too many lines, slow down; 2 lines were not sent$")
    assert not any(line.startswith("== 2 online") for line in a.lines)
    relayed = [m for m in a.lines if m.startswith("#lobby <flooder>")]
    assert relayed == ["#lobby <flooder> line 0", "#lobby <flooder> line 1", "#lobby <flooder> line 2"]
    await b.expect(r"^#lobby <flooder> line 2$")
    await a.aclose()
    await b.aclose()


def _payload(epoch: str, seq: int, room: str, nick: str, text: str) -> str:
    body = json.dumps({"k": "msg", "n": nick, "x": text, "g": "elsewhere~1", "t": time.time()})
    return f"{epoch} {seq} {room} {body}"


async def test_a_new_epoch_is_delivered_from_its_first_line(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    """Redis restarted empty: the first publication this gateway receives under the
    new epoch is seq 3 (it was resubscribing while 1 and 2 went out).  It must fill
    1 and 2 from the room's log before delivering 3, never start counting at 3."""
    gw = await start_gateway()
    alice = await ChatClient.join(gw.ports[0], "alice")
    p = key_prefix
    old_epoch = rc.get(f"{p}epoch")
    assert old_epoch is not None
    new_epoch = str(int(old_epoch) + 1_000_000)
    lines = [_payload(new_epoch, i, "#lobby", "bob", f"new {i}") for i in (1, 2, 3)]
    rc.set(f"{p}epoch", new_epoch)
    rc.set(f"{p}room:#lobby:seq", 3)
    rc.rpush(f"{p}room:#lobby:log", *lines)
    rc.publish(f"{p}room:#lobby", lines[2])  # 1 and 2 were never seen live
    await alice.expect(r"^#lobby <bob> new 3$")
    got = [m for m in alice.lines if m.startswith("#lobby <bob>")]
    assert got == ["#lobby <bob> new 1", "#lobby <bob> new 2", "#lobby <bob> new 3"]
    # An older epoch's publication arriving late is not taken for a new numbering.
    rc.publish(f"{p}room:#lobby", _payload(old_epoch.decode(), 99, "#lobby", "bob", "stale"))
    rc.set(f"{p}room:#lobby:seq", 4)
    line4 = _payload(new_epoch, 4, "#lobby", "bob", "new 4")
    rc.rpush(f"{p}room:#lobby:log", line4)
    rc.publish(f"{p}room:#lobby", line4)
    await alice.expect(r"^#lobby <bob> new 4$")
    assert not any("stale" in m for m in alice.lines)
    await alice.aclose()


async def test_malformed_bus_messages_are_dropped_and_the_gateway_keeps_serving(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    """One bad message on any channel (a buggy tool, a hand-typed PUBLISH) is logged
    and dropped; it never ends the subscriber's reader or the process."""
    gw = await start_gateway()
    alice = await ChatClient.join(gw.ports[0], "alice")
    node = f"{key_prefix}node:{gw.incarnation}"
    for channel, data in [
        (f"{key_prefix}all", "[1]"),
        (f"{key_prefix}all", '{"t": "announce"}'),
        (f"{key_prefix}all", "\xff not json"),
        (node, '{"t": "pm", "to": 5}'),
        (node, '{"t": "kick"}'),
        (node, '{"t": "no-such-type"}'),
        (f"{key_prefix}room:#lobby", "garbage"),
        (f"{key_prefix}room:#lobby", "1 x #lobby {}"),
    ]:
        rc.publish(channel, data)
    await alice.send("still here")
    await alice.expect(r"^#lobby <alice> still here$")
    await wait_until(lambda: gw.ready()[0])
    assert not any(line.startswith("!!") for line in alice.lines)
    await alice.aclose()
