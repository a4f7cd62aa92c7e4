"""The agent client: error mapping, bearer token, SSE parsing -- over a real HTTP server on loopback (aiohttp's),
through the client's one production path (no mock transport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from corral.engine.agent_client import AgentClient, AgentError, AgentTarget, AgentUnreachable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def serve(handler: Handler, call: Callable[[AgentClient, AgentTarget], Awaitable[Any]]) -> Any:
    """Run ``handler`` for every path on a loopback port, and ``call`` with a client aimed at it."""
    async def main() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        client = AgentClient()
        try:
            return await call(client, AgentTarget(f"http://127.0.0.1:{port}/", "secret-token"))
        finally:
            await client.aclose()
            await runner.cleanup()
    return asyncio.run(main())


def test_token_sent_and_json_returned() -> None:
    seen: list[tuple[str, str]] = []

    async def handle(req: web.Request) -> web.Response:
        seen.append((req.headers["Authorization"], req.path))
        return web.json_response({"items": [{"id": "a"}]})
    assert serve(handle, lambda c, t: c.list_vms(t)) == [{"id": "a"}]
    assert seen == [("Bearer secret-token", "/v1/vms")]


def test_error_body_becomes_agent_error() -> None:
    async def handle(req: web.Request) -> web.Response:
        assert await req.json() == {"name": "x"} and req.query["start"] == "false"
        return web.json_response({"code": "refused", "message": "floppy", "field": "disks.0", "decisions": [1]},
                                 status=422)
    with pytest.raises(AgentError) as err:
        serve(handle, lambda c, t: c.create_vm(t, {"name": "x"}))
    assert (err.value.status, err.value.code, err.value.field) == (422, "refused", "disks.0")
    assert err.value.body["decisions"] == [1]


def test_non_json_error_and_connection_failure() -> None:
    async def boom(req: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")
    with pytest.raises(AgentError) as err:
        serve(boom, lambda c, t: c.host(t))
    assert err.value.code == "http_error" and err.value.status == 500

    async def refused() -> None:
        client = AgentClient()
        try:
            await client.host(AgentTarget("http://127.0.0.1:9/", "x"))  # discard port: nothing listens
        finally:
            await client.aclose()
    with pytest.raises(AgentUnreachable):
        asyncio.run(refused())


def test_sse_stream_parsed() -> None:
    events = [{"seq": 1, "type": "lifecycle", "vm_id": "a", "state": "up"},
              {"seq": 2, "type": "agent", "detail": "x"}]
    body = "retry: 1000\n: hello\n\n" + "".join(
        f"id: {e['seq']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events) + ": keepalive\n\n"

    async def handle(req: web.Request) -> web.StreamResponse:
        assert req.query["after"] == "7" and req.headers["Last-Event-ID"] == "7"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        for chunk in (body[:17], body[17:60], body[60:]):  # lines split across writes, as a network does
            await resp.write(chunk.encode())
        await resp.write_eof()
        return resp

    async def collect(c: AgentClient, t: AgentTarget) -> list[dict[str, object]]:
        return [e async for e in c.events_stream(t, 7)]
    assert serve(handle, collect) == events


def test_a_stream_error_status_is_an_agent_error() -> None:
    async def handle(req: web.Request) -> web.Response:
        return web.json_response({"code": "unauthorized", "message": "bad token", "field": None}, status=401)

    async def collect(c: AgentClient, t: AgentTarget) -> list[dict[str, object]]:
        return [e async for e in c.events_stream(t, 0)]
    with pytest.raises(AgentError) as err:
        serve(handle, collect)
    assert (err.value.status, err.value.code) == (401, "unauthorized")
