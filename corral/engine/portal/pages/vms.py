"""The VM list (``/portal/vms``: filters, page size, keyset pages, the number of matches) and the form that
defines a VM (``/portal/vms/new``; it posts to the API from the browser)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from corral.engine.portal import data
from corral.engine.portal.core import PREFIX, VM_STATES
from corral.engine.portal.deps import PageDep
from corral.engine.portal.paging import PAGE_SIZES, page_size, pager, parse_trail

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/vms")
async def vms(page: PageDep, state: str | None = None, host: str | None = None, cluster: str | None = None,
              name: str | None = None, external: str | None = None, after: str | None = None,
              trail: str | None = None, limit: str | None = None) -> Response:
    size = page_size(limit)
    ext = {"yes": True, "no": False}.get(external or "")
    name = (name or "").strip() or None
    host = (host or "").strip() or None
    res = await page.get("/vms", state=state, host=host, cluster=cluster, name=name,
                         external=None if ext is None else str(ext).lower(), after=after, limit=size)
    items = res.items if res.ok else []
    error = None if res.ok else res.message
    error_field = (res.data or {}).get("field") if not res.ok and isinstance(res.data, dict) else None
    hosts_list = await page.db(data.host_choices)
    clusters = await page.get("/clusters", limit=1000)
    total = None
    if res.ok:
        host_id = next((h["id"] for h in hosts_list if host in (h["id"], h["name"])), None) if host else None
        cluster_id = next((c["id"] for c in clusters.items if cluster in (c["id"], c["name"])),
                          None) if cluster else None
        total = await page.db(lambda s: data.count_vms(s, state=state, host_id=host_id, cluster_id=cluster_id,
                                                       name=name, external=ext))
    filters = {"state": state, "host": host, "cluster": cluster, "name": name, "external": external,
               "limit": size if size != 50 else None}
    links = pager(PREFIX + "/vms", filters, after, parse_trail(trail), (res.data or {}).get("next"))
    last = await page.db(data.last_event_id)
    page_no = len(parse_trail(trail)) + 1 if after else 1
    return page.render("vms.html", title="Virtual machines", vms=items, error=error, error_field=error_field,
                       pager=links, f=filters, hosts=hosts_list, clusters=clusters.items, vm_states=VM_STATES,
                       total=total, size=size, sizes=PAGE_SIZES, page_no=page_no, last_event=last)


@router.get("/vms/new")
async def vm_new(page: PageDep, template: str | None = None) -> Response:
    clusters = await page.get("/clusters", limit=1000)
    hosts_list = await page.db(data.host_choices)
    bridges: list[str] = []
    for h in (await page.get("/hosts", limit=200, state="up")).items:
        for b in h.get("bridges") or []:
            if b not in bridges:
                bridges.append(b)
    domains = (await page.get("/storage-domains", limit=500)).items
    isos = (await page.get("/images", kind="iso", limit=500)).items
    iso_ids = {i["id"] for i in isos}
    # volumes a new VM may take: ready, owned by no VM, not an ISO (those go in the CD-ROM)
    volumes = [v for v in (await page.get("/volumes", state="ready", limit=500)).items
               if not v.get("vm_id") and v["id"] not in iso_ids]
    # disk images to clone (issue 12), and the templates a VM can be made from (ready ones)
    images = [i for i in (await page.get("/images", kind="image", limit=500)).items if i.get("state") == "ready"]
    templates = [t for t in (await page.get("/templates", limit=500)).items if t.get("state") == "ready"]
    return page.render("vm_new.html", title="New virtual machine", clusters=clusters.items, hosts=hosts_list,
                       bridges=sorted(bridges), domains=domains, isos=[i for i in isos if i.get("path")],
                       volumes=volumes, images=images, templates=templates, template=template)
