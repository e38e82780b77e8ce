"""A loopback TCP proxy that can stall one direction of chosen connections.

Used to cause a real network fault that a socket does not report: bytes simply
stop arriving, as with a half-dead NAT entry or a wedged peer.
"""

from __future__ import annotations

import trio


class StallingProxy:
    """Forwards ``127.0.0.1:port`` to ``target_port``.

    ``stall_replies_to(marker)``: for connections whose client sent ``marker``
    (e.g. a ``CLIENT SETNAME`` value), stop forwarding server-to-client bytes.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.stall_marker: bytes | None = None
        self.stalled_connections = 0

    def stall_replies_to(self, marker: bytes) -> None:
        self.stall_marker = marker

    def clear(self) -> None:
        self.stall_marker = None

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        seen = bytearray()
        async with client, server, trio.open_nursery() as nursery:

            async def upstream() -> None:
                try:
                    while data := await client.receive_some(65536):
                        if len(seen) < 4096:
                            seen.extend(data)
                        await server.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            async def downstream() -> None:
                counted = False
                try:
                    while data := await server.receive_some(65536):
                        marker = self.stall_marker
                        while marker is not None and marker in seen:
                            # The stall: hold the bytes, forward nothing, keep the socket open.
                            if not counted:
                                self.stalled_connections += 1
                                counted = True
                            await trio.sleep(0.05)
                            marker = self.stall_marker
                        await client.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(upstream)
            nursery.start_soon(downstream)
