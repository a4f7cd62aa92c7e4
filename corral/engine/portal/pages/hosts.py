"""The host pages: the list (``/portal/hosts``), adding one (``/portal/hosts/new``; the form posts to the API
from the browser) and one host (``/portal/hosts/{id}``: summary, hardware check, its flavor's matrix, events)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from corral.engine.portal import data
from corral.engine.portal.core import HOST_STATES, PREFIX
from corral.engine.portal.deps import PageDep
from corral.engine.portal.paging import PAGE_SIZES, page_size, pager, parse_trail

router = APIRouter(prefix=PREFIX, include_in_schema=False)

GUEST_TYPE_ORDER = {"hvm": 0, "pvh": 1, "pv": 2}


@router.get("/hosts")
async def hosts(page: PageDep, state: str | None = None, cluster: str | None = None, after: str | None = None,
                trail: str | None = None, limit: str | None = None) -> Response:
    size = page_size(limit)
    res = await page.get("/hosts", state=state, cluster=cluster, after=after, limit=size)
    clusters = await page.get("/clusters", limit=1000)
    items = res.items if res.ok else []
    extras = await page.db(lambda s: data.host_extras(s, [h["id"] for h in items]))
    filters = {"state": state, "cluster": cluster, "limit": size if size != 50 else None}
    links = pager(PREFIX + "/hosts", filters, after, parse_trail(trail), (res.data or {}).get("next"))
    last = await page.db(data.last_event_id)
    return page.render("hosts.html", title="Hosts", hosts=items, extras=extras,
                       error=None if res.ok else res.message, pager=links, state=state, cluster=cluster,
                       clusters=clusters.items, host_states=HOST_STATES, size=size, sizes=PAGE_SIZES,
                       last_event=last)


@router.get("/hosts/new")
async def host_new(page: PageDep) -> Response:
    clusters = await page.get("/clusters", limit=1000)
    return page.render("host_new.html", title="Add a host", clusters=clusters.items)


@router.get("/hosts/{host_id}")
async def host_page(page: PageDep, host_id: str) -> Response:
    res = await page.get(f"/hosts/{host_id}")
    if not res.ok:
        return page.not_found(res, "Host")
    host = res.data
    events = await page.get("/events", object_type="host", object_id=host["id"], order="desc", limit=20)
    caps = host.get("info", {}).get("capabilities") or {}
    guest_types: list[str] = []
    for per_type in caps.values():
        for gt in per_type:
            if gt not in guest_types:
                guest_types.append(gt)
    guest_types.sort(key=lambda g: GUEST_TYPE_ORDER.get(g, 9))
    last = await page.db(data.last_event_id)
    return page.render("host.html", title=f"Host {host['name']}", host=host, info=host.get("info") or {},
                       caps=dict(sorted(caps.items())), guest_types=guest_types, events=events.items,
                       last_event=last)
