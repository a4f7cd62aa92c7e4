"""Browser consoles: where noVNC is installed, per-session console tokens, and the VNC WebSocket proxy.

noVNC is not part of Corral's source: ``scripts/install`` fetches the npm package ``@novnc/novnc`` into
``<venv>/share/corral/novnc`` and the engine serves its ES modules from there (``CORRAL_NOVNC_DIR`` points
elsewhere; Debian's ``novnc`` package in ``/usr/share/novnc`` works too). ``novnc_dir`` returns None when
none is found and the console page says so.

A console page asks for a **console token**: a random string bound to the VM, the VNC endpoint on its host
(address from the agent's URL, port from the VM's live graphics device) and the user, valid for
``TOKEN_TTL`` seconds to open the WebSocket. The proxy accepts the WebSocket only with a live token, a
valid session cookie of the same user and a same-origin ``Origin``, then copies bytes between the browser
and ``host:port`` over TCP. The engine talks plain RFB to the host; the browser sees only the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect

log = logging.getLogger(__name__)

TOKEN_TTL = 120.0
CONNECT_TIMEOUT = 5.0
CHUNK = 64 * 1024


def novnc_dir() -> Path | None:
    """The directory that holds noVNC's ``core/rfb.js``, or None."""
    candidates: list[Path] = []
    env = os.environ.get("CORRAL_NOVNC_DIR")
    if env:
        candidates += [Path(env), Path(env) / "node_modules" / "@novnc" / "novnc"]
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        candidates.append(Path(prefix) / "share" / "corral" / "novnc" / "node_modules" / "@novnc" / "novnc")
    repo = Path(__file__).resolve().parents[3]
    candidates.append(repo / ".venv" / "share" / "corral" / "novnc" / "node_modules" / "@novnc" / "novnc")
    candidates.append(Path("/usr/share/novnc"))
    for c in candidates:
        if (c / "core" / "rfb.js").is_file():
            return c
    return None


@dataclass(frozen=True)
class VncTarget:
    vm_id: str
    host: str
    port: int
    username: str
    expires: float


@dataclass(frozen=True)
class VncEndpoint:
    """Where the VM's VNC server is, or why the engine cannot reach it (``problem``)."""

    host: str | None
    port: int | None
    problem: str | None = None


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address == "localhost"


def vnc_endpoint(vm: dict[str, Any]) -> VncEndpoint:
    """The VNC server of a VM from its API detail (live devices and current host)."""
    if vm.get("state") not in ("up", "paused", "shutting_down"):
        return VncEndpoint(None, None, f"the VM is {vm.get('state')}; its console exists while it runs")
    graphics = [d for d in vm.get("devices") or [] if d.get("kind") == "graphics"]
    if not graphics:
        spec = vm.get("spec") or {}
        if not spec.get("graphics"):
            return VncEndpoint(None, None, "the VM has no graphics device; use its serial console")
        return VncEndpoint(None, None, "the host did not report the VM's live devices")
    g = graphics[0]
    if g.get("type") != "vnc":
        return VncEndpoint(None, None, f"the VM's graphics are {g.get('type')}, not VNC")
    port = g.get("port")
    if not isinstance(port, int) or port <= 0:
        return VncEndpoint(None, None, "the host reports no VNC port for this VM (the driver runs no VNC server)")
    host = vm.get("host") or {}
    agent_url = str(vm.get("_agent_url") or "")
    agent_host = urlsplit(agent_url).hostname if agent_url else None
    if not agent_host:
        return VncEndpoint(None, None, f"unknown address of host {host.get('name') or '?'}")
    listen = str(g.get("listen") or "")
    if listen in ("", "0.0.0.0", "::"):
        return VncEndpoint(agent_host, port)
    if _loopback(listen):
        if _loopback(agent_host):
            return VncEndpoint(agent_host, port)
        return VncEndpoint(None, port, f"the VNC server listens on {listen} of host {host.get('name')}; the "
                                       "engine cannot reach a loopback address of another machine")
    return VncEndpoint(listen, port)


class ConsoleTokens:
    def __init__(self) -> None:
        self._tokens: dict[str, VncTarget] = {}

    def issue(self, vm_id: str, host: str, port: int, username: str) -> str:
        now = time.monotonic()
        for key in [k for k, v in self._tokens.items() if v.expires < now]:
            del self._tokens[key]
        token = secrets.token_urlsafe(32)
        self._tokens[token] = VncTarget(vm_id, host, port, username, now + TOKEN_TTL)
        return token

    def take(self, token: str, vm_id: str, username: str) -> VncTarget | None:
        target = self._tokens.get(token)
        if target is None or target.expires < time.monotonic() or target.vm_id != vm_id \
                or target.username != username:
            return None
        return target


async def proxy(ws: WebSocket, target: VncTarget) -> None:
    """Accept the WebSocket and copy bytes both ways between it and the VNC server until either side ends."""
    offered = ws.scope.get("subprotocols") or []
    subprotocol = "binary" if "binary" in offered else None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port),
                                                CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        log.info("console of VM %s: cannot reach %s:%s: %s", target.vm_id, target.host, target.port, exc)
        await ws.close(code=1011, reason="the VNC server does not answer")
        return
    await ws.accept(subprotocol=subprotocol)
    log.info("console of VM %s opened by %s (%s:%s)", target.vm_id, target.username, target.host, target.port)

    async def upstream() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None and msg.get("text") is not None:
                data = str(msg["text"]).encode()
            if data:
                writer.write(data)
                await writer.drain()

    async def downstream() -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            await ws.send_bytes(data)

    tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, OSError, RuntimeError):
                await t
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()
        with contextlib.suppress(RuntimeError, OSError):
            await ws.close()
        log.info("console of VM %s closed", target.vm_id)
