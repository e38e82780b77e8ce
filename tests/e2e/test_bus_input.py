"""Malformed and hostile bus input against a live gateway process.

redis-py (not the product's client) PUBLISHes many malformed shapes to every
channel the gateway listens on: the room channel of a room with a local member,
the gateway's node channel and the all-gateways channel.  Each is counted,
logged at most once per interval and dropped; the process stays up and its
clients keep chatting.  Hostile but well-formed messages (bidirectional and
invisible characters, a lone surrogate, newlines) reach clients made visible.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable

import pytest
import trio

from services.common.keys import Keys
from services.common.probes import http_get
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

PREFIX = "bus:"

JSON_SHAPES: list[bytes] = [
    b"[1]", b"1", b"null", b'"text"', b"{}", b"not json", b"", b"\xff\xfe\x00", b"{",
    b'{"t":1}', b'{"t":null}', b'{"t":["kick"]}', b'{"t":"kick"}', b'{"t":"kick","nick":5}',
    b'{"t":"kick","nick":"x","reason":{}}', b'{"t":"pm","to":"alice"}',
    b'{"t":"pm","to":"alice","from":"x","text":7}', b'{"t":"announce"}',
    b'{"t":"announce","text":[1]}', b'{"t":"announce","text":"\xc3\x28"}', b'{"t":"nope"}',
    b"[" * 100_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    b'{"t":"announce","text":"' + b"x" * 300_000 + b'"}',
    b'{"t":"pm","to":"alice","from":"' + b"n" * 1000 + b'","text":"hi"}',
    b'{"t":"canary"', "[1]".encode("utf-16"),
]
ROOM_SHAPES: list[bytes] = [
    b"", b"1", b"1 2", b"1 2 #lobby", b"a b #lobby {}", b"1 2 #lobby [1]", b"1 2 #lobby {}",
    b'1 2 #lobby {"k":1,"n":"x"}', b'1 2 #lobby {"k":"msg","n":"x","t":"now"}',
    b'1 2 #lobby {"k":"msg","n":"x","t":1e999}', b"1 " + b"9" * 5000 + b' #lobby {"k":"msg"}',
    b"1 2 #lobby " + b"[" * 100_000, b'1 2 #lobby {"k":"msg","n":"\xff"}',
    b'1 2 #lobby {"k":"msg","n":"x","x":"' + b"y" * 300_000 + b'"}', b"\x00\x01\x02",
    *(b"1 2 #lobby " + shape for shape in JSON_SHAPES[:12]),
]


def metric(port: int, name: str) -> float:
    _, body = http_get(port, "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


@pytest.fixture
def gateway(redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
            ) -> GatewayProcess:
    return gateway_procs(redis_server.url, "bus1", key_prefix=PREFIX, http_port=0)


async def test_malformed_messages_on_every_channel_are_dropped_and_chat_goes_on(
    redis_server: RedisServer, gateway: GatewayProcess
) -> None:
    alice = await ChatClient.join(gateway.port, "alice")
    bob = await ChatClient.join(gateway.port, "bob")
    keys = Keys(PREFIX)
    channels = {
        keys.room_channel("#lobby"): ROOM_SHAPES,
        keys.node_channel(gateway.incarnation): JSON_SHAPES,
        keys.all_channel: JSON_SHAPES,
    }
    oracle = redis_server.client()
    sent = 0
    for channel, shapes in channels.items():
        for shape in shapes:
            assert oracle.publish(channel, shape) == 1, channel  # the gateway listens
            sent += 1
    assert gateway.http_port is not None
    port = gateway.http_port
    with trio.fail_after(15):
        while metric(port, "chat_bus_malformed_total") < sent:
            await trio.sleep(0.05)
    assert metric(port, "chat_bus_malformed_total") == sent

    # Still serving: the members chat, a newcomer gets in, the canary comes back.
    await alice.send("still here")
    await bob.expect(r"^#lobby <alice> still here$")
    carol = await ChatClient.join(gateway.port, "carol")
    await carol.send("me too")
    await alice.expect(r"^#lobby <carol> me too$")
    assert gateway.proc is not None and gateway.proc.poll() is None
    status, _ = http_get(port, "/readyz")
    assert status == 200

    events = gateway.records()
    malformed = [e for e in events if e["event"] == "bus.malformed"]
    # Rate limited: everything arrived within one interval, so one line.
    assert 1 <= len(malformed) <= 2, malformed
    assert not [e for e in events if e["event"] == "bus.handler_failed"]
    assert all(len(e["error"]) <= 200 for e in malformed)
    assert "Traceback" not in gateway.log_path.read_text()
    oracle.close()
    for client in (alice, bob, carol):
        assert not [line for line in client.lines if "announcement" in line]


async def test_hostile_but_well_formed_texts_reach_clients_made_visible(
    redis_server: RedisServer, gateway: GatewayProcess
) -> None:
    alice = await ChatClient.join(gateway.port, "alice")
    keys = Keys(PREFIX)
    oracle = redis_server.client()
    hostile = "a\u202eb\u2028c\u200bd\ufeffe\u00adf\nrm -rf\r\x1b[2Jg\ud800h"
    oracle.publish(keys.all_channel, json.dumps({"t": "announce", "text": hostile}))
    oracle.publish(keys.node_channel(gateway.incarnation),
                   json.dumps({"t": "pm", "to": "allce", "from": "m\u202eallory", "text": hostile}))
    oracle.publish(keys.node_channel(gateway.incarnation),
                   json.dumps({"t": "kick", "nick": "alice", "reason": hostile}))
    lines = await alice.read_until_closed(timeout=10)
    visible = ("a<U+202E>b<U+2028>c<U+200B>d<U+FEFF>e<U+00AD>f<U+000A>rm -rf<U+000D>"
               "<U+001B>[2Jg<U+D800>h")
    assert f"== announcement: {visible}" in lines
    assert f"@alice <m<U+202E>allory> {visible}" in lines
    assert lines[-1] == f"!! disconnected: kicked by an operator: {visible}"
    for line in lines:
        assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in line)
    assert re.search(r'"event": "bus.malformed"', gateway.log_path.read_text()) is None
    oracle.close()
