"""Authorization in one place: the least role each route of the engine's app needs, and the check.

``RULES`` maps ``"METHOD /path"`` (the route's path as declared, ``WS`` for a WebSocket, ``MOUNT`` for a
mounted app) to the least ``Role`` that may call it, or ``PUBLIC`` for what needs no login at all. Roles are
ordered: admin > operator > viewer. The REST API checks it in its auth dependency
(``corral.engine.api.deps.require_token``), the portal in its ``Page`` dependency and the console WebSocket
before it relays anything, all through ``needed`` here. ``tests/engine/test_access.py`` walks every route of
the app: a route without a rule fails it, and at run time a route without a rule is for admins only (fail
closed).

Object-level rules stay with their handlers: a user lists and revokes their own tokens (an admin anyone's);
only an admin may give a disk a host path, and only under the configured directories (``hostpaths``).
"""

from __future__ import annotations

import logging
from typing import Final

from fastapi import FastAPI, WebSocket
from fastapi.routing import iter_route_contexts
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from corral.engine.auth import ENGINE, Principal, Role, TokenRefused, set_current

log = logging.getLogger(__name__)

PUBLIC: Final = None
V, OP, A = Role.VIEWER, Role.OPERATOR, Role.ADMIN

RULES: dict[str, Role | None] = {
    # no login: health, the API's own description, the portal's login and static files
    "GET /api/health": PUBLIC,
    "GET /": PUBLIC,
    "GET /portal": PUBLIC,
    "GET /portal/login": PUBLIC,
    "POST /portal/login": PUBLIC,
    "POST /portal/logout": PUBLIC,
    "GET /portal/novnc/{path:path}": PUBLIC,
    "GET /portal/xterm/{path:path}": PUBLIC,
    "GET /portal/swagger/{path:path}": PUBLIC,
    # the API's description: for anyone logged in (corral.engine.apidocs), not for the whole network
    "GET /api/v1/openapi.json": V,
    "GET /portal/api-docs": V,
    "MOUNT /portal/static": PUBLIC,
    # clusters, hosts, storage domains, templates, users: admins manage them; everyone may read them
    "GET /api/v1/clusters": V,
    "GET /api/v1/clusters/{cluster}": V,
    "POST /api/v1/clusters": A,
    "PATCH /api/v1/clusters/{cluster}": A,
    "DELETE /api/v1/clusters/{cluster}": A,
    "GET /api/v1/hosts": V,
    "GET /api/v1/hosts/{host}": V,
    "POST /api/v1/hosts": A,
    "POST /api/v1/hosts/{host}/reinstall": A,
    "POST /api/v1/hosts/{host}/renew-certificate": A,
    "POST /api/v1/hosts/{host}/maintenance": A,
    "POST /api/v1/hosts/{host}/activate": A,
    "DELETE /api/v1/hosts/{host}": A,
    # power management and HA (issue 13): admins set and test fence agents and confirm a host rebooted
    "GET /api/v1/hosts/{host}/fencing": V,
    "PUT /api/v1/hosts/{host}/fencing": A,
    "POST /api/v1/hosts/{host}/fence-test": A,
    "POST /api/v1/hosts/{host}/confirm-rebooted": A,
    "PUT /api/v1/vms/{vm}/ha": OP,
    # live migration (issue 13): operators move VMs and cancel tasks that can be cancelled (a migration)
    "POST /api/v1/vms/{vm}/migrate": OP,
    "DELETE /api/v1/tasks/{task_id}": OP,
    "GET /api/v1/storage-domains": V,
    "GET /api/v1/storage-domains/{domain}": V,
    "POST /api/v1/storage-domains": A,
    "DELETE /api/v1/storage-domains/{domain}": A,
    "GET /api/v1/networks": V,
    "GET /api/v1/networks/{network}": V,
    "POST /api/v1/networks": A,
    "DELETE /api/v1/networks/{network}": A,
    "GET /api/v1/templates": V,
    "GET /api/v1/templates/{template}": V,
    "POST /api/v1/templates": A,
    "DELETE /api/v1/templates/{template}": A,
    "GET /api/v1/users": A,
    "POST /api/v1/users": A,
    "GET /api/v1/users/me": V,
    "GET /api/v1/users/{user}": A,
    "PATCH /api/v1/users/{user}": A,
    # VMs: operators run them (lifecycle, devices, snapshots, consoles); everyone may read them
    "GET /api/v1/vms": V,
    "GET /api/v1/vms/{vm}": V,
    "GET /api/v1/vms/{vm}/plan": V,
    "POST /api/v1/vms": OP,
    "PUT /api/v1/vms/{vm}": OP,
    "DELETE /api/v1/vms/{vm}": OP,
    "POST /api/v1/vms/{vm}/start": OP,
    "POST /api/v1/vms/{vm}/shutdown": OP,
    "POST /api/v1/vms/{vm}/stop": OP,
    "POST /api/v1/vms/{vm}/reboot": OP,
    "POST /api/v1/vms/{vm}/pause": OP,
    "POST /api/v1/vms/{vm}/resume": OP,
    "GET /api/v1/vms/{vm}/console": OP,
    "WS /api/v1/vms/{vm}/console/{kind}": OP,
    "POST /api/v1/vms/{vm}/devices": OP,
    "PATCH /api/v1/vms/{vm}/devices/{device_id}": OP,
    "DELETE /api/v1/vms/{vm}/devices/{device_id}": OP,
    "PUT /api/v1/vms/{vm}/memory": OP,
    "PUT /api/v1/vms/{vm}/vcpus": OP,
    "GET /api/v1/vms/{vm}/snapshots": V,
    "POST /api/v1/vms/{vm}/snapshots": OP,
    "POST /api/v1/vms/{vm}/snapshots/{name}/revert": OP,
    "DELETE /api/v1/vms/{vm}/snapshots/{name}": OP,
    # volumes and images: operators make and drop them in the storage domains admins set up
    "GET /api/v1/volumes": V,
    "GET /api/v1/volumes/{volume}": V,
    "POST /api/v1/volumes": OP,
    "DELETE /api/v1/volumes/{volume}": OP,
    "POST /api/v1/volumes/{volume}/resize": OP,
    "GET /api/v1/images": V,
    "GET /api/v1/images/{image}": V,
    "PUT /api/v1/images/{name}": OP,
    "DELETE /api/v1/images/{image}": OP,
    # what happened; tokens (each user their own, an admin anyone's: checked by the handlers)
    "GET /api/v1/events": V,
    "GET /api/v1/tasks": V,
    "GET /api/v1/tasks/{task_id}": V,
    "GET /api/v1/_metrics": V,
    "GET /api/v1/tokens": V,
    "POST /api/v1/tokens": V,
    "DELETE /api/v1/tokens/{token}": V,
    # portal pages: reading for everyone logged in; forms and consoles for who may use them
    "GET /portal/": V,
    "GET /portal/summary": V,
    "GET /portal/hosts": V,
    "GET /portal/hosts/new": A,
    "GET /portal/hosts/{host_id}": V,
    "GET /portal/vms": V,
    "GET /portal/vms/new": OP,
    "GET /portal/vms/{vm_id}": V,
    "GET /portal/vms/{vm_id}/devices": V,
    "GET /portal/vms/{vm_id}/serial": OP,
    "GET /portal/vms/{vm_id}/console": OP,
    "GET /portal/vms/{vm_id}/terminal": OP,
    "WS /portal/vms/{vm_id}/ws/{kind}": OP,
    "GET /portal/events": V,
    "GET /portal/storage": V,
    "GET /portal/storage/{domain_id}": V,
    "GET /portal/networks": V,
    "GET /portal/images": V,
    "GET /portal/templates": V,
    "GET /portal/templates/{template_id}": V,
    "GET /portal/users": A,
    "GET /portal/stream": V,
    # the browser's way to the REST API: the API's own rule decides each call behind it
    "GET /portal/api/{path:path}": V,
    "POST /portal/api/{path:path}": V,
    "PUT /portal/api/{path:path}": V,
    "PATCH /portal/api/{path:path}": V,
    "DELETE /portal/api/{path:path}": V,
}

