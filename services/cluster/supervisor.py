"""The local cluster's children: started, watched, relayed, and stopped in order.

Each child is a :class:`services.common.processes.Process` (its own process
group, output lines handed to :class:`services.cluster.logs.Output` by a reader
thread).  This module adds what the cluster needs on top, in Trio: an event when
a child exits, ``fatal`` when Redis or HAProxy dies on its own, and the stop
order (gateways drain while HAProxy stops accepting, then HAProxy, then Redis),
each stop within a deadline that a second Ctrl-C (``hurry``) cuts short.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import trio

from services.cluster.logs import Output
from services.cluster.plan import ClusterError, Plan
from services.common.processes import Process

HAPROXY_LINGER_S = 3.0  # after the gateways: time for HAProxy to finish its sessions
HAPROXY_STOP_TIMEOUT_S = 2.0
REDIS_STOP_TIMEOUT_S = 5.0
OUTPUT_WAIT_S = 2.0  # for the last lines of children that exited


@dataclass(eq=False)
class Child:
    """One process we started; ``role`` is ``redis``, ``gateway`` or ``haproxy``."""

    name: str
    role: str
    process: Process
    exited: trio.Event = field(default_factory=trio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.running()


class Supervisor:
    """Starts children, relays their output, and stops them all within deadlines."""

    def __init__(self, plan: Plan, out: Output) -> None:
        self.plan = plan
        self.out = out
        self.children: list[Child] = []
        self.stopping = False
        self.hurry = threading.Event()  # a second Ctrl-C: stop waiting, kill
        self.fatal = trio.Event()  # Redis or HAProxy died on its own
        self.fatal_reason = ""
        # Threads that wait for a child: one per child for its whole life, so not
        # from Trio's default pool of 40.
        self._waiters = trio.CapacityLimiter(math.inf)

    async def spawn(
        self,
        nursery: trio.Nursery,
        name: str,
        role: str,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        structured: bool = False,
    ) -> Child:
        """Start ``command``; raises :class:`ClusterError` when it cannot be started.
        ``structured``: its JSON lines are log events to re-render."""
        relay = partial(self.out.line, name, structured=structured)
        try:
            process = Process(name, command, env=env, on_line=relay, keep_lines=False)
        except OSError as exc:
            raise ClusterError(f"cannot start {name} ({command[0]}): {exc}") from None
        child = Child(name, role, process)
        self.children.append(child)
        self.out.event("process.started", name=name, pid=child.pid, command=" ".join(command))
        nursery.start_soon(self._watch, child)
        return child

    async def _watch(self, child: Child) -> None:
        code = await trio.to_thread.run_sync(
            child.process.wait, abandon_on_cancel=True, limiter=self._waiters
        )
        child.exited.set()
        expected = self.stopping
        self.out.event(
            "process.exited",
            level="info" if expected else "warning",
            name=child.name,
            pid=child.pid,
            returncode=code,
        )
        # With --redis sentinel a Redis process may die: that is what the sentinels
        # and the gateways are there to survive (kill the primary to watch a failover).
        survivable = child.role == "redis" and bool(self.plan.sentinel_ports)
        if not expected and child.role in ("redis", "haproxy") and not survivable:
            self.fatal_reason = f"{child.name} exited with status {code}"
            self.fatal.set()

    async def _stop_one(self, child: Child, sig: signal.Signals, timeout_s: float) -> None:
        def killing() -> None:
            self.out.event("process.killed", level="warning", name=child.name, pid=child.pid)

        stop = partial(child.process.stop, sig, timeout_s, interrupt=self.hurry, on_kill=killing)
        await trio.to_thread.run_sync(stop, limiter=self._waiters)

    async def stop_all(self) -> None:
        """Gateways drain while HAProxy stops accepting; then HAProxy; then Redis."""
        self.stopping = True
        gateways = [c for c in self.children if c.role == "gateway"]
        proxies = [c for c in self.children if c.role == "haproxy"]
        redis = [c for c in self.children if c.role == "redis"]
        self.out.event("cluster.stopping", processes=[c.name for c in self.children if c.running])
        for proxy in proxies:
            if proxy.running:
                proxy.process.send_signal(signal.SIGUSR1)  # soft stop: close the listener, keep sessions
        async with trio.open_nursery() as nursery:
            for gw in gateways:
                nursery.start_soon(self._stop_one, gw, signal.SIGTERM, self.plan.stop_timeout_s)
        for proxy in proxies:
            with trio.move_on_after(HAPROXY_LINGER_S):
                await proxy.exited.wait()
            await self._stop_one(proxy, signal.SIGTERM, HAPROXY_STOP_TIMEOUT_S)
        for r in redis:
            await self._stop_one(r, signal.SIGTERM, REDIS_STOP_TIMEOUT_S)
        await trio.to_thread.run_sync(self._wait_for_output, OUTPUT_WAIT_S, limiter=self._waiters)

    def _wait_for_output(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if child.process.output_done.wait(max(0.0, deadline - time.monotonic())):
                child.process.close()
