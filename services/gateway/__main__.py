"""``python -m services.gateway`` / ``chat-gateway``: run one gateway.

Exit status: 0 after a graceful drain, 2 for invalid configuration (a failed
TLS handshake with Redis at start-up included), 1 when a second signal cut the
drain short.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

import structlog
import trio

from services.common.config import ConfigError, Settings, load_settings
from services.common.logging import configure_logging
from services.common.redis import RedisTLSError, check_redis_tls, redis_tls_context
from services.gateway.gateway import Gateway
from services.gateway.tls import server_context


async def run_gateway(
    settings: Settings, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until SIGTERM/SIGINT, then drain gracefully; a second signal exits at once."""
    log = structlog.get_logger()
    gateway = Gateway(settings)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.serve)
            task_status.started(gateway)
            async for signum in signals:
                log.info("gateway.signal", signal=signal.Signals(signum).name)
                nursery.start_soon(_second_signal, signals)
                await gateway.drain()
                nursery.cancel_scope.cancel()
                break


async def _second_signal(signals: trio.abc.AsyncIterator[int]) -> None:  # type: ignore[name-defined]
    async for signum in signals:
        structlog.get_logger().warning("gateway.killed", signal=signal.Signals(signum).name)
        sys.stdout.flush()
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
        server_context(settings)  # unreadable or mismatched TLS files: exit 2 here
        redis_tls_context(settings)
        # The first connection's TLS verdict is final: a certificate that does not
        # verify now will not verify on the next attempt either.  Later failures
        # are retried like any lost connection (Redis may be mid certificate swap).
        trio.run(check_redis_tls, settings)
    except (ConfigError, RedisTLSError) as exc:
        print(f"chat-gateway: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=settings.log_format, level=settings.log_level, gateway=settings.gateway_id)
    trio.run(run_gateway, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
