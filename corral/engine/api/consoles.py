"""``/api/v1/vms/{vm}/console/{vnc|serial}``: a VM's console as a WebSocket of the REST API (``corral vm console``).

A WebSocket route is not covered by the REST router's bearer-token dependency (FastAPI's ``HTTPBearer`` reads a
plain request), so this one checks the same ``Authorization: Bearer`` header itself, before the handshake
completes (a refused client sees HTTP 403). The console is then relayed through the VM's host's agent
(``corral.engine.consoles``); a VM that is unknown or not running is accepted and closed at once with ``4000 +
HTTP status`` (4404, 4409) and the reason, as the agent does.

The router is mounted beside the portal's console routes (``corral.engine.portal.pages.console``), which need no
bearer token: they are outside ``/api/v1``'s router on purpose.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from corral.engine import access
from corral.engine.consoles import KINDS, console_target, relay
from corral.engine.context import EngineContext
from corral.engine.errors import ApiError

router = APIRouter(prefix="/api/v1/vms", include_in_schema=False)


def bearer(ws: WebSocket) -> str:
    header = ws.headers.get("authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


@router.websocket("/{vm}/console/{kind}")
async def console_websocket(ws: WebSocket, vm: str, kind: str) -> None:
    ctx = ws.app.state.corral
    assert isinstance(ctx, EngineContext)
    if not await access.allow_websocket(ws):  # the bearer token, and the route's role (corral.engine.access)
        return
    if kind not in KINDS:
        await ws.close(code=1008, reason=f"no console {kind!r}; one of {', '.join(KINDS)}")
        return
    try:
        target = await console_target(ctx, vm)
    except ApiError as exc:
        await ws.accept()
        await ws.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    await relay(ws, ctx.agents, target, kind, who="an API token")
