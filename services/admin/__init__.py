"""``chat-admin`` (``python -m services.admin``): look at and steer a running cluster.

It talks only to Redis, with the key schema of :mod:`services.common.keys`, so it
works from anywhere that reaches Redis, whatever number of gateways run:

``who``
    every online nickname and the gateway that owns it (``{p}nicks``).
``gateways``
    every gateway in the registry (``{p}gateways``): lease alive or not, heartbeat
    age, connected clients, nicknames owned, listen address, pid, uptime.
``kick NICK [REASON]``
    asks the owning gateway (``PUBLISH {p}node:{id}``) to disconnect NICK; the user
    sees ``!! disconnected: kicked by an operator: REASON``.
``announce TEXT``
    ``PUBLISH {p}all``; every client on every gateway sees ``== announcement: TEXT``.

Tables for people, ``--json`` for scripts.  Synchronous (redis-py): an operator
tool runs one command and exits.

- :mod:`services.admin.commands`: what each command does against Redis;
- :mod:`services.admin.render`: tables for people;
- :mod:`services.admin.cli`: arguments, settings (``--redis-url`` or
  ``CHAT_REDIS_URL``, ``--key-prefix`` or ``CHAT_KEY_PREFIX``), exit statuses.

Exit status: 0 on success; 1 when the target does not exist (``no such nick``),
no gateway received a command, or Redis cannot be reached; 2 for bad usage.
"""

from __future__ import annotations

from services.admin.cli import main

__all__ = ["main"]
