"""The simulator's HTTP side: one ASGI app that serves every simulated agent under ``/hosts/<n>``.

``SimulatorApp`` strips nothing: it recognises ``/hosts/<n>``, checks the bearer token (as the agent's
middleware does: every path but ``/v1/health``), answers the hot polls itself (``GET /v1/health``,
``GET /v1/vms``, well-formed ``GET /v1/events``) and hands everything else to one FastAPI app whose routes,
parameters and error bodies are the agent's (``corral.agent.app.create_app``), with the host in the scope and
``root_path`` set to the host's prefix. So ``/hosts/<n>/v1/openapi.json`` is the agent's OpenAPI document.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from corral import __version__
from corral.agent.app import ACTIONS, agent_fastapi, install_error_handlers, storage_router
from corral.agent.bodies import hotplug_args, shutdown_args
from corral.agent.errors import Invalid
from corral.agent.events import EventBus
from corral.agent.migration_routes import migration_router
from corral.agent.netsetup.routes import hostnet_router
from corral.agent.snapshot_routes import snapshots_router
from corral.domain.spec import VmSpec, parse_spec
from corral.simulate.fleet import Simulator
from corral.simulate.sim import SimHost

HOST_KEY = "corral.simulate.host"
KEEPALIVE_SECONDS = 15.0
_JSON = [(b"content-type", b"application/json")]
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_HOST_PATH = re.compile(r"/hosts/(\d+)(/.*)?")


def _error(status: int, code: str, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "field": field, **extra}, status_code=status)


def _json(text: str | bytes, status: int = 200) -> Response:
    return Response(text.encode() if isinstance(text, str) else text, status_code=status,
                    media_type="application/json")


def _json_answer(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status_code=status)


def events_poll(bus: EventBus, last: int) -> dict[str, Any]:
    items = bus.since(last)
    return {"items": [e.as_dict() for e in items], "last": items[-1].seq if items else last}


class EventStream(Response):
    """The agent's ``text/event-stream``: a ``retry`` hint, then each event with ``id:``, keep-alives every 15 s,
    until the client goes away."""

    media_type = "text/event-stream"

    def __init__(self, bus: EventBus, after: int) -> None:
        super().__init__(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.bus, self.after = bus, after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        seq = self.after
        gone = asyncio.ensure_future(_disconnected(receive))
        waiter: asyncio.Future[Any] | None = None
        try:
            await _chunk(send, f"retry: 1000\n: corral agent events after {seq}\n\n")
            while True:
                waiter = asyncio.ensure_future(self.bus.wait(seq, KEEPALIVE_SECONDS))
                await asyncio.wait({gone, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    return
                batch = waiter.result()
                if not batch:
                    await _chunk(send, ": keepalive\n\n")
                    continue
                text = "".join(f"id: {e.seq}\nevent: {e.type}\ndata: {json.dumps(e.as_dict())}\n\n" for e in batch)
                seq = batch[-1].seq
                await _chunk(send, text)
        except OSError:
            return
        finally:
            for fut in (gone, waiter):
                if fut is not None and not fut.done():
                    fut.cancel()
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _chunk(send: Send, text: str) -> None:
    await send({"type": "http.response.body", "body": text.encode(), "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _spec_body(data: Any) -> VmSpec:
    if not isinstance(data, dict):
        raise Invalid("the body must be a VmSpec object", field="body")
    return parse_spec(data)


def _host(request: Request) -> SimHost:
    host: SimHost = request.scope[HOST_KEY]
    return host


def create_agent_app() -> FastAPI:
    """The agent API for whichever simulated host the request's scope names (same routes as the agent's)."""
    app = agent_fastapi(root_path_in_servers=False)

    install_error_handlers(app)
    app.include_router(storage_router(None))  # the agent's storage routes; simulated hosts have no storage yet
    app.include_router(snapshots_router(None, _json_answer))  # the same: no disks, 409 unsupported
    app.include_router(hostnet_router(None, _json_answer))  # the same: no links, 409 unsupported
    app.include_router(migration_router(None, _json_answer))  # the same: no migration, 409 unsupported

    @app.get("/v1/health", response_model=dict[str, Any])
    async def health() -> Response:
        return _json(HEALTH)

    @app.get("/v1/host", response_model=dict[str, Any])
    async def host(request: Request) -> Response:
        return JSONResponse(_host(request).host())

    @app.get("/v1/host/stats", response_model=dict[str, Any])
    async def host_stats(request: Request) -> Response:
        return JSONResponse(_host(request).host_stats())

    @app.get("/v1/vms", response_model=dict[str, Any])
    async def list_vms(request: Request) -> Response:
        return _json(_host(request).list_json())

    @app.post("/v1/vms/plan", response_model=dict[str, Any])
    async def plan(request: Request, data: Any = Body(...)) -> Response:
        return JSONResponse(_host(request).plan(_spec_body(data)))

    @app.post("/v1/vms", status_code=201, response_model=dict[str, Any])
    async def create(request: Request, data: Any = Body(...), start: bool = False) -> Response:
        return _json(await _host(request).create(_spec_body(data), start=start), status=201)

    @app.get("/v1/vms/{vm_id}", response_model=dict[str, Any])
    async def show(request: Request, vm_id: str) -> Response:
        sim_host = _host(request)
        return _json(sim_host.detail_json(sim_host.lookup(vm_id)))

    @app.delete("/v1/vms/{vm_id}", status_code=204)
    async def delete(request: Request, vm_id: str) -> Response:
        await _host(request).undefine(vm_id)
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/{action}", response_model=dict[str, Any])
    async def action(request: Request, vm_id: str, action: str, data: Any = Body(None)) -> Response:
        sim_host = _host(request)
        if action == "shutdown":
            return _json(await sim_host.shutdown(vm_id, *shutdown_args(data)))
        if action == "devices":
            return _json(await sim_host.hotplug(vm_id, *hotplug_args(data)))
        if action == "start":
            return _json(await sim_host.start(vm_id))
        if action == "destroy":
            return _json(await sim_host.destroy(vm_id))
        if action in ("reboot", "pause", "resume"):
            return _json(await sim_host.simple(vm_id, action))
        raise Invalid(f"unknown action {action!r}; one of {', '.join(ACTIONS)}", field="action")

    @app.patch("/v1/vms/{vm_id}/devices/{device_id}", response_model=dict[str, Any])
    async def patch_device(request: Request, vm_id: str, device_id: str, data: Any = Body(...)) -> Response:
        if not isinstance(data, dict):
            raise Invalid("the body must be an object", field="body")
        return _json(await _host(request).update_device(vm_id, device_id, data))

    @app.delete("/v1/vms/{vm_id}/devices/{device_id}", response_model=dict[str, Any])
    async def unplug(request: Request, vm_id: str, device_id: str) -> Response:
        return _json(await _host(request).unplug(vm_id, device_id))

    @app.put("/v1/vms/{vm_id}/memory", response_model=dict[str, Any])
    async def memory(request: Request, vm_id: str, data: Any = Body(...)) -> Response:
        value = data.get("memory_mib") if isinstance(data, dict) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid("memory_mib must be an integer", field="memory_mib")
        return _json(await _host(request).set_memory(vm_id, value))

    @app.put("/v1/vms/{vm_id}/vcpus", response_model=dict[str, Any])
    async def vcpus(request: Request, vm_id: str, data: Any = Body(...)) -> Response:
        value = data.get("vcpus") if isinstance(data, dict) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid("vcpus must be an integer", field="vcpus")
        return _json(await _host(request).set_vcpus(vm_id, value))

    @app.get("/v1/vms/{vm_id}/console", response_model=dict[str, Any])
    async def console(request: Request, vm_id: str, tail: int = Query(65536, ge=1, le=16 * 1024 * 1024)) -> Response:
        return JSONResponse(_host(request).console_log(vm_id, tail))

    @app.get("/v1/events", response_model=None)
    async def events(request: Request, after: int | None = Query(None, ge=0),
                     wait: float = Query(-1.0, le=60)) -> Response:
        last = after
        if last is None:
            header = request.headers.get("last-event-id", "")
            last = int(header) if header.isdigit() else 0
        bus = _host(request).bus
        if wait >= 0:
            if wait > 0:
                items = await bus.wait(last, wait)
                return JSONResponse({"items": [e.as_dict() for e in items], "last": items[-1].seq if items else last})
            return JSONResponse(events_poll(bus, last))
        return EventStream(bus, last)

    return app


HEALTH = json.dumps({"status": "ok", "version": __version__, "libvirt": True}).encode()


class SimulatorApp:
    """The ASGI app ``corral simulate`` serves: ``/hosts/<n>/v1/...`` for every simulated host."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.agent_app = create_agent_app()
        self._token = sim.token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        match = _HOST_PATH.fullmatch(path)
        if match is None:
            if path == "/":
                await _send_json(send, 200, self._index())
            else:
                await _send_json(send, 404, {"code": "not_found", "field": None,
                                             "message": f"no such path {path}: agents are at /hosts/<n>/v1/..."})
            return
        host = self.sim.host(int(match.group(1)))
        if host is None:
            await _send_json(send, 404, {"code": "not_found", "field": None,
                                         "message": f"no simulated host {match.group(1)} (hosts are "
                                                    f"1..{len(self.sim.hosts)})"})
            return
        rest = match.group(2) or ""
        if rest != "/v1/health" and not self._authorized(scope):
            await _send_json(send, 401, {"code": "unauthorized", "message": "a valid bearer token is required",
                                         "field": None})
            return
        if scope["method"] == "GET" and await self._fast(host, rest, scope, receive, send):
            return
        prefix = f"/hosts/{host.n}"
        child = dict(scope)
        child["root_path"] = scope.get("root_path", "") + prefix
        if not path.startswith(child["root_path"]):  # the server gave a root path of its own
            child["path"] = child["root_path"] + rest
        child[HOST_KEY] = host
        await self.agent_app(child, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization":
                given = value[7:] if value[:7].lower() == b"bearer " else b""
                return hmac.compare_digest(given, self._token)
        return hmac.compare_digest(b"", self._token)

    async def _fast(self, host: SimHost, rest: str, scope: Scope, receive: Receive, send: Send) -> bool:
        """The hot paths, answered without routing; anything unusual goes to the FastAPI app."""
        if rest == "/v1/vms":
            await _send_body(send, 200, host.list_json())
            return True
        if rest == "/v1/health":
            await _send_body(send, 200, HEALTH)
            return True
        if rest != "/v1/events":
            return False
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        params = dict(query)
        if len(params) != len(query) or not set(params) <= {"after", "wait"}:
            return False
        after, wait = params.get("after"), params.get("wait", "-1")
        if (after is not None and not after.isdigit()) or not _NUMBER.fullmatch(wait) or float(wait) > 60:
            return False
        last = int(after) if after is not None else None
        if last is None:
            header = next((v for k, v in scope["headers"] if k == b"last-event-id"), b"").decode("latin-1")
            last = int(header) if header.isdigit() else 0
        seconds = float(wait)
        if seconds < 0:
            await EventStream(host.bus, last)(scope, receive, send)
        elif seconds == 0:
            await _send_json(send, 200, events_poll(host.bus, last))
        else:
            items = await host.bus.wait(last, seconds)
            await _send_json(send, 200, {"items": [e.as_dict() for e in items],
                                         "last": items[-1].seq if items else last})
        return True

    def _index(self) -> dict[str, Any]:
        hosts = self.sim.hosts
        return {"simulator": "corral simulate", "version": __version__, "hosts": len(hosts),
                "flavors": self.sim.flavor_counts(), "vms": self.sim.vm_count(),
                "agent_path": "/hosts/<n>", "first": 1 if hosts else None, "last": len(hosts) or None}

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _send_body(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, data: Any) -> None:
    await _send_body(send, status, json.dumps(data, separators=(",", ":")).encode())


def create_simulator_app(sim: Simulator) -> SimulatorApp:
    return SimulatorApp(sim)
