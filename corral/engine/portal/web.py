"""The admin portal: server-rendered pages (Jinja2) on the engine's REST API, with a little plain JavaScript.

Every page and every action goes through the REST API: the page handlers call it in-process (an ASGI
transport, no socket) with the session's token, and the browser's scripts call it through ``/portal/api/``,
which adds that token and checks the CSRF header. So the portal shows exactly what the API answers,
including its errors (``{"code", "message", "field"}``: the scripts put each next to the field it names).
The few figures the API has no endpoint for (counts by state) are single GROUP BY queries (``data``).

This module mounts the portal on the engine's app. The pages are one router per page or area
(``corral.engine.portal.pages``), sharing the ``Portal`` (``core``) through FastAPI dependencies (``deps``).
Live state comes from ``/portal/stream`` (server-sent events, ``feed``); consoles from ``console``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from corral.engine.portal.core import PREFIX, LoginRequired, Portal
from corral.engine.portal.pages import ROUTERS
from corral.engine.portal.paging import qs

STATIC = Path(__file__).resolve().parent / "static"

__all__ = ["PREFIX", "Portal", "mount_portal"]


def _root() -> RedirectResponse:
    return RedirectResponse(PREFIX + "/", status_code=307)


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"{PREFIX}/login" + qs(next=exc.next_url), status_code=303)


def mount_portal(app: FastAPI) -> Portal:
    """Serve the portal from ``app`` (the engine app): pages under /portal, static files, / redirects there."""
    portal = Portal(app)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_api_route("/", _root, methods=["GET"], include_in_schema=False)
    for router in ROUTERS:
        app.include_router(router)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC), name="portal-static")
    app.state.portal = portal
    return portal
