"""The FastAPI dependencies the portal's routers share: the app's ``Portal``, the session (if any), and a
``Page`` for handlers that need a logged-in user (it redirects to the login page otherwise).

Declared with ``Annotated`` so a handler states what it needs in its signature (``page: PageDep``) and the pages
are plain module-level functions on their own ``APIRouter``s instead of closures over one builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from corral.engine import access
from corral.engine.auth import Role
from corral.engine.errors import ApiError
from corral.engine.portal.core import ApiResult, Auth, Portal

T = TypeVar("T")


# Coroutines, like the API's dependencies: FastAPI runs a plain ``def`` dependency in a worker thread.
async def get_portal(conn: HTTPConnection) -> Portal:
    portal = conn.app.state.portal
    assert isinstance(portal, Portal)
    return portal


PortalDep = Annotated[Portal, Depends(get_portal)]


async def get_session(conn: HTTPConnection, portal: PortalDep) -> Auth | None:
    """The logged-in user of this request or WebSocket (its session cookie), or None."""
    return await portal.current(conn)


SessionDep = Annotated[Auth | None, Depends(get_session)]


@dataclass
class Page:
    """A request of a logged-in user: reads the REST API as that user and renders templates for them."""

    portal: Portal
    request: Request
    auth: Auth

    async def get(self, path: str, **params: Any) -> ApiResult:
        return await self.portal.get(self.auth, path, **params)

    async def db(self, fn: Callable[[Session], T]) -> T:
        """One of ``data``'s aggregates (the figures the API has no endpoint for)."""
        return await self.portal.db.run(fn)

    def render(self, name: str, *, status: int = 200, **values: Any) -> HTMLResponse:
        return self.portal.render(self.request, name, self.auth, status=status, **values)

    def not_found(self, result: ApiResult, what: str) -> HTMLResponse:
        return self.portal.not_found(self.request, self.auth, result, what)


async def get_page(request: Request, portal: PortalDep) -> Page:
    """The ``Page`` of a logged-in user; without a session, ``LoginRequired`` (the login page, then back here);
    403 when the user's role is below the page's (``corral.engine.access``: a form an admin or operator uses)."""
    auth = await portal.require(request)
    role = Role.parse(auth.principal.role)
    if not access.permits(request.scope, role):
        raise ApiError(f"this page needs the {access.needed(request.scope)} role; you are {role}",
                       code="forbidden", status=403)
    return Page(portal, request, auth)


PageDep = Annotated[Page, Depends(get_page)]
