"""The agent's HTTP API (``/v1``, see docs/agent-api.md): thin handlers over ``VmManager``.

Handlers are plain ``def``: libvirt calls block, so FastAPI runs them in its thread pool. Answers are encoded
by msgspec into a ready ``Response``, which FastAPI passes through (``response_model`` only documents the
answer): FastAPI's own path -- validating the returned dict against the annotation, ``jsonable_encoder``,
``json.dumps`` -- cost a quarter of a millisecond per call, more than most handlers. Every error is a JSON
body ``{"code", "message", "field"?}``.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
from collections.abc import AsyncIterator
from typing import Any

import libvirt
import msgspec
from fastapi import APIRouter, Body, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from corral import __version__
from corral.agent.bodies import hotplug_args, shutdown_args
from corral.agent.connection import Unavailable
from corral.agent.errors import AgentError, Invalid, Unsupported, from_libvirt
from corral.agent.fastpath import FastPath
from corral.agent.migration import Migrations
from corral.agent.migration_routes import migration_router
from corral.agent.netsetup.routes import hostnet_router
from corral.agent.relay import console_router
from corral.agent.service import Agent
from corral.agent.snapshot_routes import snapshots_router
from corral.agent.snapshots import Snapshots
from corral.agent.storage import StorageManager
from corral.agent.storage_bodies import ResizeBody, VolumeBody, check_name, parse, parse_pool
from corral.agent.vms import VmManager
from corral.domain.spec import SpecError, VmSpec, parse_spec

ACTIONS = ("start", "shutdown", "destroy", "reboot", "pause", "resume")


_ENCODER = msgspec.json.Encoder(enc_hook=str)  # str() for the odd Path in host facts


def answer(data: Any, status: int = 200) -> Response:
    """A JSON answer, encoded once by msgspec."""
    return Response(_ENCODER.encode(data), status_code=status, media_type="application/json")


# FastAPI >= 0.160 asks the OpenTelemetry providers on every request whether to trace it; the agent exports no
# telemetry, so it is switched off where FastAPI has the setting
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def agent_fastapi(**settings: Any) -> FastAPI:
    """The FastAPI application object of the agent's API (the simulator's agents are made by it too)."""
    return FastAPI(title="Corral agent", version=__version__, docs_url=None, redoc_url=None,
                   openapi_url="/v1/openapi.json", **_NO_TELEMETRY, **settings)


def _error(status: int, code: str, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "field": field, **extra}, status_code=status)


# WebSockets (the console relay, corral.agent.relay) are authenticated exactly like plain requests
_GUARDED = ("http", "websocket")


async def _deny(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    """401 with the JSON body; a WebSocket is closed before its handshake completes (the client sees 403)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    await _error(401, "unauthorized", message)(scope, receive, send)


class _BearerAuth:
    """Every path but ``/v1/health`` needs ``Authorization: Bearer <token>``. A plain ASGI middleware:
    Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) cost about a millisecond per request and wraps
    every response, the event stream too, in a stream of its own."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in _GUARDED and scope["path"] != "/v1/health":
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            given = header[7:] if header[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.token):
                await _deny(scope, receive, send, "a valid bearer token is required")
                return
        await self.app(scope, receive, send)


# Where ``corral agent serve`` (``TlsPeerH11Protocol``) puts the verified TLS client certificate of the
# connection: uvicorn copies its app state into every request's ``scope["state"]``.
PEER_CERT = "corral_tls_peer_cert"
ENGINE_CN = "corral-engine"


def _peer_cn(cert: dict[str, Any]) -> str:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class _ClientCertAuth:
    """Mutual TLS: every path but ``/v1/health`` needs a client certificate signed by the engine's CA.

    The TLS layer runs with ``CERT_OPTIONAL``: a certificate that is presented is verified during the handshake
    (another CA, an expired certificate or one not meant for clients -- no *clientAuth* -- fail there), and a
    connection without one is let through so that ``/v1/health`` answers; this middleware refuses such a
    connection everywhere else. A bearer token, when the agent also has one, is accepted instead."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in _GUARDED and scope["path"] != "/v1/health":
            cert = (scope.get("state") or {}).get(PEER_CERT)
            if not cert or _peer_cn(cert) != ENGINE_CN:
                header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
                given = header[7:] if header[:7].lower() == b"bearer " else b""
                if self.token is None or not hmac.compare_digest(given, self.token):
                    message = ("a client certificate issued by the engine's CA is required" if not cert
                               else f"client certificate {_peer_cn(cert)!r} is not the engine's")
                    await _deny(scope, receive, send, message)
                    return
        await self.app(scope, receive, send)


