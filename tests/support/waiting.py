"""Waiting for a condition in Trio tests, always with a deadline.

Synchronous tests use :func:`services.common.processes.wait_until`, which also
returns the value it waited for.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "", *, blocking: bool = False
) -> None:
    """Poll ``predicate`` until true; :class:`trio.TooSlowError` after ``timeout`` seconds.

    ``blocking``: the predicate blocks (redis-py), so it runs in a thread.
    """
    with trio.fail_after(timeout):
        while not (await trio.to_thread.run_sync(predicate) if blocking else predicate()):
            await trio.sleep(0.02 if blocking else 0.01)


async def wait_until_sync(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """:func:`wait_until` for blocking predicates (redis-py), run in a thread."""
    await wait_until(predicate, timeout, blocking=True)
