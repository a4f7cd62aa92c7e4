"""Logging in and out: ``/portal/login`` (the form, then a session cookie) and ``/portal/logout``.

Both are protected from cross-site requests (issue 14). Logging out needs the session's CSRF token; without it
nothing happens (a page of another site cannot log you out). Logging in needs the login form's own token, a
random value in the form and in a ``SameSite=Strict`` cookie only this path sees (double submit): a page of
another site cannot log your browser into an account of its choosing, whose pages would then keep what you
type. The token is required of browsers, which say they are one (``Origin`` or ``Sec-Fetch-*`` headers, sent
by every current browser with a form POST); a script posting the form itself is no cross-site risk.
Failed logins are limited per account, per address and per both (``corral.engine.portal.limiter``).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

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


LOGIN_COOKIE = "corral_login"


def _login_form(request: Request, portal: PortalDep, *, status: int = 200, **values: object) -> Response:
    """The login page with a new form token, set in its cookie too."""
    token = secrets.token_urlsafe(24)
    resp = portal.render(request, "login.html", None, status=status, login_csrf=token, **values)
    resp.set_cookie(LOGIN_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                    secure=request.url.scheme == "https", path=PREFIX + "/login")
    return resp


def _from_browser(request: Request) -> bool:
    return "origin" in request.headers or any(k.startswith("sec-fetch-") for k in request.headers)


def login_csrf_ok(request: Request, given: str | None) -> bool:
    if not _from_browser(request):
        return True
    cookie = request.cookies.get(LOGIN_COOKIE)
    return bool(cookie) and bool(given) and hmac.compare_digest(cookie or "", given or "")


@router.get("/login")
async def login_page(request: Request, portal: PortalDep, auth: SessionDep, next: str | None = None) -> Response:
    if auth is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_form(request, portal, next=safe_next(next), error=None, username="")


@router.post("/login")
async def login(request: Request, portal: PortalDep) -> Response:
    form = await _form(request)
    username, password = form.get("username", "").strip(), form.get("password", "")
    nxt = safe_next(form.get("next"))
    if not login_csrf_ok(request, form.get("csrf")):
        return _login_form(request, portal, status=403, next=nxt, username=username,
                           error="The login form expired or came from another site; log in again.")
    address = request.client.host if request.client else "?"
    wait = portal.limiter.blocked(address, username)
    if wait > 0:
        return _login_form(request, portal, status=429, next=nxt, username=username,
                           error=f"Too many failed attempts; try again in {int(wait) + 1} s.")
    principal = await portal.db.run(lambda s: authenticate(s, username, password))
    if principal is None:
        portal.limiter.failed(address, username)
        return _login_form(request, portal, status=401, next=nxt, username=username,
                           error="Wrong user name or password.")
    portal.limiter.succeeded(address, username)
    token = await asyncio.to_thread(portal.sessions.start, principal)
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(COOKIE, token, max_age=int(SESSION_TTL.total_seconds()), httponly=True, samesite="lax",
                    secure=request.url.scheme == "https", path="/")
    resp.delete_cookie(LOGIN_COOKIE, path=PREFIX + "/login")
    return resp


@router.post("/logout")
async def logout(request: Request, portal: PortalDep) -> Response:
    token = portal.cookie_token(request)
    form = await _form(request)
    if token and not csrf_ok(token, form.get("csrf")):  # another site's form: the session and its cookie stay
        return JSONResponse({"code": "forbidden", "message": "missing or wrong CSRF token; reload the page",
                             "field": "csrf"}, 403)
    if token:
        digest = await asyncio.to_thread(portal.sessions.end, token)
        ctx = getattr(portal.app.state, "corral", None)
        if digest and ctx is not None:
            ctx.tokens.forget(digest)  # the API's positive cache must forget it too
    resp = RedirectResponse(PREFIX + "/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp
