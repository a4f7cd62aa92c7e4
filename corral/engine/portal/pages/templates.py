"""Templates (issue 12): the list (``/portal/templates``: memory, vCPUs, base disks, clones) and one template
(``/portal/templates/{id}``: its base volumes, the clones that read them and their VMs, delete). Making one is
an action of a stopped VM's page, and creating a VM from one is the New VM form's template picker; every change
goes through the REST API from ``static/templates.js``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PageDep
from corral.engine.portal.paging import page_size

router = APIRouter(prefix=PREFIX, include_in_schema=False)
MAX_LINKED = 50  # clone VMs a template's page links to their pages; more are listed by name


def base_disks(t: dict[str, Any]) -> list[dict[str, Any]]:
    """The template's disks in its spec's order, each with its base volume when it is one (an ISO in a CD-ROM
    stays shared media: no base volume)."""
    bases = {v["name"]: v for v in t.get("volumes") or []}
    return [{"device": d.get("device") or "disk", "volume": d.get("volume"), "image": d.get("image"),
             "base": bases.get(d.get("volume") or "")} for d in (t.get("spec") or {}).get("disks") or []]


@router.get("/templates")
async def templates_list(page: PageDep, after: str | None = None, limit: str | None = None) -> Response:
    size = page_size(limit)
    res = await page.get("/templates", after=after, limit=size)
    return page.render("templates.html", title="Templates", templates=res.items if res.ok else [],
                       error=None if res.ok else res.message,
                       next_after=(res.data or {}).get("next") if res.ok else None)


@router.get("/templates/{template_id}")
async def template_page(page: PageDep, template_id: str) -> Response:
    res = await page.get(f"/templates/{template_id}")
    if not res.ok:
        return page.not_found(res, "Template")
    t = res.data
    vms: dict[str, str | None] = {v: None for v in t.get("vms") or []}
    for name in list(vms)[:MAX_LINKED]:  # the clones' VMs linked by id: one exact-name read each
        found = await page.get("/vms", name=name, limit=1)
        vms[name] = found.items[0]["id"] if found.ok and found.items else None
    return page.render("template.html", title=f"Template {t['name']}", t=t, disks=base_disks(t), vm_ids=vms)