def error_answer(exc: Exception) -> JSONResponse | None:
    """The JSON error body of an exception the agent knows, or None (then it is a server error)."""
    if isinstance(exc, AgentError):
        return JSONResponse(exc.body(), status_code=exc.status)
    if isinstance(exc, SpecError):
        return _error(422, "invalid", str(exc), exc.field, errors=[{"field": f, "message": m} for f, m in exc.errors])
    if isinstance(exc, Unavailable):
        return _error(503, "unavailable", str(exc))
    if isinstance(exc, libvirt.libvirtError):
        err = from_libvirt(exc, "libvirt")
        return JSONResponse(err.body(), status_code=err.status)
    return None


def install_error_handlers(app: FastAPI) -> None:
    """The agent's error bodies for its own errors, invalid specs, a lost libvirt connection and invalid
    requests (shared with ``corral simulate``, whose agents must answer exactly alike)."""

    async def known(_r: Request, exc: Exception) -> JSONResponse:
        answer = error_answer(exc)
        assert answer is not None
        return answer

    for kind in (AgentError, SpecError, Unavailable, libvirt.libvirtError):
        app.add_exception_handler(kind, known)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """No such path (404) or method (405): in the agent's error shape, not FastAPI's ``{"detail"}``."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        path, root = request.url.path, request.scope.get("root_path", "")
        path = path[len(root):] if root and path.startswith(root) else path  # a simulated agent's prefix
        message = f"no such path: {request.method} {path}" if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse({"code": code, "message": message, "field": None}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
                  for e in exc.errors()]
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return _error(422, "invalid", f"{first['field']}: {first['message']}", first["field"], errors=errors)


class VmCalls:
    """What the VM routes do, callable from FastAPI's handlers and from the fast path alike."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @property
    def vms(self) -> VmManager:
        assert self.agent.vms is not None
        return self.agent.vms

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "libvirt": self.agent.connection.check()}

    def list_vms(self) -> dict[str, Any]:
        return {"items": self.vms.list()}

    def show(self, vm_id: str) -> dict[str, Any]:
        vm, dom = self.vms.lookup(vm_id)
        return self.vms.info(vm, dom)

    def create(self, data: Any, start: bool) -> dict[str, Any]:
        return self.vms.create(spec_body(data), start=start)

    def action(self, vm_id: str, action: str, data: Any = None) -> dict[str, Any]:
        manager = self.vms
        if action == "shutdown":
            return manager.shutdown(vm_id, *shutdown_args(data))
        if action == "devices":
            return manager.hotplug(vm_id, *hotplug_args(data))
        handlers = {"start": manager.start, "destroy": manager.destroy, "reboot": manager.reboot,
                    "pause": manager.pause, "resume": manager.resume}
        if action not in handlers:
            raise Invalid(f"unknown action {action!r}; one of {', '.join(ACTIONS)}", field="action")
        return handlers[action](vm_id)


def spec_body(data: Any) -> VmSpec:
    if not isinstance(data, dict):
        raise Invalid("the body must be a VmSpec object", field="body")
    return parse_spec(data)


