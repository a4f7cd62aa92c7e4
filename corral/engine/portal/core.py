"""What every portal page shares, held once per engine app: the templates, the in-process REST API client, the
session store, the live feed, console tokens and the login limiter (``Portal``, kept in ``app.state.portal``).

The pages (``corral.engine.portal.pages``) never reach for it directly: they receive it, the session and a
ready-to-render ``Page`` through FastAPI dependencies (``corral.engine.portal.deps``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import HTTPConnection

from corral.engine.db.session import Database
from corral.engine.portal import data
from corral.engine.portal.console import ConsoleTokens, novnc_dir
from corral.engine.portal.feed import Feed
from corral.engine.portal.limiter import LoginLimiter
from corral.engine.portal.sessions import COOKIE, SessionStore, csrf_token
from corral.engine.portal.users import Principal

PREFIX = "/portal"
VM_STATES = ("down", "starting", "up", "paused", "migrating", "shutting_down", "crashed", "unknown")
HOST_STATES = ("installing", "up", "non_operational", "unreachable", "maintenance")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """Raised by the ``Page`` dependency without a session; ``mount_portal`` turns it into the login redirect."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


@dataclass
class ApiResult:
    status: int
    data: Any

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def message(self) -> str:
        if isinstance(self.data, dict):
            return str(self.data.get("message") or self.data.get("code") or f"HTTP {self.status}")
        return f"HTTP {self.status}"

    @property
    def items(self) -> list[Any]:
        """The ``items`` of a list answer ([] for an error)."""
        return list((self.data or {}).get("items", []))


@dataclass
class Auth:
    principal: Principal
    token: str


def _fmt_time(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def _mib(value: Any) -> str:
    if value is None:
        return "?"
    n = int(value)
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} TiB"
    if n >= 1024:
        return f"{n / 1024:.1f} GiB".replace(".0 GiB", " GiB")
    return f"{n} MiB"


def _bytes(value: Any) -> str:
    """A size in binary units (the CLI's ``10G`` is 10 GiB): '10 GiB', '1.5 MiB', '512 bytes'."""
    if value is None:
        return "?"
    n = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            if unit == "bytes":
                return f"{int(n)} bytes"
            return f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop returns at TiB


def _label(value: Any) -> str:
    return str(value or "").replace("_", " ")


def make_templates() -> Environment:
    env = Environment(loader=PackageLoader("corral.engine.portal", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters.update(time=_fmt_time, mib=_mib, label=_label, size=_bytes,
                       hv=lambda host: data.hypervisor_label(host.get("hypervisor"), bool(host.get("emulated"))),
                       tojson_attr=lambda v: json.dumps(v, default=str))
    return env


class Portal:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.templates = make_templates()
        self.consoles = ConsoleTokens()
        self.limiter = LoginLimiter()
        self._api: httpx.AsyncClient | None = None
        self._sessions: SessionStore | None = None
        self._feed: Feed | None = None
        self._novnc: Path | None = None

    # ---- engine pieces, reached lazily (the context exists once the app has started)
    @property
    def db(self) -> Database:
        db = self.app.state.db
        assert isinstance(db, Database)
        return db

    @property
    def sessions(self) -> SessionStore:
        if self._sessions is None:
            self._sessions = SessionStore(self.db)
        return self._sessions

    @property
    def feed(self) -> Feed:
        if self._feed is None:
            self._feed = Feed(self.db)
        return self._feed

    def stopping(self) -> bool:
        """True once the server shuts down (``run_engine`` puts its uvicorn server in ``app.state``)."""
        return bool(getattr(getattr(self.app.state, "uvicorn", None), "should_exit", False))

    def novnc(self) -> Path | None:
        if self._novnc is None:
            self._novnc = novnc_dir()
        return self._novnc

    @property
    def api(self) -> httpx.AsyncClient:
        if self._api is None:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            self._api = httpx.AsyncClient(transport=transport, base_url="http://engine/api/v1",
                                          timeout=httpx.Timeout(180.0))
        return self._api

    async def call(self, auth: Auth, method: str, path: str, *, params: dict[str, Any] | None = None,
                   json_body: Any = None) -> ApiResult:
        clean = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
        resp = await self.api.request(method, path, params=clean, json=json_body,
                                      headers={"Authorization": f"Bearer {auth.token}"})
        try:
            body = resp.json() if resp.content else None
        except ValueError:
            body = {"code": "error", "message": resp.text[:300]}
        return ApiResult(resp.status_code, body)

    async def get(self, auth: Auth, path: str, **params: Any) -> ApiResult:
        return await self.call(auth, "GET", path, params=params)

    # ---- sessions
    def cookie_token(self, conn: HTTPConnection) -> str | None:
        return conn.cookies.get(COOKIE)

    async def current(self, conn: HTTPConnection) -> Auth | None:
        token = self.cookie_token(conn)
        if not token:
            return None
        principal = await asyncio.to_thread(self.sessions.check, token)
        return Auth(principal, token) if principal else None

    async def require(self, request: Request) -> Auth:
        auth = await self.current(request)
        if auth is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target)
        return auth

    # ---- rendering
    def render(self, request: Request, name: str, auth: Auth | None, *, status: int = 200,
               **values: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            request=request, user=auth.principal if auth else None, csrf=csrf_token(auth.token) if auth else "",
            prefix=PREFIX, path=request.url.path, **values)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def not_found(self, request: Request, auth: Auth, result: ApiResult, what: str) -> HTMLResponse:
        status = result.status if result.status >= 400 else 404
        return self.render(request, "error.html", auth, status=status, title=f"{what} not found",
                           message=result.message)
