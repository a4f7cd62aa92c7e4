"""Logical networks (``/portal/networks``, issue 18): each network of each cluster with its VLAN, MTU, roles and
bridge, which hosts carry it and which VMs use it; a form to add one and a delete button per network. Changes go
through the REST API (``/api/v1/networks``) from ``static/networks.js``, so the portal can do no more than the API
allows (admins create and delete; everyone may read)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PageDep

router = APIRouter(prefix=PREFIX, include_in_schema=False)

ROLES = ("vm", "management", "migration", "storage")
MAX_DETAILS = 50  # networks whose hosts and VMs the page shows (one API read each)


@router.get("/networks")
async def networks_page(page: PageDep, cluster: str | None = None) -> Response:
    res = await page.get("/networks", cluster=cluster, limit=500)
    clusters = await page.get("/clusters", limit=1000)
    items = sorted(res.items if res.ok else [], key=lambda n: (n.get("cluster") or "", n["name"]))
    details: dict[str, dict[str, Any]] = {}
    for n in items[:MAX_DETAILS]:
        d = await page.get(f"/networks/{n['id']}")
        if d.ok:
            details[n["id"]] = d.data
    return page.render("networks.html", title="Networks", networks=items, details=details,
                       clusters=clusters.items, cluster=cluster, roles=ROLES,
                       error=None if res.ok else res.message, more=len(items) > MAX_DETAILS)
