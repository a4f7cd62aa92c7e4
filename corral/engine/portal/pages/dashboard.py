"""The dashboard (``/portal/``): hosts and VMs by state, hosts that are not up, operations in progress, recent
events; and ``/portal/summary``, its counts for the live refresh."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from corral.engine.portal import data
from corral.engine.portal.core import HOST_STATES, PREFIX, VM_STATES
from corral.engine.portal.deps import PageDep, PortalDep, SessionDep

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/")
async def dashboard(page: PageDep) -> Response:
    summary = await page.db(data.dashboard)
    events = await page.get("/events", order="desc", limit=15)
    running = await page.get("/tasks", state="running", limit=20)
    pending = await page.get("/tasks", state="pending", limit=20)
    return page.render("dashboard.html", title="Dashboard", s=summary, events=events.items,
                       tasks=[*running.items, *pending.items], vm_states=VM_STATES, host_states=HOST_STATES,
                       last_event=summary["last_event"])


@router.get("/summary")
async def summary(portal: PortalDep, auth: SessionDep) -> Response:
    """The dashboard's counts, for its live refresh."""
    if auth is None:
        return JSONResponse({"code": "unauthorized", "message": "log in first", "field": None}, 401)
    s = await portal.db.run(data.dashboard)
    counts = {"hosts-total": s["hosts_total"], "vms-total": s["vms_total"], "failing-total": s["failing_total"]}
    counts.update({f"host-{st}": s["hosts_by_state"].get(st, 0) for st in HOST_STATES})
    counts.update({f"vm-{st}": s["vms_by_state"].get(st, 0) for st in VM_STATES})
    return JSONResponse(counts, headers={"Cache-Control": "no-store"})
