"""Lua scripts shipped as package data (``lua/<name>.lua``), run with EVALSHA.

Each file's header comment states its ``KEYS``, ``ARGV`` and return values.  A
header line ``-- include: <file>.lua`` puts that helper file (``_rooms.lua``) in
front of the script's own text, so the helpers are written once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from services.common.redis import Arg, RedisClient, RedisReplyError

_INCLUDE = re.compile(r"^-- include: (\S+\.lua)$", re.MULTILINE)
_LUA = resources.files("services.common.bus").joinpath("lua")


def script_source(name: str) -> str:
    """The text Redis runs for script ``name``: its included helpers, then the
    script.  Raises ``FileNotFoundError`` for an unknown name."""
    text = _LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    parts = [_LUA.joinpath(include).read_text(encoding="utf-8") for include in _INCLUDE.findall(text)]
    return "\n".join([*parts, text])


def script_names() -> list[str]:
    """Every script shipped (helper files, named ``_*.lua``, excluded)."""
    return sorted(
        entry.name.removesuffix(".lua")
        for entry in _LUA.iterdir()
        if entry.name.endswith(".lua") and not entry.name.startswith("_")
    )


class Script:
    """One Lua script, read from the package once, run with EVALSHA; after a
    ``NOSCRIPT`` reply (Redis restarted, or ``SCRIPT FLUSH``) with EVAL, which
    caches it again.  Every key it touches (but the documented derived ones) is
    passed in ``keys``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = script_source(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(
        self, redis: RedisClient, keys: Sequence[str], args: Sequence[Arg] = ()
    ) -> Any:
        """Run the script.  Raises what :meth:`RedisClient.execute` raises."""
        try:
            return await redis.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await redis.execute("EVAL", self.source, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"Script({self.name!r})"
