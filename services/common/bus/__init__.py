"""The chat bus: presence, rooms and publications in Redis.

- :mod:`.bus`: :class:`Bus`, the typed operations a gateway runs (one script or
  one pipeline each), with their named results.
- :mod:`.scripts`: :class:`Script`, the Lua scripts in ``lua/`` loaded once and
  run with EVALSHA; each file's header states its KEYS, ARGV and replies.
- :mod:`.codec`: what travels on the channels (room publications, node and
  broadcast messages), encoded and decoded in one place.

Key names are built in :mod:`services.common.keys`.  Everything callers use is
importable from here.
"""

from services.common.bus.bus import (
    HISTORY_BYTES,
    HISTORY_KEEP,
    LOG_BYTES,
    REPLAY_WINDOW,
    ROOM_RETENTION_S,
    AuthLock,
    Bus,
    ClaimResult,
    Joined,
    PublishUncertain,
    RegisterResult,
    RenameResult,
    Resolution,
    RoomLimitReached,
    epoch_check_command,
)
from services.common.bus.codec import (
    CHAT_KINDS,
    Announce,
    BroadcastMessage,
    Canary,
    Kick,
    MalformedMessage,
    NodeMessage,
    PrivateMessage,
    Publication,
    UnknownMessage,
    decode_broadcast,
    decode_node_message,
    decode_publication,
    encode_body,
    encode_message,
    encode_publication,
)
from services.common.bus.scripts import Script

__all__ = [
    "CHAT_KINDS",
    "HISTORY_BYTES",
    "HISTORY_KEEP",
    "LOG_BYTES",
    "REPLAY_WINDOW",
    "ROOM_RETENTION_S",
    "Announce",
    "AuthLock",
    "BroadcastMessage",
    "Bus",
    "Canary",
    "ClaimResult",
    "Joined",
    "Kick",
    "MalformedMessage",
    "NodeMessage",
    "PrivateMessage",
    "Publication",
    "PublishUncertain",
    "RegisterResult",
    "RenameResult",
    "Resolution",
    "RoomLimitReached",
    "Script",
    "UnknownMessage",
    "decode_broadcast",
    "decode_node_message",
    "decode_publication",
    "encode_body",
    "encode_message",
    "encode_publication",
    "epoch_check_command",
]
