"""The consoles of a VM in the portal: the graphical one (``/portal/vms/{id}/console``, noVNC) and the interactive
serial one (``/portal/vms/{id}/terminal``), each page issuing a one-time ticket for its WebSocket
(``/portal/vms/{id}/ws/vnc`` and ``/ws/serial``), which the engine relays through the agent of the VM's host
(``corral.engine.consoles``); noVNC's files (``/portal/novnc/``) from where ``scripts/install`` put them.
``corral.engine.portal.console`` has the rules.

The REST API's console WebSockets (``corral.engine.api.consoles``) are mounted with these routes: they live
outside ``/api/v1``'s router, whose bearer-token dependency cannot read a WebSocket, and check the token
themselves. This router therefore has no prefix: every path names ``PREFIX`` itself.
"""

from __future__ import annotations

import mimetypes
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response

from corral.engine import access
from corral.engine.api import consoles as api_consoles
from corral.engine.consoles import KINDS, console_target, relay
from corral.engine.context import EngineContext
from corral.engine.errors import ApiError
from corral.engine.portal.console import TICKET_TTL, console_problem, xterm_dir
from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PageDep, PortalDep, SessionDep
from corral.engine.portal.pages.vm import VmDep

router = APIRouter(include_in_schema=False)
router.include_router(api_consoles.router)

ASSET_SUFFIXES = (".js", ".mjs", ".json", ".css", ".svg", ".png", ".wasm")
_xterm = lru_cache(maxsize=1)(xterm_dir)  # looked for once per process, like noVNC (Portal.novnc)


async def _console_page(page: PageDep, found: VmDep, kind: str, template: str, title: str) -> Response:
    res, vm = found
    if vm is None:
        return page.not_found(res, "VM")
    problem = console_problem(vm, kind)
    novnc = page.portal.novnc() is not None
    ws_path = None
    if problem is None and (novnc or kind != "vnc"):
        ticket = page.portal.consoles.issue(vm["id"], kind, page.auth.principal.username)
        ws_path = f"{PREFIX}/vms/{vm['id']}/ws/{kind}?ticket={ticket}"
    host = (vm.get("host") or {}).get("name")
    return page.render(template, title=f"{title} of {vm['name']}", vm=vm, problem=problem, novnc=novnc,
                       xterm=_xterm() is not None, ws_path=ws_path, host_name=host, ticket_ttl=int(TICKET_TTL))


@router.get(PREFIX + "/vms/{vm_id}/console")
async def vm_console(page: PageDep, found: VmDep) -> Response:
    return await _console_page(page, found, "vnc", "console.html", "Console")


@router.get(PREFIX + "/vms/{vm_id}/terminal")
async def vm_terminal(page: PageDep, found: VmDep) -> Response:
    resp = await _console_page(page, found, "serial", "terminal.html", "Serial terminal")
    # xterm.js sizes its rows with <style> elements it writes at run time (their text changes with the font and
    # the window, so no hash fits): inline *styles* are allowed on this page only; scripts stay 'self'
    csp = resp.headers.get("Content-Security-Policy")
    if csp:
        resp.headers["Content-Security-Policy"] = csp.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
    return resp


@router.websocket(PREFIX + "/vms/{vm_id}/ws/{kind}")
async def vm_console_ws(ws: WebSocket, vm_id: str, kind: str, portal: PortalDep, auth: SessionDep,
                        ticket: str = "") -> None:
    origin = ws.headers.get("origin")
    host = ws.headers.get("host")
    if origin and host and origin.split("://", 1)[-1] != host:
        await ws.close(code=1008, reason="cross-origin console connection")
        return
    if not await access.allow_websocket(ws):  # the session's role (corral.engine.access)
        return
    if auth is None or kind not in KINDS or not portal.consoles.take(ticket, vm_id, kind, auth.principal.username):
        await ws.close(code=1008, reason="console ticket invalid, spent or expired; reload the console page")
        return
    ctx = ws.app.state.corral
    assert isinstance(ctx, EngineContext)
    try:
        target = await console_target(ctx, vm_id)
    except ApiError as exc:
        await ws.accept()
        await ws.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    await relay(ws, ctx.agents, target, kind, who=auth.principal.username or "a session")


def _asset(root: Path | None, path: str, what: str) -> Response:
    """A file of an npm package the engine serves (noVNC, xterm.js): never outside its directory, scripts and
    styles only."""
    if root is None:
        return JSONResponse({"code": "not_found", "message": f"{what} is not installed", "field": None}, 404)
    target = (root / path).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file() or target.suffix not in ASSET_SUFFIXES:
        return JSONResponse({"code": "not_found", "message": "no such file", "field": None}, 404)
    media = "text/javascript" if target.suffix in (".js", ".mjs") else mimetypes.guess_type(target.name)[0]
    return FileResponse(target, media_type=media or "application/octet-stream",
                        headers={"Cache-Control": "public, max-age=3600"})


@router.get(PREFIX + "/novnc/{path:path}")
def novnc_file(path: str, portal: PortalDep) -> Response:
    return _asset(portal.novnc(), path, "noVNC")


@router.get(PREFIX + "/xterm/{path:path}")
def xterm_file(path: str) -> Response:
    return _asset(_xterm(), path, "xterm.js")
