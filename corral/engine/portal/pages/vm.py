"""One VM: its page (``/portal/vms/{id}``: the plan per host, start and the other actions -- posted to the API
by the browser --, details, devices, events), its device list alone for the live refresh (``.../devices``) and
its serial console log (``.../serial``). The graphical console is ``pages.console``'s."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from corral.engine.portal import data
from corral.engine.portal.core import PREFIX, SECURITY_HEADERS, ApiResult
from corral.engine.portal.deps import PageDep

router = APIRouter(prefix=PREFIX, include_in_schema=False)


async def read_vm(page: PageDep, vm_id: str) -> tuple[ApiResult, dict[str, Any] | None]:
    """The VM of the path as the API answers it, and its body (None when the API said no)."""
    res = await page.get(f"/vms/{vm_id}")
    return res, (res.data if res.ok else None)


VmDep = Annotated[tuple[ApiResult, dict[str, Any] | None], Depends(read_vm)]


@router.get("/vms/{vm_id}")
async def vm_page(page: PageDep, found: VmDep) -> Response:
    res, vm = found
    if vm is None:
        return page.not_found(res, "VM")
    events = await page.get("/events", object_type="vm", object_id=vm["id"], order="desc", limit=20)
    hosts_list = [h for h in await page.db(data.host_choices) if h["cluster_id"] == vm["cluster_id"]]
    last_host = next((h for h in hosts_list if h["id"] == vm.get("last_host_id")), None)
    tasks = await page.get("/tasks", object_id=vm["id"], limit=100)
    active = [t for t in tasks.items if t["state"] in ("pending", "running")]
    last = await page.db(data.last_event_id)
    return page.render("vm.html", title=f"VM {vm['name']}", vm=vm, hosts=hosts_list, last_host=last_host,
                       events=events.items, active_tasks=active,
                       spec_json=json.dumps(vm.get("spec"), indent=2) if vm.get("spec") else None, last_event=last)


@router.get("/vms/{vm_id}/devices")
async def vm_devices(page: PageDep, found: VmDep) -> Response:
    res, vm = found
    if vm is None:
        return page.not_found(res, "VM")
    html = page.portal.templates.get_template("_devices.html").render(vm=vm)
    return HTMLResponse(html, headers=SECURITY_HEADERS)


@router.get("/vms/{vm_id}/serial")
async def vm_serial(page: PageDep, found: VmDep) -> Response:
    res, vm = found
    if vm is None:
        return page.not_found(res, "VM")
    log = await page.get(f"/vms/{vm['id']}/console", tail=65536)
    return page.render("serial.html", title=f"Serial console of {vm['name']}", vm=vm,
                       log=(log.data or {}).get("log", "") if log.ok else "", error=None if log.ok else log.message)
