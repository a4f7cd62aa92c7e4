"""Logging in and out: ``/portal/login`` (the form, then a session cookie) and ``/portal/logout``."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PortalDep, SessionDep
from corral.engine.portal.sessions import COOKIE, SESSION_TTL, csrf_ok
from corral.engine.portal.users import authenticate

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a page of the portal, never another site or the API."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"


async def _form(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}


@router.get("")
def portal_root() -> RedirectResponse:
    return RedirectResponse(PREFIX + "/", status_code=307)


@router.get("/login")
async def login_page(request: Request, portal: PortalDep, auth: SessionDep, next: str | None = None) -> Response:
    if auth is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return portal.render(request, "login.html", None, next=safe_next(next), error=None, username="")


@router.post("/login")
async def login(request: Request, portal: PortalDep) -> Response:
    form = await _form(request)
    username, password = form.get("username", "").strip(), form.get("password", "")
    nxt = safe_next(form.get("next"))
    key = (request.client.host if request.client else "?", username.lower())
    wait = portal.limiter.blocked(key)
    if wait > 0:
        return portal.render(request, "login.html", None, status=429, next=nxt, username=username,
                             error=f"Too many failed attempts; try again in {int(wait) + 1} s.")
    principal = await portal.db.run(lambda s: authenticate(s, username, password))
    if principal is None:
        portal.limiter.failed(key)
        return portal.render(request, "login.html", None, status=401, next=nxt, username=username,
                             error="Wrong user name or password.")
    portal.limiter.succeeded(key)
    token = await asyncio.to_thread(portal.sessions.start, principal)
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(COOKIE, token, max_age=int(SESSION_TTL.total_seconds()), httponly=True, samesite="lax",
                    secure=request.url.scheme == "https", path="/")
    return resp


@router.post("/logout")
async def logout(request: Request, portal: PortalDep) -> Response:
    token = portal.cookie_token(request)
    form = await _form(request)
    if token and csrf_ok(token, form.get("csrf")):
        digest = await asyncio.to_thread(portal.sessions.end, token)
        ctx = getattr(portal.app.state, "corral", None)
        if digest and ctx is not None:
            ctx.tokens.forget(digest)  # the API's positive cache must forget it too
    resp = RedirectResponse(PREFIX + "/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp
