"""The Redis failures the service reports: one small tree, raised at the boundary.

:class:`RedisUnavailable` (not connected, connection lost, deadline passed; its
subclass :class:`CommandNotSent` when the command certainly did not run) and
:class:`RedisReplyError` (Redis answered with an error).  Nothing above
:mod:`services.common.redis` sees trio or OS errors from a Redis connection.
"""

from __future__ import annotations


class RedisError(Exception):
    """Base of every Redis failure the service reports."""


class RedisUnavailable(RedisError):
    """Redis cannot be reached right now: not connected, connection lost, or too slow.

    Raised as such, the command may have been written (and run); see the subclass
    :class:`CommandNotSent` for the case where it certainly was not."""


class CommandNotSent(RedisUnavailable):
    """The command was never written to Redis (no connection): it certainly did not run."""


class RedisTLSError(RedisUnavailable):
    """The TLS handshake with Redis failed: its certificate is not trusted or not for
    that host, or it refused ours.  Fatal at start-up, retried like any other
    connection failure afterwards."""


class RedisReplyError(RedisError):
    """Redis answered a command with an error reply."""


class _ConnectionLost(Exception):
    pass
