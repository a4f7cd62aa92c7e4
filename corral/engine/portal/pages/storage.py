"""The storage pages (issue 12): the storage domains (``/portal/storage``: each domain with a capacity bar per
host, and the form that adds one -- posted to the API from the browser) and one domain (``/portal/storage/
{id}``: its state on every host of its cluster, its volumes, delete)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from corral.engine.portal.core import HOST_STATES, PREFIX
from corral.engine.portal.deps import Page, PageDep

router = APIRouter(prefix=PREFIX, include_in_schema=False)

DOMAIN_TYPES = {"dir": "directory on each host (local)", "nfs": "NFS export (shared)",
                "logical": "LVM volume group (local)"}
MAX_DETAILS = 50  # domains whose per-host rows the list shows (one API read each); more: their pages do


def host_rows(hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each host's row as shown: used space beside free, and the reason in words (``host is non operational``,
    not the state's identifier)."""
    out = []
    for h in hosts:
        cap, free = h.get("capacity_bytes"), h.get("free_bytes")
        used = cap - free if cap is not None and free is not None else None
        reason = str(h.get("reason") or "")
        for st in HOST_STATES:
            reason = reason.replace(f"host is {st}", "host is " + st.replace("_", " "))
        out.append({**h, "used_bytes": used, "reason": reason,
                    "percent": round(100 * used / cap) if used is not None and cap else None})
    return out


async def domain_details(page: Page, domains: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per domain id, its hosts' rows (the API's domain detail), for the first ``MAX_DETAILS`` domains."""
    details: dict[str, list[dict[str, Any]]] = {}
    for d in domains[:MAX_DETAILS]:
        res = await page.get(f"/storage-domains/{d['id']}")
        if res.ok:
            details[d["id"]] = host_rows(res.data.get("hosts") or [])
    return details


@router.get("/storage")
async def storage_list(page: PageDep, cluster: str | None = None) -> Response:
    res = await page.get("/storage-domains", cluster=cluster, limit=500)
    clusters = await page.get("/clusters", limit=1000)
    domains = res.items if res.ok else []
    return page.render("storage.html", title="Storage", domains=domains, hosts=await domain_details(page, domains),
                       clusters=clusters.items, cluster=cluster, types=DOMAIN_TYPES,
                       error=None if res.ok else res.message, more=len(domains) > MAX_DETAILS)


@router.get("/storage/{domain_id}")
async def storage_domain(page: PageDep, domain_id: str, after: str | None = None) -> Response:
    res = await page.get(f"/storage-domains/{domain_id}")
    if not res.ok:
        return page.not_found(res, "Storage domain")
    domain = res.data
    volumes = await page.get("/volumes", domain=domain["id"], limit=200, after=after)
    images = await page.get("/images", storage=domain["id"], limit=500)
    kinds = {i["id"]: i["kind"] for i in images.items}
    return page.render("storage_domain.html", title=f"Storage domain {domain['name']}", domain=domain,
                       hosts=host_rows(domain.get("hosts") or []), volumes=volumes.items, kinds=kinds,
                       next_after=(volumes.data or {}).get("next") if volumes.ok else None,
                       error=None if volumes.ok else volumes.message, types=DOMAIN_TYPES)
