"""The agent client: error mapping, bearer token, SSE parsing (on httpx's mock transport)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from corral.engine.agent_client import AgentClient, AgentError, AgentTarget, AgentUnreachable

T = AgentTarget("http://agent.example:8470/", "secret-token")


def run(handler: httpx.MockTransport, coro_fn):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        client = AgentClient(transport=handler)
        try:
            return await coro_fn(client)
        finally:
            await client.aclose()
    return asyncio.run(main())


def test_token_sent_and_json_returned() -> None:
    def handle(req: httpx.Request) -> httpx.Response:
        assert req.headers["authorization"] == "Bearer secret-token"
        assert req.url.path == "/v1/vms"
        return httpx.Response(200, json={"items": [{"id": "a"}]})
    assert run(httpx.MockTransport(handle), lambda c: c.list_vms(T)) == [{"id": "a"}]


def test_error_body_becomes_agent_error() -> None:
    def handle(req: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"code": "refused", "message": "floppy", "field": "disks.0",
                                         "decisions": [1]})
    with pytest.raises(AgentError) as err:
        run(httpx.MockTransport(handle), lambda c: c.create_vm(T, {"name": "x"}))
    assert (err.value.status, err.value.code, err.value.field) == (422, "refused", "disks.0")
    assert err.value.body["decisions"] == [1]


def test_non_json_error_and_connection_failure() -> None:
    with pytest.raises(AgentError) as err:
        run(httpx.MockTransport(lambda r: httpx.Response(500, text="boom")), lambda c: c.host(T))
    assert err.value.code == "http_error" and err.value.status == 500

    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)
    with pytest.raises(AgentUnreachable):
        run(httpx.MockTransport(refuse), lambda c: c.host(T))


def test_sse_stream_parsed() -> None:
    events = [{"seq": 1, "type": "lifecycle", "vm_id": "a", "state": "up"},
              {"seq": 2, "type": "agent", "detail": "x"}]
    body = "retry: 1000\n: hello\n\n" + "".join(
        f"id: {e['seq']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events) + ": keepalive\n\n"

    def handle(req: httpx.Request) -> httpx.Response:
        assert req.url.params["after"] == "7" and req.headers["last-event-id"] == "7"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async def collect(c: AgentClient) -> list[dict[str, object]]:
        return [e async for e in c.events_stream(T, 7)]
    assert run(httpx.MockTransport(handle), collect) == events
