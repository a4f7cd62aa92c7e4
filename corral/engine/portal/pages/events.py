"""The event list (``/portal/events``): newest first, by severity and object type, live on the first page."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from corral.engine.portal import data
from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PageDep
from corral.engine.portal.paging import PAGE_SIZES, page_size, pager, parse_trail

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/events")
async def events(page: PageDep, min_severity: str | None = None, object_type: str | None = None,
                 after: str | None = None, trail: str | None = None, limit: str | None = None) -> Response:
    size = page_size(limit)
    res = await page.get("/events", order="desc", min_severity=min_severity, object_type=object_type, after=after,
                         limit=size)
    filters = {"min_severity": min_severity, "object_type": object_type, "limit": size if size != 50 else None}
    links = pager(PREFIX + "/events", filters, after, parse_trail(trail), (res.data or {}).get("next"))
    last = await page.db(data.last_event_id)
    return page.render("events.html", title="Events", events=res.items if res.ok else [],
                       error=None if res.ok else res.message, pager=links, f=filters, size=size, sizes=PAGE_SIZES,
                       live=after is None, last_event=last)
