"""Consoles through the engine: a client's WebSocket spliced to the agent's console relay (``corral.agent.relay``).

The engine never dials a hypervisor's port: it opens ``/v1/vms/{uuid}/console/{vnc|serial}`` on the agent of
the host that runs the VM, with the credentials it uses for every agent call (its TLS client certificate, or
the host's token), and copies bytes both ways. VNC servers and consoles listen on the hosts' loopback only.

Who may open a console is checked before this: the portal with a one-time ticket bound to the VM, the kind and
the session's user (``corral.engine.portal.console``), the REST API with its bearer token
(``corral.engine.api.consoles``). When the agent ends a console (the VM stopped, no such console) its close code
-- ``4000 + HTTP status`` -- and reason are passed on to the client.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import aiohttp
from sqlalchemy.orm import Session
from starlette.websockets import WebSocket

from corral.engine.agent_client import AgentClient, AgentTarget, AgentUnreachable
from corral.engine.api.deps import find_vm
from corral.engine.context import EngineContext
from corral.engine.db.models import Host
from corral.engine.errors import Conflict
from corral.splice import splice, subprotocol

log = logging.getLogger(__name__)

KINDS = ("vnc", "serial")
RUNNING = ("up", "paused", "shutting_down", "migrating")


@dataclass(frozen=True)
class ConsoleTarget:
    """A VM's console as the engine reaches it: through the agent of the host that runs it."""

    vm_id: str
    vm_name: str
    host_name: str
    agent: AgentTarget


async def console_target(ctx: EngineContext, vm_ref: str) -> ConsoleTarget:
    """The running VM ``vm_ref`` (id or name) and its host's agent; ``NotFound``, or ``Conflict`` while it
    does not run on a host."""

    def q(s: Session) -> ConsoleTarget:
        row = find_vm(s, vm_ref)
        h = s.get(Host, row.host_id) if row.host_id else None
        if h is None or row.state not in RUNNING:
            raise Conflict(f"VM {row.name} is {row.state}; its console exists while it runs", field="state")
        return ConsoleTarget(row.id, row.name, h.name, AgentTarget(h.agent_url, h.agent_token))

    return await ctx.db.run(q)


async def relay(ws: WebSocket, agents: AgentClient, target: ConsoleTarget, kind: str, who: str) -> None:
    """Accept ``ws`` and splice it to the agent's console ``kind`` of the VM until either side ends."""
    assert kind in KINDS
    path = f"/v1/vms/{target.vm_id}/console/{kind}"
    try:
        upstream = await agents.websocket(target.agent, path)
    except AgentUnreachable as exc:
        await ws.accept(subprotocol=subprotocol(ws))
        await ws.close(code=4502, reason=f"host {target.host_name} does not answer"[:120])
        log.info("%s console of VM %s: host %s does not answer: %s", kind, target.vm_name, target.host_name,
                 exc.message)
        return
    await ws.accept(subprotocol=subprotocol(ws))
    log.info("%s console of VM %s opened by %s through host %s", kind, target.vm_name, who, target.host_name)

    ended: dict[str, object] = {}

    async def read() -> bytes:
        while True:
            msg = await upstream.receive()
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data:
                return bytes(msg.data)
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data:
                return str(msg.data).encode()
            if msg.type == aiohttp.WSMsgType.CLOSE:
                ended.update(code=msg.data, reason=msg.extra or "")
                return b""
            if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return b""

    async def write(data: bytes) -> None:
        await upstream.send_bytes(data)

    try:
        await splice(ws, read, write)
    finally:
        with contextlib.suppress(Exception):
            await upstream.close()
        code = ended.get("code")
        passed = isinstance(code, int) and 4000 <= code < 5000
        with contextlib.suppress(RuntimeError, OSError):
            await ws.close(code=code if passed and isinstance(code, int) else 1000,
                           reason=str(ended.get("reason") or "")[:120] if passed else "")
        log.info("%s console of VM %s closed", kind, target.vm_name)