def create_app(agent: Agent, token: str | None = None, *, client_certs: bool = False) -> FastAPI:
    """``client_certs``: the server runs mutual TLS (``corral agent serve --tls-*``); else ``token`` guards."""
    app = agent_fastapi()

    calls = VmCalls(agent)
    # added first, so inside authentication (Starlette wraps the last added outermost)
    app.add_middleware(FastPath, handlers=calls, answer=answer, error_answer=error_answer)
    if client_certs:
        app.add_middleware(_ClientCertAuth, token=token)
    elif token is not None:
        app.add_middleware(_BearerAuth, token=token)

    install_error_handlers(app)
    app.include_router(storage_router(StorageManager(
        lambda: agent.connection.conn, agent.settings.state_dir,
        lambda: agent.detection.flavor if agent.detection is not None else None)))
    snapshots = Snapshots(lambda: calls.vms, agent.settings.state_dir)
    app.include_router(snapshots_router(lambda: snapshots, answer))  # before POST /v1/vms/{vm_id}/{action}
    migrations = Migrations(lambda: calls.vms, lambda: agent.settings.libvirt)
    app.include_router(migration_router(lambda: migrations, answer))  # before POST /v1/vms/{vm_id}/{action}
    app.include_router(console_router(lambda: calls.vms))  # WebSockets: VNC and serial relayed (relay.py)
    app.include_router(hostnet_router(lambda: agent.hostnet, answer))  # /v1/host/network (netsetup/routes.py)

    def vms() -> VmManager:
        return calls.vms

    @app.get("/v1/health", response_model=dict[str, Any])
    def health() -> Response:
        return answer(calls.health())

    @app.get("/v1/host", response_model=dict[str, Any])
    def host() -> Response:
        return answer(agent.host())

    @app.get("/v1/host/stats", response_model=dict[str, Any])
    def host_stats() -> Response:
        return answer(agent.host_stats())

    @app.get("/v1/vms", response_model=dict[str, Any])
    def list_vms() -> Response:
        return answer(calls.list_vms())

    @app.post("/v1/vms/plan", response_model=dict[str, Any])
    def plan(data: Any = Body(...)) -> Response:
        return answer(vms().plan(spec_body(data)))

    @app.post("/v1/vms", status_code=201, response_model=dict[str, Any])
    def create(data: Any = Body(...), start: bool = False) -> Response:
        return answer(calls.create(data, start), 201)

    @app.get("/v1/vms/{vm_id}", response_model=dict[str, Any])
    def show(vm_id: str) -> Response:
        return answer(calls.show(vm_id))

    @app.delete("/v1/vms/{vm_id}", status_code=204)
    def delete(vm_id: str) -> Response:
        vms().undefine(vm_id)
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/{action}", response_model=dict[str, Any])
    def action(vm_id: str, action: str, data: Any = Body(None)) -> Response:
        return answer(calls.action(vm_id, action, data))

    @app.patch("/v1/vms/{vm_id}/devices/{device_id}", response_model=dict[str, Any])
    def patch_device(vm_id: str, device_id: str, data: Any = Body(...)) -> Response:
        if not isinstance(data, dict):
            raise Invalid("the body must be an object", field="body")
        return answer(vms().update_device(vm_id, device_id, data))

    @app.delete("/v1/vms/{vm_id}/devices/{device_id}", response_model=dict[str, Any])
    def unplug(vm_id: str, device_id: str) -> Response:
        return answer(vms().unplug(vm_id, device_id))

    @app.put("/v1/vms/{vm_id}/memory", response_model=dict[str, Any])
    def memory(vm_id: str, data: Any = Body(...)) -> Response:
        value = data.get("memory_mib") if isinstance(data, dict) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid("memory_mib must be an integer", field="memory_mib")
        return answer(vms().set_memory(vm_id, value))

    @app.put("/v1/vms/{vm_id}/vcpus", response_model=dict[str, Any])
    def vcpus(vm_id: str, data: Any = Body(...)) -> Response:
        value = data.get("vcpus") if isinstance(data, dict) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid("vcpus must be an integer", field="vcpus")
        return answer(vms().set_vcpus(vm_id, value))

    @app.get("/v1/vms/{vm_id}/console", response_model=dict[str, Any])
    def console(vm_id: str, tail: int = Query(65536, ge=1, le=16 * 1024 * 1024)) -> Response:
        return answer(vms().console_log(vm_id, tail))

    @app.get("/v1/events", response_model=None)
    async def events(request: Request, after: int | None = Query(None, ge=0),
                     wait: float = Query(-1.0, le=60)) -> Any:
        last = after
        if last is None:
            header = request.headers.get("last-event-id", "")
            last = int(header) if header.isdigit() else 0
        if wait >= 0:
            items = await agent.bus.wait(last, wait) if wait > 0 else agent.bus.since(last)
            return {"items": [e.as_dict() for e in items], "last": items[-1].seq if items else last}

        async def stream() -> AsyncIterator[str]:
            seq = last
            yield f"retry: 1000\n: corral agent events after {seq}\n\n"
            while True:
                if await request.is_disconnected():
                    return
                batch = await agent.bus.wait(seq, 5.0)
                if not batch:
                    yield ": keepalive\n\n"
                    continue
                for event in batch:
                    seq = event.seq
                    yield f"id: {event.seq}\nevent: {event.type}\ndata: {json.dumps(event.as_dict())}\n\n"
                await asyncio.sleep(0)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


