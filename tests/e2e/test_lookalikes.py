"""Look-alike nicknames and invisible characters, through live gateways and Redis.

Two in-process gateways share one real Redis: a look-alike of a nickname online
on one gateway is refused on the other (at login and by ``/nick``); the owner
may switch between its own spellings; ``/msg`` finds a user by any spelling;
Redis records the skeleton and the spelling as typed; ``chat-admin kick`` finds
a user by any spelling.  Invisible and
bidirectional characters in chat are shown as ``<U+XXXX>`` to every member.
"""

from __future__ import annotations

import redis

from services.admin.commands import kick
from services.common.keys import Keys
from services.common.names import fold_nick
from tests.conftest import StartGateway
from tests.support.chat_client import ChatClient
from tests.support.redis_server import RedisServer


async def test_a_look_alike_cannot_be_taken_on_any_gateway(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str, redis_server: RedisServer
) -> None:
    gw1 = await start_gateway(flood_burst=100)  # many attempts in a row
    gw2 = await start_gateway(flood_burst=100)
    alice = await ChatClient.join(gw1.ports[0], "alice")
    impostor = await ChatClient.connect(gw2.ports[0])
    for spelling in ("AIice", "a1ice", "a|ice", "ALlCE"):
        await impostor.send(spelling)
        await impostor.expect(rf'^!! nickname "{spelling.replace("|", "[|]")}" is taken, choose another$')
    await impostor.send("rnallory")
    await impostor.expect(r"^== welcome, rnallory!")
    # Redis keys the skeleton, and keeps the spelling as typed for display.
    assert rc.hget(f"{key_prefix}nicks", fold_nick("alice")) == f"{gw1.incarnation} alice".encode()
    assert rc.hget(f"{key_prefix}nicks", "mallory") == f"{gw2.incarnation} rnallory".encode()

    # /nick to someone else's look-alike is refused too; to one's own is a respelling.
    await impostor.send("/nick A1ice")
    await impostor.expect(r'^!! nickname "A1ice" is taken, choose another$')
    await impostor.send("/nick mallory")
    await impostor.expect(r"^== you are now mallory$")
    await alice.expect(r"^#lobby -- rnallory is now known as mallory$")
    newcomer = await ChatClient.connect(gw1.ports[0])
    await newcomer.send("rnaIlory")
    await newcomer.expect(r'^!! nickname "rnaIlory" is taken, choose another$')

    # /msg reaches the owner whichever spelling is used; the owner's display is shown.
    await impostor.send("/msg AIICE hi there")
    await impostor.expect(r"^@alice <mallory> hi there$")
    await alice.expect(r"^@alice <mallory> hi there$")
    await alice.send("/who")
    await alice.expect(r"^== 2 online: (alice, mallory|mallory, alice)$")
    # chat-admin kick finds the user by any spelling too, and names the real one.
    admin = redis.Redis.from_url(redis_server.url, decode_responses=True)  # as chat-admin's
    result = kick(admin, Keys(key_prefix), "rnaII0ry", "look-alike test")
    admin.close()
    assert result["nick"] == "mallory"
    lines = await impostor.read_until_closed()
    assert lines[-1] == "!! disconnected: kicked by an operator: look-alike test"
    for client in (alice, newcomer):
        await client.aclose()


async def test_invisible_characters_in_chat_are_shown_visibly(start_gateway: StartGateway) -> None:
    gw1 = await start_gateway()
    gw2 = await start_gateway()
    alice = await ChatClient.join(gw1.ports[0], "alice")
    bob = await ChatClient.join(gw2.ports[0], "bob")
    await alice.send("invoice \u202egpj.exe\u202c zero\u200bwidth line\u2028break \ufeff")
    line = "#lobby <alice> invoice <U+202E>gpj.exe<U+202C> zero<U+200B>width line<U+2028>break <U+FEFF>"
    assert await bob.expect(r"^#lobby <alice> invoice ") == line
    assert await alice.expect(r"^#lobby <alice> invoice ") == line
    await alice.send("/me waves \u2066hi\u2069")
    await bob.expect(r"^#lobby \* alice waves <U\+2066>hi<U\+2069>$")
    await bob.send("/msg alice psst\u200f")
    await alice.expect(r"^@alice <bob> psst<U\+200F>$")
    await bob.send("/quit gone \u202ereversed")
    await alice.expect(r"^#lobby -- bob left the chat! \(gone <U\+202E>reversed\)$")
    await alice.aclose()
