"""The console relay: WebSockets on the agent's API that carry a VM's VNC or serial console.

``GET /v1/vms/{uuid}/console/vnc`` (WebSocket, subprotocol ``binary`` when offered) is spliced to the domain's
VNC server on this host's loopback, at the port its live XML names [L6, L13]; ``GET /v1/vms/{uuid}/console/serial``
to its first serial or PV console through libvirt (``virDomainOpenConsole`` on a non-blocking ``virStream``,
fed by libvirt's event loop), so no pty or file permission of the host matters and the Xen PV console works
like a UART. The routes are authenticated like every agent route (the engine's client certificate, or the
token): a console is never reachable from the network but through the agent, and the hypervisor's ports stay
on the loopback. The browser-facing tickets are the engine's business (``corral.engine.consoles``).

A console that cannot be opened is still accepted, then closed at once with code ``4000 + HTTP status`` (4404
no such VM, 4409 no such console or not running, 4502 the VNC server does not answer, 4503 libvirt is away) and
the reason as text: a WebSocket refused during the handshake carries no reason to the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import libvirt
from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool

from corral.agent.connection import Unavailable
from corral.agent.errors import AgentError, Conflict, from_libvirt
from corral.agent.vms import VmManager
from corral.agent.vms.console import vnc_address
from corral.splice import CHUNK, splice, subprotocol

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
KINDS = ("vnc", "serial")


def close_code(status: int) -> int:
    """The WebSocket close code that carries an HTTP status (4000-4999 are the application's)."""
    return 4000 + status if 400 <= status < 1000 else 4500


async def refuse(ws: WebSocket, status: int, message: str) -> None:
    """Accept and close at once with the status and the reason (at most 123 bytes, the protocol's limit)."""
    await ws.accept(subprotocol=subprotocol(ws))
    await ws.close(code=close_code(status), reason=message.encode()[:120].decode(errors="ignore"))


class ConsoleStream:
    """A domain's console as a non-blocking libvirt stream, read on libvirt's event thread and handed to the
    asyncio loop through a queue (b"" at its end)."""

    EVENTS = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
              | libvirt.VIR_STREAM_EVENT_HANGUP)

    def __init__(self, dom: libvirt.virDomain, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.stream = dom.connect().newStream(libvirt.VIR_STREAM_NONBLOCK)
        self.ended = False
        try:
            # FORCE: a console left open by a lost session (or a virsh console) is taken over, not refused
            dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            self.stream.eventAddCallback(self.EVENTS, self._event, None)
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                self.stream.abort()
            raise

    def _event(self, stream: libvirt.virStream, events: int, _opaque: Any) -> None:  # libvirt's event thread
        data: Any = b""
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            try:
                data = stream.recv(CHUNK)
            except libvirt.libvirtError:
                data = b""
            if data == -2:  # EAGAIN
                return
        if not data or events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._end()
        if data:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, bytes(data))
        if self.ended:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, b"")

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            with contextlib.suppress(libvirt.libvirtError):
                self.stream.eventRemoveCallback()

    async def read(self) -> bytes:
        return await self.queue.get()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.stream.send(bytes(view))
            except libvirt.libvirtError:
                return
            if sent == -2:  # the guest's UART is full: wait a little
                await asyncio.sleep(0.02)
                continue
            view = view[sent:]

    def close(self) -> None:
        self._end()
        with contextlib.suppress(libvirt.libvirtError):
            self.stream.abort()


def _problem(exc: BaseException) -> tuple[int, str] | None:
    if isinstance(exc, AgentError):
        return exc.status, exc.message
    if isinstance(exc, Unavailable):
        return 503, str(exc)
    if isinstance(exc, libvirt.libvirtError):
        err = from_libvirt(exc, "console")
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
            return 409, f"this host's driver has no console streams: {exc.get_error_message()}"
        if "not using a PTY" in (exc.get_error_message() or ""):
            # Xen HVM: the flavor logs the serial port to a file (ConsoleLog.FILE), and libxl opens only that one
            return 409, ("the VM's console writes to a file on this host and is not interactive; read its log "
                         f"(GET .../console): {exc.get_error_message()}")
        return err.status, err.message
    return None


async def relay_vnc(ws: WebSocket, vms: VmManager, vm_id: str) -> None:
    try:
        host, port = await run_in_threadpool(lambda: vnc_address(vms.lookup(vm_id)[1]))
    except Exception as exc:
        problem = _problem(exc)
        if problem is None:
            raise
        await refuse(ws, *problem)
        return
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        await refuse(ws, 502, f"the VNC server at {host}:{port} does not answer: {exc}")
        return
    await ws.accept(subprotocol=subprotocol(ws))
    log.info("VNC console of VM %s relayed (%s:%s)", vm_id, host, port)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    try:
        await splice(ws, lambda: reader.read(CHUNK), write)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()
        with contextlib.suppress(RuntimeError, OSError):
            await ws.close()
        log.info("VNC console of VM %s closed", vm_id)


async def relay_serial(ws: WebSocket, vms: VmManager, vm_id: str) -> None:
    loop = asyncio.get_running_loop()

    def open_console() -> ConsoleStream:
        _vm, dom = vms.lookup(vm_id)
        if not dom.isActive():
            raise Conflict("the VM is not running; its console exists while it runs", field="state")
        return ConsoleStream(dom, loop)

    try:
        console = await run_in_threadpool(open_console)
    except Exception as exc:
        problem = _problem(exc)
        if problem is None:
            raise
        await refuse(ws, *problem)
        return
    await ws.accept(subprotocol=subprotocol(ws))
    log.info("serial console of VM %s relayed", vm_id)
    try:
        ended = await splice(ws, console.read, console.write)
    finally:
        console.close()
    with contextlib.suppress(RuntimeError, OSError):
        await ws.close(code=1000, reason="the console ended" if ended == "server" else "")
    log.info("serial console of VM %s closed", vm_id)


def console_router(vms: Callable[[], VmManager]) -> APIRouter:
    """The two console WebSockets; authentication is the app's middleware, as for every route."""
    router = APIRouter(prefix="/v1/vms")

    @router.websocket("/{vm_id}/console/vnc")
    async def vnc(ws: WebSocket, vm_id: str) -> None:
        await relay_vnc(ws, vms(), vm_id)

    @router.websocket("/{vm_id}/console/serial")
    async def serial(ws: WebSocket, vm_id: str) -> None:
        await relay_serial(ws, vms(), vm_id)

    return router
