"""Copy bytes both ways between an accepted WebSocket and another byte channel until either side ends.

Every console hop is this one loop: the agent splices the browser-facing WebSocket of the engine to a VNC
server's TCP socket or to libvirt's console stream (``corral.agent.relay``), and the engine splices the
browser's or the CLI's WebSocket to the agent's (``corral.engine.consoles``). The other side is given as two
coroutines: ``read`` answers b"" at its end, ``write`` sends one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

CHUNK = 64 * 1024

Read = Callable[[], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


async def splice(ws: WebSocket, read: Read, write: Write) -> str:
    """Run until one side ends; answer which: ``"client"`` (the WebSocket went away) or ``"server"``. The
    WebSocket is not closed here: the caller closes it with the code that says why."""

    async def upstream() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None and msg.get("text") is not None:
                data = str(msg["text"]).encode()
            if data:
                await write(data)

    async def downstream() -> None:
        while True:
            data = await read()
            if not data:
                return
            await ws.send_bytes(data)

    up, down = asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())
    try:
        done, _ = await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (up, down):
            t.cancel()
        for t in (up, down):
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, OSError, RuntimeError,
                                     ConnectionError):
                await t
    return "client" if up in done else "server"


def subprotocol(ws: WebSocket) -> str | None:
    """noVNC offers ``binary``; answer it when offered, nothing otherwise."""
    offered = ws.scope.get("subprotocols") or []
    return "binary" if "binary" in offered else None
