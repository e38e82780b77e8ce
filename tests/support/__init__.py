"""What the tests use to run the real thing, one module per kind of helper.

- ``redis_server``: :class:`RedisServer`, a throw-away ``redis-server``;
- ``gateway_process``: :class:`GatewayProcess`, ``python -m services.gateway``
  with ``CHAT_*`` settings;
- ``chat_client``: :class:`ChatClient`, a Trio line client;
  ``line_client``: :class:`LineClient`, a blocking one for synchronous tests;
- ``haproxy``: HAProxy with deploy/haproxy/haproxy.cfg, and its server states;
- ``processes``: ``REPO`` and /proc checks that nothing was left running;
- ``waiting``: :func:`wait_until` for Trio tests;
- ``tcp_proxy``: a proxy that stalls one direction, to fake a dead network.

Processes, ports and probes come from the code the services share:
:class:`services.common.processes.Process` (and its blocking ``wait_until``),
``services.common.probes`` (``free_port``, ``redis_ping``, ``http_get``).
"""
