"""The graphical console: the page (``/portal/vms/{id}/console``) that issues a console token, the WebSocket
that proxies VNC with it (``/portal/vms/{id}/vnc``), and noVNC's files (``/portal/novnc/``) from where
``scripts/install`` put them (``corral.engine.portal.console`` has the rules)."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response

from corral.engine.portal.console import proxy, vnc_endpoint
from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PageDep, PortalDep, SessionDep
from corral.engine.portal.pages.vm import VmDep

router = APIRouter(prefix=PREFIX, include_in_schema=False)

NOVNC_SUFFIXES = (".js", ".json", ".css", ".svg", ".png", ".wasm")


@router.get("/vms/{vm_id}/console")
async def vm_console(page: PageDep, found: VmDep) -> Response:
    res, vm = found
    if vm is None:
        return page.not_found(res, "VM")
    agent_url = None
    if vm.get("host"):
        h = await page.get(f"/hosts/{vm['host']['id']}")
        agent_url = h.data.get("agent_url") if h.ok else None
    endpoint = vnc_endpoint({**vm, "_agent_url": agent_url})
    novnc = page.portal.novnc()
    ws_path = None
    if endpoint.problem is None and endpoint.host and endpoint.port and novnc is not None:
        token = page.portal.consoles.issue(vm["id"], endpoint.host, endpoint.port, page.auth.principal.username)
        ws_path = f"{PREFIX}/vms/{vm['id']}/vnc?token={token}"
    return page.render("console.html", title=f"Console of {vm['name']}", vm=vm, endpoint=endpoint,
                       novnc=novnc is not None, ws_path=ws_path)


@router.websocket("/vms/{vm_id}/vnc")
async def vm_vnc(ws: WebSocket, vm_id: str, portal: PortalDep, auth: SessionDep, token: str = "") -> None:
    origin = ws.headers.get("origin")
    host = ws.headers.get("host")
    if origin and host and origin.split("://", 1)[-1] != host:
        await ws.close(code=1008, reason="cross-origin console connection")
        return
    target = portal.consoles.take(token, vm_id, auth.principal.username) if auth else None
    if target is None:
        await ws.close(code=1008, reason="console token invalid or expired; reload the console page")
        return
    await proxy(ws, target)


@router.get("/novnc/{path:path}")
def novnc_file(path: str, portal: PortalDep) -> Response:
    root = portal.novnc()
    if root is None:
        return JSONResponse({"code": "not_found", "message": "noVNC is not installed", "field": None}, 404)
    target = (root / path).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file() or target.suffix not in NOVNC_SUFFIXES:
        return JSONResponse({"code": "not_found", "message": "no such file", "field": None}, 404)
    media = "text/javascript" if target.suffix == ".js" else mimetypes.guess_type(target.name)[0]
    return FileResponse(target, media_type=media or "application/octet-stream",
                        headers={"Cache-Control": "public, max-age=3600"})
