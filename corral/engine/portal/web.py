"""The admin portal: server-rendered pages (Jinja2) on the engine's REST API, with a little plain JavaScript.

Every page and every action goes through the REST API: the page handlers call it in-process (an ASGI
transport, no socket) with the session's token, and the browser's scripts call it through ``/portal/api/``,
which adds that token and checks the CSRF header. So the portal shows exactly what the API answers,
including its errors (``{"code", "message", "field"}``: the scripts put each next to the field it names).
The few figures the API has no endpoint for (counts by state) are single GROUP BY queries (``data``).

Live state comes from ``/portal/stream`` (server-sent events, ``feed``); consoles from ``console``.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from corral.engine.db.session import Database
from corral.engine.portal import data
from corral.engine.portal.console import ConsoleTokens, novnc_dir, proxy, vnc_endpoint
from corral.engine.portal.feed import Feed, Message
from corral.engine.portal.sessions import COOKIE, SESSION_TTL, SessionStore, csrf_ok, csrf_token
from corral.engine.portal.users import Principal, authenticate

PREFIX = "/portal"
STATIC = Path(__file__).resolve().parent / "static"
STREAM_LIFETIME = 300.0
KEEPALIVE = 15.0
PAGE_SIZES = (25, 50, 100, 200)
VM_STATES = ("down", "starting", "up", "paused", "migrating", "shutting_down", "crashed", "unknown")
HOST_STATES = ("installing", "up", "non_operational", "unreachable", "maintenance")
TRAIL_MAX = 50

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
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


@dataclass
class LoginLimiter:
    """At most ``attempts`` failed logins per user name and client in ``window`` seconds."""

    attempts: int = 5
    window: float = 300.0
    failures: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def blocked(self, key: tuple[str, str]) -> float:
        now = time.monotonic()
        recent = [t for t in self.failures.get(key, []) if t > now - self.window]
        self.failures[key] = recent
        if len(recent) >= self.attempts:
            return recent[0] + self.window - now
        return 0.0

    def failed(self, key: tuple[str, str]) -> None:
        if len(self.failures) > 10000:
            self.failures.clear()
        self.failures.setdefault(key, []).append(time.monotonic())

    def succeeded(self, key: tuple[str, str]) -> None:
        self.failures.pop(key, None)


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


def _label(value: Any) -> str:
    return str(value or "").replace("_", " ")


def make_templates() -> Environment:
    env = Environment(loader=PackageLoader("corral.engine.portal", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters.update(time=_fmt_time, mib=_mib, label=_label,
                       hv=lambda host: data.hypervisor_label(host.get("hypervisor"), bool(host.get("emulated"))),
                       tojson_attr=lambda v: json.dumps(v, default=str))
    return env


def _safe_next(value: str | None) -> str:
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"


def sse(messages: list[Message]) -> str:
    out = []
    for kind, payload in messages:
        head = f"event: {kind}\n"
        if kind == "event":
            head += f"id: {payload['id']}\n"
        out.append(head + "data: " + json.dumps(payload, default=str, separators=(",", ":")) + "\n\n")
    return "".join(out)


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
    def cookie_token(self, request: Request | WebSocket) -> str | None:
        return request.cookies.get(COOKIE)

    async def current(self, request: Request | WebSocket) -> Auth | None:
        token = self.cookie_token(request)
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


def _qs(**params: Any) -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "", [])}
    return ("?" + urlencode(clean, doseq=True)) if clean else ""


def _pager(base: str, filters: dict[str, Any], after: str | None, trail: list[str], nxt: Any) -> dict[str, Any]:
    """Links for keyset pagination: next (the API's cursor), previous (the trail of earlier cursors, ``-``
    standing for the first page), first."""
    out: dict[str, Any] = {"first": None, "prev": None, "next": None}
    if after:
        out["first"] = base + _qs(**filters)
        prev_after = trail[-1] if trail else "-"
        out["prev"] = base + _qs(**filters, after=None if prev_after == "-" else prev_after,
                                 trail=",".join(trail[:-1]) or None)
    if nxt is not None:
        new_trail = [*trail, after or "-"][-TRAIL_MAX:]
        out["next"] = base + _qs(**filters, after=str(nxt), trail=",".join(new_trail))
    return out


def _trail(value: str | None) -> list[str]:
    return [v for v in value.split(",") if v][-TRAIL_MAX:] if value else []


def _page_size(value: str | None, default: int = 50) -> int:
    try:
        n = int(value or default)
    except ValueError:
        return default
    return n if n in PAGE_SIZES else default


def build_router(portal: Portal) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)

    @router.get(PREFIX)
    def portal_root() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)

    # ---- login / logout
    @router.get(PREFIX + "/login")
    async def login_page(request: Request, next: str | None = None) -> Response:
        if await portal.current(request) is not None:
            return RedirectResponse(_safe_next(next), status_code=303)
        return portal.render(request, "login.html", None, next=_safe_next(next), error=None, username="")

    @router.post(PREFIX + "/login")
    async def login(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        username, password = form.get("username", "").strip(), form.get("password", "")
        nxt = _safe_next(form.get("next"))
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

    @router.post(PREFIX + "/logout")
    async def logout(request: Request) -> Response:
        token = portal.cookie_token(request)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if token and csrf_ok(token, form.get("csrf")):
            digest = await asyncio.to_thread(portal.sessions.end, token)
            ctx = getattr(portal.app.state, "corral", None)
            if digest and ctx is not None:
                ctx.tokens.forget(digest)  # the API's positive cache must forget it too
        resp = RedirectResponse(PREFIX + "/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # ---- dashboard
    @router.get(PREFIX + "/")
    async def dashboard(request: Request) -> Response:
        auth = await portal.require(request)
        summary = await portal.db.run(data.dashboard)
        events = await portal.get(auth, "/events", order="desc", limit=15)
        running = await portal.get(auth, "/tasks", state="running", limit=20)
        pending = await portal.get(auth, "/tasks", state="pending", limit=20)
        tasks = [*(running.data or {}).get("items", []), *(pending.data or {}).get("items", [])]
        return portal.render(request, "dashboard.html", auth, title="Dashboard", s=summary,
                             events=(events.data or {}).get("items", []), tasks=tasks,
                             vm_states=VM_STATES, host_states=HOST_STATES, last_event=summary["last_event"])

    @router.get(PREFIX + "/summary")
    async def summary(request: Request) -> Response:
        """The dashboard's counts, for its live refresh."""
        if await portal.current(request) is None:
            return JSONResponse({"code": "unauthorized", "message": "log in first", "field": None}, 401)
        s = await portal.db.run(data.dashboard)
        counts = {"hosts-total": s["hosts_total"], "vms-total": s["vms_total"], "failing-total": s["failing_total"]}
        counts.update({f"host-{st}": s["hosts_by_state"].get(st, 0) for st in HOST_STATES})
        counts.update({f"vm-{st}": s["vms_by_state"].get(st, 0) for st in VM_STATES})
        return JSONResponse(counts, headers={"Cache-Control": "no-store"})

    # ---- hosts
    @router.get(PREFIX + "/hosts")
    async def hosts(request: Request, state: str | None = None, cluster: str | None = None,
                    after: str | None = None, trail: str | None = None, limit: str | None = None) -> Response:
        auth = await portal.require(request)
        size = _page_size(limit)
        res = await portal.get(auth, "/hosts", state=state, cluster=cluster, after=after, limit=size)
        clusters = await portal.get(auth, "/clusters", limit=1000)
        items = (res.data or {}).get("items", []) if res.ok else []
        extras = await portal.db.run(lambda s: data.host_extras(s, [h["id"] for h in items]))
        filters = {"state": state, "cluster": cluster, "limit": size if size != 50 else None}
        pager = _pager(PREFIX + "/hosts", filters, after, _trail(trail), (res.data or {}).get("next"))
        last = await portal.db.run(data.last_event_id)
        return portal.render(request, "hosts.html", auth, title="Hosts", hosts=items, extras=extras,
                             error=None if res.ok else res.message, pager=pager, state=state, cluster=cluster,
                             clusters=(clusters.data or {}).get("items", []), host_states=HOST_STATES,
                             size=size, sizes=PAGE_SIZES, last_event=last)

    @router.get(PREFIX + "/hosts/new")
    async def host_new(request: Request) -> Response:
        auth = await portal.require(request)
        clusters = await portal.get(auth, "/clusters", limit=1000)
        return portal.render(request, "host_new.html", auth, title="Add a host",
                             clusters=(clusters.data or {}).get("items", []))

    @router.get(PREFIX + "/hosts/{host_id}")
    async def host_page(request: Request, host_id: str) -> Response:
        auth = await portal.require(request)
        res = await portal.get(auth, f"/hosts/{host_id}")
        if not res.ok:
            return portal.not_found(request, auth, res, "Host")
        host = res.data
        events = await portal.get(auth, "/events", object_type="host", object_id=host["id"], order="desc", limit=20)
        caps = host.get("info", {}).get("capabilities") or {}
        guest_types: list[str] = []
        for per_type in caps.values():
            for gt in per_type:
                if gt not in guest_types:
                    guest_types.append(gt)
        order = {"hvm": 0, "pvh": 1, "pv": 2}
        guest_types.sort(key=lambda g: order.get(g, 9))
        last = await portal.db.run(data.last_event_id)
        return portal.render(request, "host.html", auth, title=f"Host {host['name']}", host=host,
                             info=host.get("info") or {}, caps=dict(sorted(caps.items())), guest_types=guest_types,
                             events=(events.data or {}).get("items", []), last_event=last)

    # ---- VMs
    @router.get(PREFIX + "/vms")
    async def vms(request: Request, state: str | None = None, host: str | None = None, cluster: str | None = None,
                  name: str | None = None, external: str | None = None, after: str | None = None,
                  trail: str | None = None, limit: str | None = None) -> Response:
        auth = await portal.require(request)
        size = _page_size(limit)
        ext = {"yes": True, "no": False}.get(external or "")
        name = (name or "").strip() or None
        host = (host or "").strip() or None
        res = await portal.get(auth, "/vms", state=state, host=host, cluster=cluster, name=name,
                               external=None if ext is None else str(ext).lower(), after=after, limit=size)
        items = (res.data or {}).get("items", []) if res.ok else []
        error = None if res.ok else res.message
        error_field = (res.data or {}).get("field") if not res.ok and isinstance(res.data, dict) else None
        hosts_list = await portal.db.run(data.host_choices)
        clusters = await portal.get(auth, "/clusters", limit=1000)
        total = None
        if res.ok:
            host_id = next((h["id"] for h in hosts_list if host in (h["id"], h["name"])), None) if host else None
            cluster_id = next((c["id"] for c in (clusters.data or {}).get("items", [])
                               if cluster in (c["id"], c["name"])), None) if cluster else None
            total = await portal.db.run(lambda s: data.count_vms(s, state=state, host_id=host_id,
                                                                 cluster_id=cluster_id, name=name, external=ext))
        filters = {"state": state, "host": host, "cluster": cluster, "name": name, "external": external,
                   "limit": size if size != 50 else None}
        pager = _pager(PREFIX + "/vms", filters, after, _trail(trail), (res.data or {}).get("next"))
        last = await portal.db.run(data.last_event_id)
        page_no = len(_trail(trail)) + 1 if after else 1
        return portal.render(request, "vms.html", auth, title="Virtual machines", vms=items, error=error,
                             error_field=error_field, pager=pager, f=filters, hosts=hosts_list,
                             clusters=(clusters.data or {}).get("items", []), vm_states=VM_STATES, total=total,
                             size=size, sizes=PAGE_SIZES, page_no=page_no, last_event=last)

    @router.get(PREFIX + "/vms/new")
    async def vm_new(request: Request) -> Response:
        auth = await portal.require(request)
        clusters = await portal.get(auth, "/clusters", limit=1000)
        hosts_list = await portal.db.run(data.host_choices)
        bridges: list[str] = []
        for h in ((await portal.get(auth, "/hosts", limit=200, state="up")).data or {}).get("items", []):
            for b in h.get("bridges") or []:
                if b not in bridges:
                    bridges.append(b)
        return portal.render(request, "vm_new.html", auth, title="New virtual machine",
                             clusters=(clusters.data or {}).get("items", []), hosts=hosts_list,
                             bridges=sorted(bridges))

    async def _vm_page_data(auth: Auth, vm_id: str) -> tuple[ApiResult, dict[str, Any] | None]:
        res = await portal.get(auth, f"/vms/{vm_id}")
        return res, (res.data if res.ok else None)

    @router.get(PREFIX + "/vms/{vm_id}")
    async def vm_page(request: Request, vm_id: str) -> Response:
        auth = await portal.require(request)
        res, vm = await _vm_page_data(auth, vm_id)
        if vm is None:
            return portal.not_found(request, auth, res, "VM")
        events = await portal.get(auth, "/events", object_type="vm", object_id=vm["id"], order="desc", limit=20)
        hosts_list = [h for h in await portal.db.run(data.host_choices) if h["cluster_id"] == vm["cluster_id"]]
        last_host = next((h for h in hosts_list if h["id"] == vm.get("last_host_id")), None)
        tasks = await portal.get(auth, "/tasks", object_id=vm["id"], limit=100)
        active = [t for t in (tasks.data or {}).get("items", []) if t["state"] in ("pending", "running")]
        last = await portal.db.run(data.last_event_id)
        return portal.render(request, "vm.html", auth, title=f"VM {vm['name']}", vm=vm, hosts=hosts_list,
                             last_host=last_host, events=(events.data or {}).get("items", []), active_tasks=active,
                             spec_json=json.dumps(vm.get("spec"), indent=2) if vm.get("spec") else None,
                             last_event=last)

    @router.get(PREFIX + "/vms/{vm_id}/devices")
    async def vm_devices(request: Request, vm_id: str) -> Response:
        auth = await portal.require(request)
        res, vm = await _vm_page_data(auth, vm_id)
        if vm is None:
            return portal.not_found(request, auth, res, "VM")
        html = portal.templates.get_template("_devices.html").render(vm=vm)
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    @router.get(PREFIX + "/vms/{vm_id}/console")
    async def vm_console(request: Request, vm_id: str) -> Response:
        auth = await portal.require(request)
        res, vm = await _vm_page_data(auth, vm_id)
        if vm is None:
            return portal.not_found(request, auth, res, "VM")
        agent_url = None
        if vm.get("host"):
            h = await portal.get(auth, f"/hosts/{vm['host']['id']}")
            agent_url = h.data.get("agent_url") if h.ok else None
        endpoint = vnc_endpoint({**vm, "_agent_url": agent_url})
        novnc = portal.novnc()
        ws_path = None
        if endpoint.problem is None and endpoint.host and endpoint.port and novnc is not None:
            token = portal.consoles.issue(vm["id"], endpoint.host, endpoint.port, auth.principal.username)
            ws_path = f"{PREFIX}/vms/{vm['id']}/vnc?token={token}"
        return portal.render(request, "console.html", auth, title=f"Console of {vm['name']}", vm=vm,
                             endpoint=endpoint, novnc=novnc is not None, ws_path=ws_path)

    @router.websocket(PREFIX + "/vms/{vm_id}/vnc")
    async def vm_vnc(ws: WebSocket, vm_id: str, token: str = "") -> None:
        origin = ws.headers.get("origin")
        host = ws.headers.get("host")
        if origin and host and origin.split("://", 1)[-1] != host:
            await ws.close(code=1008, reason="cross-origin console connection")
            return
        auth = await portal.current(ws)
        target = portal.consoles.take(token, vm_id, auth.principal.username) if auth else None
        if target is None:
            await ws.close(code=1008, reason="console token invalid or expired; reload the console page")
            return
        await proxy(ws, target)

    @router.get(PREFIX + "/vms/{vm_id}/serial")
    async def vm_serial(request: Request, vm_id: str) -> Response:
        auth = await portal.require(request)
        res, vm = await _vm_page_data(auth, vm_id)
        if vm is None:
            return portal.not_found(request, auth, res, "VM")
        log = await portal.get(auth, f"/vms/{vm['id']}/console", tail=65536)
        return portal.render(request, "serial.html", auth, title=f"Serial console of {vm['name']}", vm=vm,
                             log=(log.data or {}).get("log", "") if log.ok else "",
                             error=None if log.ok else log.message)

    # ---- events
    @router.get(PREFIX + "/events")
    async def events(request: Request, min_severity: str | None = None, object_type: str | None = None,
                     after: str | None = None, trail: str | None = None, limit: str | None = None) -> Response:
        auth = await portal.require(request)
        size = _page_size(limit)
        res = await portal.get(auth, "/events", order="desc", min_severity=min_severity, object_type=object_type,
                               after=after, limit=size)
        filters = {"min_severity": min_severity, "object_type": object_type, "limit": size if size != 50 else None}
        pager = _pager(PREFIX + "/events", filters, after, _trail(trail), (res.data or {}).get("next"))
        last = await portal.db.run(data.last_event_id)
        return portal.render(request, "events.html", auth, title="Events", events=(res.data or {}).get("items", [])
                             if res.ok else [], error=None if res.ok else res.message, pager=pager, f=filters,
                             size=size, sizes=PAGE_SIZES, live=after is None, last_event=last)

    # ---- live updates
    @router.get(PREFIX + "/stream")
    async def stream(request: Request, after: int | None = None) -> Response:
        auth = await portal.current(request)
        if auth is None:
            return JSONResponse({"code": "unauthorized", "message": "log in first", "field": None}, 401)
        last_id = request.headers.get("last-event-id") or (str(after) if after is not None else "")
        feed = portal.feed
        sub = await feed.subscribe()
        backlog = await feed.catch_up(int(last_id)) if last_id.isdigit() else []

        async def gen() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                if backlog:
                    yield sse(backlog)
                now = time.monotonic()
                deadline, quiet_since = now + STREAM_LIFETIME, now
                while time.monotonic() < deadline and not sub.dropped and not portal.stopping():
                    try:
                        batch = await asyncio.wait_for(sub.queue.get(), 1.0)
                    except TimeoutError:
                        if time.monotonic() - quiet_since >= KEEPALIVE:
                            quiet_since = time.monotonic()
                            yield ": keep-alive\n\n"
                        continue
                    if batch is None:
                        break
                    quiet_since = time.monotonic()
                    yield sse(batch)
            finally:
                feed.unsubscribe(sub)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # ---- the REST API for the browser's scripts, with the session's token
    @router.api_route(PREFIX + "/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def api_proxy(request: Request, path: str) -> Response:
        auth = await portal.current(request)
        if auth is None:
            return JSONResponse({"code": "unauthorized", "message": "your session ended; log in again",
                                 "field": None}, 401)
        if request.method != "GET" and not csrf_ok(auth.token, request.headers.get("x-csrf-token")):
            return JSONResponse({"code": "forbidden", "message": "missing or wrong CSRF token; reload the page",
                                 "field": None}, 403)
        if ".." in path.split("/") or path.startswith("/"):
            return JSONResponse({"code": "not_found", "message": "no such API path", "field": None}, 404)
        headers = {"Authorization": f"Bearer {auth.token}"}
        if request.headers.get("content-type"):
            headers["Content-Type"] = request.headers["content-type"]
        resp = await portal.api.request(request.method, "/" + path, params=list(request.query_params.multi_items()),
                                        content=await request.body(), headers=headers)
        return Response(resp.content, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type", "application/json"),
                        headers={"Cache-Control": "no-store"})

    # ---- noVNC, from where scripts/install put it
    @router.get(PREFIX + "/novnc/{path:path}")
    def novnc_file(path: str) -> Response:
        root = portal.novnc()
        if root is None:
            return JSONResponse({"code": "not_found", "message": "noVNC is not installed", "field": None}, 404)
        target = (root / path).resolve()
        if not target.is_relative_to(root.resolve()) or not target.is_file() or \
                target.suffix not in (".js", ".json", ".css", ".svg", ".png", ".wasm"):
            return JSONResponse({"code": "not_found", "message": "no such file", "field": None}, 404)
        media = "text/javascript" if target.suffix == ".js" else mimetypes.guess_type(target.name)[0]
        return FileResponse(target, media_type=media or "application/octet-stream",
                            headers={"Cache-Control": "public, max-age=3600"})

    return router


def mount_portal(app: FastAPI) -> Portal:
    """Serve the portal from ``app`` (the engine app): pages under /portal, static files, / redirects there."""
    portal = Portal(app)

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(f"{PREFIX}/login" + _qs(next=exc.next_url), status_code=303)

    app.add_exception_handler(LoginRequired, login_required)
    app.include_router(build_router(portal))
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC), name="portal-static")
    app.state.portal = portal
    return portal
