"""Redis over Trio: RESP on a Trio stream, replies parsed by ``hiredis.Reader``.

Two kinds of connection, each kept alive by a supervisor that reconnects with
capped exponential backoff plus jitter (reset after every success):

* :class:`RedisClient` - the command connection.  Many tasks call
  :meth:`RedisClient.execute` at once; their commands are written together
  (automatic pipelining) and replies are matched to callers in order.
* :class:`Subscriber` - the pub/sub connection.  It remembers which channels are
  wanted and subscribes to all of them again after every reconnect.  Messages
  go to a synchronous callback, so the reader never waits on anyone.

Everything that can go wrong surfaces as :class:`RedisError`:
:class:`RedisUnavailable` (not connected, connection lost, deadline passed) or
:class:`RedisReplyError` (Redis answered with an error).  Nothing above this
module sees trio or OS errors from the Redis connection.
"""

from services.common.redis.client import RedisClient, StateCallback
from services.common.redis.connection import (
    RECEIVE_BYTES,
    RECONNECT_CAP_S,
    Arg,
    Backoff,
    Reply,
    check_redis_tls,
    open_redis_stream,
    redis_tls_context,
    stream_socket,
)
from services.common.redis.errors import (
    CommandNotSent,
    RedisError,
    RedisReplyError,
    RedisTLSError,
    RedisUnavailable,
)
from services.common.redis.subscriber import MessageCallback, Subscriber
from services.common.redis.topology import Sentinel, Standalone, Topology, topology_for

__all__ = [
    "RECEIVE_BYTES",
    "RECONNECT_CAP_S",
    "Arg",
    "Backoff",
    "CommandNotSent",
    "MessageCallback",
    "RedisClient",
    "RedisError",
    "RedisReplyError",
    "RedisTLSError",
    "RedisUnavailable",
    "Reply",
    "Sentinel",
    "Standalone",
    "StateCallback",
    "Subscriber",
    "Topology",
    "check_redis_tls",
    "open_redis_stream",
    "redis_tls_context",
    "stream_socket",
    "topology_for",
]
