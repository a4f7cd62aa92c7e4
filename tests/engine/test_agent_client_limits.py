"""The agent client trusts an agent's answers no further than it must (issue 14): a redirect is never followed
(the engine's credentials stay with the host it meant), an answer is read up to a size cap, and an error that is
not the agent's JSON shape is reported without its text. Over a real loopback server, as in test_agent_client."""

from __future__ import annotations

import pytest
from aiohttp import web

from corral.engine import agent_client
from corral.engine.agent_client import AgentError, AgentUnreachable
from tests.engine.test_agent_client import serve


def test_redirect_is_not_followed() -> None:
    elsewhere: list[str | None] = []

    async def handle(req: web.Request) -> web.StreamResponse:
        if req.path == "/elsewhere":
            elsewhere.append(req.headers.get("Authorization"))
            return web.json_response({"hostname": "other"})
        raise web.HTTPFound("/elsewhere")

    with pytest.raises(AgentUnreachable, match="redirect"):
        serve(handle, lambda c, t: c.host(t))
    with pytest.raises(AgentUnreachable, match="redirect"):
        serve(handle, lambda c, t: c.create_vm(t, {"name": "x"}, start=True))
    assert elsewhere == []


@pytest.mark.parametrize("chunked", [False, True])
def test_answer_larger_than_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch, chunked: bool) -> None:
    monkeypatch.setattr(agent_client, "MAX_ANSWER", 4096)
    body = b'{"items": ["' + b"x" * 8192 + b'"]}'

    async def handle(req: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(req)
        for i in range(0, len(body), 1000):
            await resp.write(body[i:i + 1000])
        await resp.write_eof()
        return resp

    with pytest.raises(AgentUnreachable, match="larger than 4096"):
        serve(handle, lambda c, t: c.list_vms(t))
    small = b'{"items": []}'

    async def fine(req: web.Request) -> web.Response:
        return web.Response(body=small, content_type="application/json")
    assert serve(fine, lambda c, t: c.list_vms(t)) == []


def test_error_without_the_agent_shape_is_not_echoed() -> None:
    async def proxy_page(req: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>secret internal proxy page at 10.0.0.7</html>")

    with pytest.raises(AgentError) as err:
        serve(proxy_page, lambda c, t: c.host(t))
    assert err.value.status == 502 and err.value.code == "http_error"
    assert "secret" not in str(err.value) and "10.0.0.7" not in err.value.message