MISSING: Final = "missing"


def route_keys(app: FastAPI) -> list[tuple[str, object]]:
    """``("METHOD /path", endpoint)`` for every route of the app, as ``RULES`` names them (HEAD is GET's)."""
    keys: list[tuple[str, object]] = []
    for rc in iter_route_contexts(app.routes):
        path = rc.path
        if path is None:
            continue
        methods = rc.methods
        endpoint = getattr(rc, "endpoint", None)
        if type(rc.original_route).__name__ == "Mount":
            keys.append((f"MOUNT {path}", rc.original_route))
        elif methods is None:
            keys.append((f"WS {path}", endpoint))
        else:
            keys += [(f"{m} {path}", endpoint) for m in sorted(methods - {"HEAD"})]
    return keys


def _index(app: FastAPI) -> dict[tuple[int, str], str]:
    """(id of the endpoint, method) -> rule key, built once per app from its routes."""
    index = getattr(app.state, "access_index", None)
    if index is None:
        index = {}
        for key, endpoint in route_keys(app):
            index.setdefault((id(endpoint), key.split(" ", 1)[0]), key)
        app.state.access_index = index
    return index


def rule_key(scope: Scope) -> str | None:
    """The ``RULES`` key of the route a request or WebSocket was routed to."""
    app = scope.get("app")
    endpoint = scope.get("endpoint")
    if not isinstance(app, FastAPI) or endpoint is None:
        return None
    method = "WS" if scope["type"] == "websocket" else str(scope.get("method", "GET")).upper()
    if method == "HEAD":
        method = "GET"
    return _index(app).get((id(endpoint), method))


