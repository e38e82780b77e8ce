"""This gateway's rooms: local members, subscriptions, delivery order, fan-out.

:class:`Rooms` keeps one :class:`LocalRoom` per room with local members and one
subscription per such room (never one per client).  Publications arrive from
the subscriber's reader through :meth:`Rooms.on_publication`, synchronously:
each is decoded once, checked against the room's epoch and sequence number
(duplicates dropped, gaps filled from the room's log before anything newer),
formatted once, and the same bytes are queued on every local member's writer.
:meth:`Rooms.flush_batch` then writes each touched client once.  Nothing here
waits on a client.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

from services.common.bus import (
    REPLAY_WINDOW,
    Bus,
    Publication,
    RoomLimitReached,
    decode_publication,
)
from services.common.config import Settings
from services.common.keys import Keys
from services.common.metrics import Metrics
from services.common.redis import Backoff, RedisError, Subscriber
from services.gateway import protocol as p
from services.gateway.interfaces import Member
from services.gateway.writer import Writer

log = structlog.get_logger()

# Publications held while a gap is filled; past this, fill what can be and say so.
BACKLOG_LIMIT = 20000
GAP_FILL_GIVE_UP_S = 60.0


@dataclass(eq=False)
class LocalRoom:
    """This gateway's view of one room: its local members and the channel's state."""

    name: str
    channel: bytes
    members: set[Member] = field(default_factory=set)
    joining: dict[Member, list[Publication]] = field(default_factory=dict)
    subscribed: bool = False
    epoch: str | None = None
    last_seq: int | None = None
    filling: bool = False
    fill_abandoned: bool = False
    fill_upto: int = 0  # the newest sequence number known to exist when the fill began
    backlog: list[Publication] = field(default_factory=list)
    # A newer epoch seen while the old one may still have entries in the log that
    # this gateway missed: the fill delivers those, then the room moves to it
    # (and fills that epoch up to next_upto, when known).
    next_epoch: str | None = None
    next_upto: int = 0
    progress: trio.Event | None = None  # set on each delivery while someone waits
    # This gateway's own publications not seen back yet, oldest first:
    # (epoch, seq, called if that epoch ends before seq was seen).
    awaiting: deque[tuple[str, int, Callable[[], None]]] = field(default_factory=deque)

    @property
    def empty(self) -> bool:
        return not self.members and not self.joining


class Rooms:
    """The local room registry with sequencing, gap fill and fan-out."""

    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        bus: Bus,
        subscriber: Subscriber,
        metrics: Metrics,
        *,
        spawn: Callable[..., None],
        saw_own: Callable[[str], None],
        incarnation: str,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.bus = bus
        self.subscriber = subscriber
        self.metrics = metrics
        self.spawn = spawn
        self.saw_own = saw_own  # told the id of each of this gateway's own publications
        self.incarnation = incarnation
        self.rooms: dict[str, LocalRoom] = {}
        self.dirty: list[Writer] = []  # writers with fan-out bytes queued in this batch
        self.channel_prefix = keys.room_channel("").encode()

    # -- membership ----------------------------------------------------------------
    async def join(
        self, member: Member, name: str, *, kind: str = "join", greeting: bytes = b"",
        may_create: bool = True,
    ) -> bool:
        """Make ``member`` a member of room ``name`` here and in Redis (announced as
        ``kind`` in the same step), and replay the room's history to it; ``True``
        when the join created the room.  Raises RedisError: the member is then not
        in the room here, and, should the join have reached Redis after all, it is
        undone (with its leave announced).  Raises RoomLimitReached when the room
        has no members and ``may_create`` is false (nothing changed in Redis)."""
        assert member.nick is not None and member.folded is not None
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = LocalRoom(name, self.keys.room_channel(name).encode())
        room.joining[member] = []
        join_sent = False
        try:
            if not room.subscribed:
                await self.subscriber.subscribe(room.channel)
                room.subscribed = True
            # History first: what is published after it reaches the member live
            # (buffered in room.joining until it is a member here).
            history = await self.bus.history(name, self.settings.history_size)
            join_sent = True
            try:
                joined = await self.bus.join_room(name, member.folded, member.nick,
                                                  announce=kind, may_create=may_create)
            except RoomLimitReached:
                join_sent = False  # Redis answered: nothing to undo
                raise
        except BaseException:
            room.joining.pop(member, None)
            await self._drop_if_empty(room)
            if join_sent:  # it may have reached Redis after all
                self.spawn(self._undo_join, name, member.folded, member.nick)
            raise
        buffered = room.joining.pop(member, [])
        room.members.add(member)
        if greeting:
            member.deliver(greeting)
        member.entered(name)
        last_seen = self._replay_history(member, room, history)
        for pub in buffered:
            if (epoch_order(pub.epoch), pub.seq) > last_seen:
                member.deliver(p.publication_line(room.name, pub.kind, pub.nick, pub.text))
        return joined.created

    async def _undo_join(self, name: str, folded: str, nick: str) -> None:
        """A join whose answer was lost may have happened: leave again (announced
        only if it had).  Bounded; if Redis stays away, releasing the nickname
        later leaves every room it is recorded in."""
        with trio.move_on_after(self.settings.redis_timeout_s * 5):
            backoff = Backoff(base_s=0.1, cap_s=1.0)
            while True:
                try:
                    await self.bus.leave_room(name, folded, nick, announce="part")
                    return
                except RedisError:
                    await trio.sleep(backoff.next_delay())

    def _replay_history(
        self, member: Member, room: LocalRoom, history: list[bytes]
    ) -> tuple[int, int]:
        """Replay ``history``; returns the newest (epoch order, seq) it held (a
        room's numbering restarts in each epoch, so seq alone does not order)."""
        chat: list[Publication] = []
        last = (0, 0)
        for raw in history:
            try:
                pub = decode_publication(raw)
            except (ValueError, KeyError, TypeError):
                continue
            last = max(last, (epoch_order(pub.epoch), pub.seq))
            if pub.kind in ("msg", "act"):
                chat.append(pub)
        shown = chat[-self.settings.history_size :] if self.settings.history_size else []
        if shown:
            member.deliver(p.info(f"last {len(shown)} messages in {room.name}:"))
            for pub in shown:
                member.deliver(p.publication_line(room.name, pub.kind, pub.nick, pub.text,
                                                  history=True))
            member.deliver(p.info(f"end of history of {room.name}"))
        return last

    async def part(self, member: Member, name: str) -> None:
        """Leave one room, announced in the same step.  Raises RedisError."""
        assert member.nick is not None and member.folded is not None
        await self.bus.leave_room(name, member.folded, member.nick, announce="part")
        member.left(name)
        room = self.rooms.get(name)
        if room is not None:
            room.members.discard(member)
            await self._drop_if_empty(room)

    async def leave_all(self, member: Member) -> None:
        """Forget ``member`` in every local room (Redis is the nickname registry's
        job); unsubscribe from rooms left empty here."""
        for room in list(self.rooms.values()):
            room.members.discard(member)
            room.joining.pop(member, None)
            await self._drop_if_empty(room)

    async def _drop_if_empty(self, room: LocalRoom) -> None:
        if room.empty and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            if room.subscribed:
                await self.subscriber.unsubscribe(room.channel)

    async def wait_delivered(self, name: str, seq: int, timeout_s: float) -> None:
        """Wait (bounded) until this gateway has delivered ``name`` up to ``seq``,
        so a client leaving right after sending still sees its own last line."""
        with trio.move_on_after(timeout_s):
            while True:
                room = self.rooms.get(name)
                if room is None or room.last_seq is None or room.last_seq >= seq:
                    return
                if room.progress is None:
                    room.progress = trio.Event()
                await room.progress.wait()

    # -- delivery -------------------------------------------------------------------
    def await_echo(self, name: str, epoch: str, seq: int, on_lost: Callable[[], None]) -> None:
        """Our publication ``seq`` of ``epoch`` in ``name`` should come back through
        the subscriber; if the epoch ends (Redis lost its data) before it did,
        nobody may have got it: ``on_lost`` is called, once."""
        room = self.rooms.get(name)
        if room is None:
            return
        if room.epoch == epoch and room.last_seq is not None and room.last_seq >= seq:
            return  # already delivered
        room.awaiting.append((epoch, seq, on_lost))

    def _seen_up_to(self, room: LocalRoom) -> None:
        awaiting = room.awaiting
        while awaiting and awaiting[0][0] == room.epoch and awaiting[0][1] <= (room.last_seq or 0):
            awaiting.popleft()

    def _switch_epoch(self, room: LocalRoom, new_epoch: str) -> None:
        log.info("room.new_epoch", room=room.name, old=room.epoch, new=new_epoch)
        self._epoch_ended(room, new_epoch)
        room.epoch, room.last_seq = new_epoch, 0
        room.next_epoch = None

    def _epoch_ended(self, room: LocalRoom, new_epoch: str) -> None:
        """The room's numbering moves to ``new_epoch``: our publications of the old
        epoch that never came back were lost with Redis's data."""
        kept: deque[tuple[str, int, Callable[[], None]]] = deque()
        for entry in room.awaiting:
            if entry[0] == new_epoch:
                kept.append(entry)
            elif entry[0] == room.epoch:
                log.warning("message.lost_with_epoch", room=room.name, epoch=entry[0], seq=entry[1])
                entry[2]()
            else:
                kept.append(entry)
        room.awaiting = kept

    def on_publication(self, channel: bytes, data: bytes) -> None:
        """A message on a room channel.  Raises
        :class:`~services.common.bus.codec.MalformedMessage` when it is malformed."""
        room = self.rooms.get(channel[len(self.channel_prefix) :].decode(errors="replace"))
        if room is not None:
            self._accept(room, decode_publication(data))

    def flush_batch(self) -> None:
        """End of one read from Redis: write each touched client's bytes in one go."""
        dirty, self.dirty = self.dirty, []
        for writer in dirty:
            writer.flush()

    def _accept(self, room: LocalRoom, pub: Publication) -> None:
        """Deliver publications of a room in sequence order, each once; a gap (a
        sequence number skipped) is filled from the room's log before anything
        newer is delivered."""
        if pub.id and pub.gateway == self.incarnation:
            self.saw_own(pub.id)
        if room.filling:
            room.backlog.append(pub)
            if len(room.backlog) > BACKLOG_LIMIT:
                room.fill_abandoned = True
            return
        if room.epoch != pub.epoch:
            if room.epoch is None:
                # The first publication since this gateway subscribed: the numbering
                # starts here (members who join later get the history).
                room.epoch, room.last_seq = pub.epoch, pub.seq
                self._fan_out(room, pub)
                return
            if epoch_order(pub.epoch) < epoch_order(room.epoch):
                log.warning("bus.stale_epoch", room=room.name, epoch=pub.epoch, seq=pub.seq)
                return
            # A new epoch (Redis restarted, or a replica was promoted): numbering
            # restarts from seq 1.  What the log still holds of the old epoch
            # beyond what we delivered comes first (a restart that kept its data);
            # the fill then moves the room to the new epoch.
            room.next_epoch, room.next_upto = pub.epoch, 0
            self._start_fill(room, [pub])
            return
        assert room.last_seq is not None
        if pub.seq <= room.last_seq:
            return  # already delivered (a gap fill overlapped the live stream)
        if pub.seq > room.last_seq + 1:
            self._start_fill(room, [pub])
            return
        room.last_seq = pub.seq
        self._fan_out(room, pub)

    def _fan_out(self, room: LocalRoom, pub: Publication) -> None:
        if pub.time:
            self.metrics.observe_subscriber_lag(time.time() - pub.time)
        line = p.publication_line(room.name, pub.kind, pub.nick, pub.text)
        dirty = self.dirty
        for member in room.members:
            writer = member.writer
            if writer.queue(line) and not writer.dirty:
                writer.dirty = True
                dirty.append(writer)
        for buffer in room.joining.values():
            buffer.append(pub)
        if room.progress is not None:
            room.progress.set()
            room.progress = None
        if room.awaiting:
            self._seen_up_to(room)
        self.metrics.deliveries_total.inc(len(room.members))

    # -- gaps -----------------------------------------------------------------------
    def _start_fill(self, room: LocalRoom, backlog: list[Publication], upto: int = 0) -> None:
        room.filling = True
        room.fill_abandoned = False
        room.fill_upto = upto
        room.backlog.extend(backlog)
        self.spawn(self._fill_gap, room)

    async def _fill_gap(self, room: LocalRoom) -> None:
        """Deliver what the subscriber missed from the room's log, then the backlog.

        A read that fails because Redis is not reachable is retried once it is,
        while newer publications wait in the backlog; only what the log no longer
        holds (or a fill given up after :data:`GAP_FILL_GIVE_UP_S`) is skipped, and
        the room's members are told so in one line."""
        entries: list[bytes] = []
        backoff = Backoff(base_s=0.05, cap_s=1.0)
        with trio.move_on_after(GAP_FILL_GIVE_UP_S) as give_up:
            while not room.fill_abandoned and self.rooms.get(room.name) is room:
                try:
                    entries = await self._read_gap(room)
                    break
                except RedisError as exc:
                    log.info("gap.fill_retry", room=room.name, error=str(exc))
                    await trio.sleep(backoff.next_delay())
        if give_up.cancelled_caught or room.fill_abandoned:
            log.error("gap.fill_failed", room=room.name, backlog=len(room.backlog))
        pubs: dict[int, Publication] = {}
        expected_from = (room.last_seq or 0) + 1
        for raw in entries:
            try:
                pub = decode_publication(raw)
            except (ValueError, KeyError, TypeError):
                continue
            if pub.epoch == room.epoch and pub.seq >= expected_from:
                pubs[pub.seq] = pub
        newer_epoch: list[Publication] = []
        for pub in room.backlog:
            if pub.epoch == room.epoch:
                if pub.seq >= expected_from:
                    pubs.setdefault(pub.seq, pub)
            elif room.epoch is None or epoch_order(pub.epoch) > epoch_order(room.epoch):
                newer_epoch.append(pub)
        room.backlog = []
        room.filling = False
        missing = 0
        recovered = 0
        for seq in sorted(pubs):
            if room.last_seq is not None and seq > room.last_seq + 1:
                missing += seq - room.last_seq - 1
            room.last_seq = seq
            self._fan_out(room, pubs[seq])
            recovered += 1
        if missing:
            log.error("gap.unrecoverable", room=room.name, missing=missing)
            for member in room.members:
                member.deliver(p.missed_line(room.name, missing))
        self.flush_batch()
        log.info("gap.filled", room=room.name, delivered=recovered, missing=missing)
        if room.next_epoch is not None and self.rooms.get(room.name) is room:
            upto = room.next_upto
            self._switch_epoch(room, room.next_epoch)
            if upto > 0:  # the new epoch had publications already: fill them too
                same = [pub for pub in newer_epoch if pub.epoch == room.epoch]
                newer_epoch = [pub for pub in newer_epoch if pub.epoch != room.epoch]
                self._start_fill(room, same + newer_epoch, upto=upto)
                return
        for pub in newer_epoch:
            self._accept(room, pub)
        self.flush_batch()

    async def _read_gap(self, room: LocalRoom) -> list[bytes]:
        """The log's newest entries, as few as cover the gap: an estimate first,
        doubled while the oldest entry read is still past the gap's start (the
        top of the gap may be unknown, e.g. the rest of an epoch that ended)."""
        count = self._gap_size(room)
        while True:
            entries = await self.bus.log(room.name, count)
            if count >= REPLAY_WINDOW or len(entries) < count or self._covers(room, entries):
                return entries
            count = min(REPLAY_WINDOW, count * 2)

    @staticmethod
    def _covers(room: LocalRoom, entries: list[bytes]) -> bool:
        """Whether ``entries`` (oldest first) reach back to the gap's start."""
        for raw in entries:
            try:
                pub = decode_publication(raw)
            except (ValueError, KeyError, TypeError):
                continue
            if room.epoch is None or room.last_seq is None:
                return False
            if pub.epoch == room.epoch:
                return pub.seq <= room.last_seq + 1
            return epoch_order(pub.epoch) < epoch_order(room.epoch)
        return False

    @staticmethod
    def _gap_size(room: LocalRoom) -> int:
        """How many of the log's newest entries should cover the gap (all of them
        when nothing is known)."""
        same = [pub.seq for pub in room.backlog if pub.epoch == room.epoch]
        if room.fill_upto:
            same.append(room.fill_upto)
        if room.last_seq is None:
            return REPLAY_WINDOW
        if not same:  # the top is unknown: start small, _read_gap reads further back
            return len(room.backlog) + 64
        # Entries published after the backlog's newest one push it back in the log.
        return max(same) - room.last_seq + len(room.backlog) + 64

    async def catch_up(self, still_connected: Callable[[], bool]) -> None:
        """After the subscriber reconnected (and Redis confirmed every subscription),
        fill what every room missed meanwhile, even if no new publication arrives to
        reveal the gap.  Retried until Redis answers, while ``still_connected()``."""
        backoff = Backoff(base_s=0.05, cap_s=1.0)
        while still_connected():
            rooms = [room for room in self.rooms.values() if room.last_seq is not None]
            if not rooms:
                return
            try:
                epoch, positions = await self.bus.room_position([room.name for room in rooms])
                break
            except RedisError as exc:
                log.info("gap.check_retry", error=str(exc))
                await trio.sleep(backoff.next_delay())
        else:
            return
        for room, (seq, counted_in) in zip(rooms, positions, strict=True):
            if room.filling or room.last_seq is None or epoch is None:
                continue
            if self.rooms.get(room.name) is not room:
                continue
            if epoch == room.epoch:
                if counted_in == epoch and seq > room.last_seq:
                    self._start_fill(room, [], upto=seq)
                continue
            if room.epoch is not None and epoch_order(epoch) < epoch_order(room.epoch):
                continue
            # A new epoch ends the old one even before anything is published in it:
            # what the log holds of the old one beyond what we delivered comes first
            # (its top is the room's counter while that still counts in the old
            # epoch), then our lines of the old one that never came back are
            # reported, then the new epoch's lines are filled.
            if counted_in == room.epoch:
                room.next_epoch, room.next_upto = epoch, 0
                if seq > room.last_seq:
                    self._start_fill(room, [], upto=seq)
                else:
                    self._switch_epoch(room, epoch)
            elif counted_in == epoch and seq > 0:
                room.next_epoch, room.next_upto = epoch, seq
                self._start_fill(room, [])
            else:
                self._switch_epoch(room, epoch)


def epoch_order(epoch: str) -> int:
    """Epochs are Redis's clock (seconds and microseconds) when one began."""
    try:
        return int(epoch)
    except ValueError:
        return 0
