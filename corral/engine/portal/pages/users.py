"""Users (``/portal/users``, admins only: ``corral.engine.access``): the list with role and state, a form to add a
user, and per user a role select and an enable/disable button. Every change goes through the REST API
(``/api/v1/users``) from ``static/users.js``, so the portal can do no more than the API allows."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from corral.engine.auth import Role
from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PageDep

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/users")
async def users_page(page: PageDep) -> Response:
    res = await page.get("/users", limit=1000)
    return page.render("users.html", title="Users", users=res.items if res.ok else [],
                       error=None if res.ok else res.message, roles=[r.value for r in Role],
                       me=page.auth.principal.username)
