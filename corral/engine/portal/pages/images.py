"""The image library (``/portal/images``, issue 12): uploaded disk images and ISOs, their delete, and the upload
form. The browser sends the file itself (``static/storage.js``: an ``XMLHttpRequest`` PUT of the ``File``,
streamed with its ``Content-Length``, with a progress bar) through ``/portal/api/images/{name}``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PageDep

router = APIRouter(prefix=PREFIX, include_in_schema=False)

KINDS = {"iso": "ISO", "image": "disk image"}
# the browser checks a file's sha256 only below this size: crypto.subtle digests a whole buffer, in memory
SHA256_MAX_BYTES = 256 << 20


@router.get("/images")
async def images(page: PageDep, kind: str | None = None, storage: str | None = None,
                 after: str | None = None) -> Response:
    kind = kind if kind in KINDS else None
    res = await page.get("/images", kind=kind, storage=storage, after=after, limit=200)
    domains = await page.get("/storage-domains", limit=500)
    hosts: dict[str, list[str]] = {}
    for d in domains.items:  # the hosts a local domain's image can go to
        if not d.get("shared"):
            detail = await page.get(f"/storage-domains/{d['id']}")
            hosts[d["name"]] = [h["host"] for h in (detail.data or {}).get("hosts", []) if h.get("state") == "active"]
    return page.render("images.html", title="Images and ISOs", images=res.items if res.ok else [],
                       error=None if res.ok else res.message, kinds=KINDS, kind=kind, storage=storage,
                       domains=domains.items, domain_hosts=hosts, sha_max=SHA256_MAX_BYTES,
                       next_after=(res.data or {}).get("next") if res.ok else None)