def needed(scope: Scope) -> Role | None:
    """The least role the route of this request needs (None: public). A route without a rule: admin."""
    key = rule_key(scope)
    if key is None or key not in RULES:
        log.warning("no access rule for %s; admins only", key or scope.get("path"))
        return Role.ADMIN
    return RULES[key]


def permits(scope: Scope, role: Role) -> bool:
    need = needed(scope)
    return need is None or role.allows(need)


async def allow_websocket(ws: WebSocket) -> bool:
    """The check of a WebSocket route (a console), which the REST router's dependency does not cover: the
    caller is the portal session's user under ``/portal``, else the ``Authorization: Bearer`` token's
    principal; it must have the route's role. Otherwise the socket is closed (1008, with the reason, before the
    handshake: the client sees HTTP 403) and False returned. Sets the principal for the events it causes."""
    from corral.engine.context import EngineContext  # the context imports the auth module, not this one

    ctx = ws.app.state.corral
    assert isinstance(ctx, EngineContext)
    principal: Principal | None = None
    if ws.url.path.startswith("/portal/"):
        portal = getattr(ws.app.state, "portal", None)
        auth = await portal.current(ws) if portal is not None else None
        if auth is not None:
            principal = Principal(Role.parse(auth.principal.role), auth.principal.username, auth.principal.user_id)
    elif not ctx.auth:
        principal = ENGINE
    else:
        header = ws.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        try:
            principal = await run_in_threadpool(ctx.tokens.principal, token) if token else None
        except TokenRefused:
            principal = None
    if principal is None:
        await ws.close(code=1008, reason="log in first (a valid session or bearer token is required)")
        return False
    if not permits(ws.scope, principal.role):
        await ws.close(code=1008, reason=f"this needs the {needed(ws.scope)} role; "
                                         f"{principal.actor or 'this token'} is {principal.role}")
        return False
    set_current(principal)
    return True
