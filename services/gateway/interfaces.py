"""The seams between the gateway's parts, as protocols (no implementation here).

* :class:`Member`: what the room registry, the nickname registry and the node
  messages need of one connected client (a :class:`~services.gateway.session.Session`).
* :class:`Chat`: what a session and its commands may ask of the rest of the
  gateway.  The gateway (:mod:`services.gateway.gateway`) implements it by
  delegating to its parts; sessions and commands never see those parts.

Data flows one way: a session turns lines into calls on :class:`Chat`; Redis
delivers publications to the room registry, which hands bytes to each member's
:class:`~services.gateway.writer.Writer`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from services.common.bus import ClaimResult, PublishUncertain, Resolution
from services.common.config import Settings
from services.gateway.accounts import Checked
from services.gateway.writer import OutboxBudget, Writer


class Member(Protocol):
    """One connected client, as the rest of the gateway sees it."""

    nick: str | None
    folded: str | None
    # The account hash this client proved (or set) for its nickname; ``None`` when
    # its nickname is not registered.  Never the password.
    account_hash: str | None
    writer: Writer

    @property
    def rooms(self) -> list[str]:
        """Joined rooms, oldest first; the last one is the current room."""

    @property
    def log(self) -> Any:
        """A logger bound to this client's ``conn``, ``peer`` and ``nick``."""

    def deliver(self, data: bytes) -> None:
        """Queue ``data`` for the client and write it as soon as possible."""

    def disconnect(self, reason: str) -> None:
        """End the session; the client is told ``reason``."""

    def rebind(self) -> None:
        """Re-bind the logging context after a nickname change."""

    def entered(self, room: str) -> None:
        """The client is now in ``room``, which becomes its current room."""

    def left(self, room: str) -> None:
        """The client is no longer in ``room``."""


class Chat(Protocol):
    """The gateway as a session and its commands see it.  Methods that touch Redis
    raise :class:`~services.common.redis.RedisError`."""

    settings: Settings
    gateway_id: str
    outbox_budget: OutboxBudget  # every client's output bytes together, against one limit

    @property
    def available(self) -> bool:
        """Whether Redis is reachable (clients are told when it is not)."""

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(*args)`` in the gateway's nursery."""

    def count_rejected(self, reason: str) -> None: ...

    def count_slow_consumer(self) -> None: ...

    def count_outbox_budget_cut(self) -> None: ...

    def count_message_in(self) -> None: ...

    # nicknames
    async def claim_nick(
        self, member: Member, folded: str, nick: str, proven_hash: str = ""
    ) -> ClaimResult:
        """Claim ``nick`` across the cluster for ``member``: true when claimed,
        else ``TAKEN`` or ``REGISTERED`` (an account whose hash is not
        ``proven_hash``, the one the client proved its password against)."""

    async def rename(self, member: Member, new: str, proven_hash: str = "") -> str:
        """``"renamed"``, ``"taken"``, ``"registered"`` (see :meth:`claim_nick`) or
        ``"lost"`` (this gateway no longer owns the old nickname)."""

    # accounts
    async def check_password(self, folded: str, address: str, password: str) -> Checked:
        """Check an account's password; wrong ones are counted against the account
        and ``address`` across the cluster."""

    async def register_account(
        self, member: Member, password: str, address: str
    ) -> tuple[str, float]:
        """Register ``member``'s nickname: ``"registered"``, ``"already"`` (it is an
        account already), ``"lost"`` (``member`` no longer holds it) or
        ``"limited"`` (``address`` registered its share: the float says for how
        many more seconds)."""

    async def change_password(self, member: Member, old_hash: str, new_password: str) -> bool:
        """Replace ``member``'s account password; ``False`` when the account is
        gone or was changed meanwhile."""

    async def forget(self, member: Member, reason: str = "") -> None:
        """Remove a leaving member everywhere: local rooms, its nickname, its
        memberships, with the leave announced once in each room."""

    # rooms
    async def join_room(
        self, member: Member, name: str, *, kind: str = "join", greeting: bytes = b"",
        may_create: bool = True,
    ) -> bool:
        """Join; ``True`` when the join created the room (it had no members).
        Without ``may_create``, joining a room with no members raises
        :class:`~services.common.bus.RoomLimitReached`."""

    async def part_room(self, member: Member, name: str) -> None: ...

    async def publish(
        self, room: str, kind: str, nick: str, text: str = "",
        *, on_lost: Callable[[], None] | None = None,
    ) -> int:
        """Publish; the sequence number.  ``on_lost`` is called if the publication
        never comes back because Redis lost its data first (nobody may have got it)."""

    def resolve_later(
        self, uncertain: PublishUncertain, report: Callable[[Resolution], None]
    ) -> None:
        """Find out what became of a publish that got no answer."""

    async def wait_delivered(self, room: str, seq: int, timeout_s: float) -> None: ...

    # queries and messages
    async def online(self, limit: int) -> tuple[int, list[str]]:
        """How many nicknames are online, and up to ``limit`` of them, sorted."""

    async def room_members(self, room: str, limit: int) -> tuple[int, list[str]]:
        """How many members ``room`` has, and up to ``limit`` of them, sorted."""

    async def room_counts(self, limit: int) -> tuple[int, list[tuple[str, int]]]:
        """How many rooms have members, and up to ``limit`` of them with their
        member counts, largest first."""

    async def send_private(self, sender: str, target: str, text: str) -> str | None:
        """Deliver a private message; the recipient's display nickname, or ``None``
        when nobody has that nickname.  Raises ``LookupError`` when its gateway
        does not listen (unreachable)."""


class Caller(Member, Protocol):
    """A member running a command: it also has a flood budget and can speak."""

    leave_text: str

    def spend(self, cost: float = 1.0) -> bool:
        """Take ``cost`` from the client's flood budget; ``False`` (and the client
        told, at most once a second) when it is spent."""

    def may_create_room(self) -> bool:
        """Whether the client may create a room now (``CHAT_ROOMS_PER_MINUTE``)."""

    def created_room(self) -> None:
        """Count a room the client created."""

    @property
    def address(self) -> str:
        """The client's address (the PROXY header's when trusted), without port."""

    async def say(self, kind: str, text: str) -> None:
        """Publish a chat line or action in the current room."""
