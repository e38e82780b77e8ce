"""Sessions and their commands over in-memory streams, with an in-memory chat core
(no Redis behaviour under test here: tests/gateway/test_gateway.py has that)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from services.common.bus import PublishUncertain, Resolution
from services.common.redis import CommandNotSent
from services.gateway import protocol as p
from services.gateway.commands import Commands
from services.gateway.session import Session
from tests.support.memory_chat import MemoryChat


class Peer:
    """The client's end of an in-memory connection, reading server lines."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.lines: list[str] = []

    async def send(self, text: str) -> None:
        await self.stream.send_all(text.encode() + b"\n")

    async def seen(self, pattern: str) -> str:
        """A matching line received at any time (no order assumed)."""
        regex = re.compile(pattern)
        for line in self.lines:
            if regex.search(line):
                return line
        return await self.expect(pattern)

    async def closed(self) -> None:
        with trio.fail_after(5):
            while await self.stream.receive_some(65536):
                pass

    async def expect(self, pattern: str) -> str:
        regex = re.compile(pattern)
        with trio.fail_after(5):
            while True:
                while b"\n" in self.buffer:
                    raw, self.buffer = self.buffer.split(b"\n", 1)
                    line = raw.rstrip(b"\r").decode()
                    self.lines.append(line)
                    if regex.search(line):
                        return line
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"closed while waiting for {pattern!r}; got {self.lines}")
                self.buffer += data


@pytest.fixture
async def chat() -> AsyncIterator[MemoryChat]:
    async with trio.open_nursery() as nursery:
        yield MemoryChat(nursery)
        nursery.cancel_scope.cancel()


async def connect(chat: MemoryChat, nick: str | None = None) -> tuple[Session, Peer]:
    server_end, client_end = trio.testing.memory_stream_pair()
    session = Session(chat, Commands(chat), server_end, "test:1")
    chat.spawn(session.run)
    peer = Peer(client_end)
    await peer.expect(r"^\?\? Choose a nickname:$")
    if nick is not None:
        await peer.send(nick)
        await peer.expect(rf"^== welcome, {nick}!")
    return session, peer


async def test_handshake_retries_taken_and_invalid_nicknames(chat: MemoryChat) -> None:
    chat.reserved.add("bob")
    _, peer = await connect(chat)
    await peer.send("/who")
    await peer.expect(r"^!! choose a nickname first$")
    await peer.send("9lives")
    await peer.expect(r"^!! invalid nickname: ")
    await peer.send("BOB")
    await peer.expect(r'^!! nickname "BOB" is taken, choose another$')
    await peer.send("alice")
    await peer.expect(r"^== welcome, alice! You are in #lobby")
    await peer.expect(r"^#lobby -- alice joined the chat!$")


async def test_chat_lines_are_published_in_the_current_room_and_flood_limited(
    chat: MemoryChat,
) -> None:
    _, peer = await connect(chat, "alice")
    left = chat.settings.flood_burst - 1  # the nickname line cost one
    for i in range(left + 1):
        await peer.send(f"line {i}")
    await peer.expect(r"^!! too many lines, slow down; your line was not sent$")
    assert [t for _, k, _, t in chat.published if k == "msg"] == [f"line {i}" for i in range(left)]
    assert chat.rejected == ["flood"]


async def test_every_line_gets_one_outcome_when_redis_is_unreachable_or_silent(
    chat: MemoryChat,
) -> None:
    _, peer = await connect(chat, "alice")
    chat.fail_next = CommandNotSent("not connected to Redis")
    await peer.send("never sent")
    await peer.expect(r"^!! not delivered: ")
    chat.fail_next = PublishUncertain("lost", "#lobby", "7", 0, 0.0)
    chat.resolution = Resolution.NOT_PUBLISHED
    await peer.send("lost reply")
    await peer.expect(r"^!! not delivered: ")
    chat.fail_next = PublishUncertain("lost", "#lobby", "8", 0, 0.0)
    chat.resolution = Resolution.UNKNOWN
    await peer.send("no idea")
    await peer.expect(r"^!! not confirmed: ")
    chat.fail_next = PublishUncertain("lost", "#lobby", "9", 0, 0.0)
    chat.resolution = Resolution.PUBLISHED
    await peer.send("was published")
    await peer.send("after")
    await peer.expect(r"^#lobby <alice> after$")
    assert sum(line.startswith("!!") for line in peer.lines) == 3


async def test_join_part_and_the_current_room(chat: MemoryChat) -> None:
    session, peer = await connect(chat, "alice")
    await peer.send("/join dev")
    await peer.expect(r"^== now talking in #dev$")
    await peer.send("/join #lobby")
    await peer.expect(r"^== now talking in #lobby$")
    assert session.rooms == ["#dev", "#lobby"]
    await peer.send("/part")
    await peer.expect(r"^== left #lobby; now talking in #dev$")
    await peer.send("/part #nowhere")
    await peer.expect(r"^!! you are not in #nowhere$")
    await peer.send("/part")
    await peer.expect(r"^== left #dev; you are in no room now")
    await peer.send("hello?")
    await peer.expect(r"^!! you are in no room; /join #room to chat$")
    await peer.send("/join bad room")
    await peer.expect(r"^!! invalid room: ")


async def test_who_rooms_and_private_messages(chat: MemoryChat) -> None:
    _, alice = await connect(chat, "alice")
    _, bob = await connect(chat, "bob")
    await alice.send("/who")
    await alice.expect(r"^== 2 online: alice, bob$")
    await alice.send("/rooms")
    await alice.expect(r"^== 1 rooms: #lobby \(2\)$")
    await alice.send("/msg BOB psst")
    await alice.expect(r"^@bob <alice> psst$")
    await bob.expect(r"^@bob <alice> psst$")
    await alice.send("/msg carol hi")
    await alice.expect(r'^!! no such nickname "carol"')
    chat.unreachable.add("bob")
    await alice.send("/msg bob hi")
    await alice.expect(r'^!! "bob" is unreachable right now')
    await alice.send("/msg bob")
    await alice.expect(r"^!! usage: /msg NICK TEXT$")


async def test_rename_outcomes_are_told_apart(chat: MemoryChat) -> None:
    _, alice = await connect(chat, "alice")
    chat.reserved.add("bob")
    await alice.send("/nick bob")
    await alice.expect(r'^!! nickname "bob" is taken, choose another$')
    chat.rename_outcome = "lost"
    await alice.send("/nick carol")
    await alice.expect(r"^!! your nickname is being re-registered after a Redis fault")
    chat.rename_outcome = None
    await alice.send("/nick Alicia")
    await alice.seen(r"^== you are now Alicia$")
    await alice.seen(r"^#lobby -- alice is now known as Alicia$")


async def test_unknown_commands_actions_help_and_quit(chat: MemoryChat) -> None:
    _, alice = await connect(chat, "alice")
    await alice.send("/frobnicate")
    await alice.expect(r"^!! unknown command /frobnicate; type /help for the list$")
    await alice.send("/me waves")
    await alice.expect(r"^#lobby \* alice waves$")
    await alice.send("/help")
    await alice.expect(r"^== commands:$")
    await alice.send("//slash")
    await alice.expect(r"^#lobby <alice> /slash$")
    await alice.send("/quit see you")
    await alice.expect(r"^== bye$")
    await alice.closed()
    assert chat.published[-1] == ("#lobby", "msg", "alice", "/slash")
    assert p.fold_nick("alice") not in chat.nicks  # released when the session ended