UPLOAD_BATCH = 1024 * 1024  # bytes gathered from the request body per hop to the thread that feeds libvirt


def storage_router(manager: StorageManager | None) -> APIRouter:
    """``/v1/storage``: pools and volumes (corral.agent.storage). Uploads and downloads stream: the body is read
    in chunks and handed to libvirt's stream as it comes, never held whole in memory. Without a manager (the
    simulator's hosts, which have no storage yet) the same routes answer 409 ``unsupported``."""
    router = APIRouter(prefix="/v1/storage/pools")

    def storage() -> StorageManager:
        if manager is None:
            raise Unsupported("storage: this host has no storage pools to manage (a simulated host)")
        return manager

    @router.get("", response_model=dict[str, Any])
    def list_pools() -> Response:
        return answer({"items": storage().list_pools()})

    @router.get("/{pool}", response_model=dict[str, Any])
    def show_pool(pool: str) -> Response:
        return answer(storage().show_pool(pool))

    @router.put("/{pool}", response_model=dict[str, Any])
    def put_pool(pool: str, data: Any = Body(...)) -> Response:
        return answer(storage().ensure_pool(pool, parse_pool(data)))

    @router.delete("/{pool}", status_code=204)
    def delete_pool(pool: str) -> Response:
        storage().delete_pool(pool)
        return Response(status_code=204)

    @router.get("/{pool}/volumes", response_model=dict[str, Any])
    def list_volumes(pool: str) -> Response:
        return answer({"items": storage().list_volumes(pool)})

    @router.post("/{pool}/volumes", status_code=201, response_model=dict[str, Any])
    def create_volume(pool: str, data: Any = Body(...)) -> Response:
        return answer(storage().create_volume(pool, parse(VolumeBody, data)), 201)

    @router.get("/{pool}/volumes/{volume}", response_model=dict[str, Any])
    def show_volume(pool: str, volume: str) -> Response:
        return answer(storage().show_volume(pool, volume))

    @router.post("/{pool}/volumes/{volume}/resize", response_model=dict[str, Any])
    def resize(pool: str, volume: str, data: Any = Body(...)) -> Response:
        return answer(storage().resize(pool, volume, parse(ResizeBody, data)))

    @router.delete("/{pool}/volumes/{volume}", status_code=204)
    def delete_volume(pool: str, volume: str) -> Response:
        storage().delete_volume(pool, volume)
        return Response(status_code=204)

    @router.put("/{pool}/volumes/{volume}/content", response_model=dict[str, Any])
    async def upload(request: Request, pool: str, volume: str, format: str | None = Query(None),
                     content_length: str | None = Header(None)) -> Response:
        if content_length is None or not content_length.isdigit():
            raise Invalid("an upload needs a Content-Length header (bytes)", field="Content-Length")
        job = await run_in_threadpool(storage().begin_upload, pool, check_name(volume, "volume"),
                                      int(content_length), format)
        # one batch is hashed and written in a thread while the next one is received: on two CPUs the sha256
        # and the write overlap the HTTP parsing instead of following it
        writing: asyncio.Future[None] | None = None
        try:
            batch: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                batch.append(chunk)
                size += len(chunk)
                if size >= UPLOAD_BATCH:
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(run_in_threadpool(job.send, b"".join(batch)))
                    batch, size = [], 0
            if writing is not None:
                await writing
                writing = None
            if batch:
                await run_in_threadpool(job.send, b"".join(batch))
            return answer(await run_in_threadpool(job.finish))
        except asyncio.CancelledError:  # the server is stopping: no await may run now
            job.abort()
            raise
        except BaseException as exc:  # the client went away, or libvirt failed: no partial volume is left
            if writing is not None:  # let the slice being written end before the volume is deleted
                await asyncio.gather(writing, return_exceptions=True)
            await run_in_threadpool(job.abort)
            if isinstance(exc, ClientDisconnect):
                return Response(status_code=400)  # nobody reads it
            raise

    @router.get("/{pool}/volumes/{volume}/content", response_model=None)
    async def download(pool: str, volume: str) -> StreamingResponse:
        job = await run_in_threadpool(storage().begin_download, pool, volume)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while data := await run_in_threadpool(job.read):
                    yield data
            finally:
                job.abort()  # no-op after the end; else stops libvirt's stream (quick, and cancellation-proof)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    return router
