"""The agent's hottest calls answered without FastAPI's routing: ``GET /v1/vms`` (the engine polls it for
every host), ``GET /v1/health``, ``POST /v1/vms`` and the body-less lifecycle actions, ``GET /v1/vms/{id}``.

Why: measured on the benchmark machine, FastAPI's way to a handler (route matching over every route, solving
the parameters, validating the body as ``Any``, its exception and exit-stack middlewares) cost about a third
of a millisecond per call -- as much as a libvirt create. These calls go straight to the same ``VmManager``
method in the same thread pool, and answer with the same encoder and the same error bodies
(``corral.agent.app.error_answer``). Anything not plainly well-formed -- another query parameter, a body where
none is expected, a body that is not a JSON object -- is handed to the FastAPI app unchanged (its body
replayed), so every error a client can provoke is still FastAPI's own. The OpenAPI document is FastAPI's:
the routes stay declared there, with the same handlers behind them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

VM_PATH = re.compile(r"/v1/vms/([0-9A-Fa-f-]{36})(?:/(start|destroy|reboot|pause|resume))?")
_START = {b"": False, b"start=false": False, b"start=true": True}
_DECODE = msgspec.json.Decoder()

Call = Callable[[], Any]


class FastPath:
    """ASGI middleware in front of the agent's FastAPI routes (inside authentication)."""

    def __init__(self, app: ASGIApp, *, handlers: Any, answer: Callable[..., Response],
                 error_answer: Callable[[Exception], Response | None]) -> None:
        self.app = app
        self.handlers = handlers  # VmHandlers: the calls behind the routes
        self.answer = answer
        self.error_answer = error_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path, query = scope["method"], scope["path"], scope["query_string"]
        if method == "GET" and not query:
            if path == "/v1/health":
                await self._run(self.handlers.health, 200, scope, receive, send)
                return
            if path == "/v1/vms":
                await self._run(self.handlers.list_vms, 200, scope, receive, send)
                return
            match = VM_PATH.fullmatch(path)
            if match is not None and match.group(2) is None:
                vm_id = match.group(1)
                await self._run(lambda: self.handlers.show(vm_id), 200, scope, receive, send)
                return
        elif method == "POST":
            if path == "/v1/vms" and query in _START:
                await self._create(_START[query], scope, receive, send)
                return
            match = VM_PATH.fullmatch(path)
            if match is not None and match.group(2) is not None and not query:
                body = await _body(receive)
                if body:  # a body for a body-less action: FastAPI's validation says what is wrong
                    await self.app(scope, _replay(body, receive), send)
                    return
                vm_id, action = match.group(1), match.group(2)
                await self._run(lambda: self.handlers.action(vm_id, action), 200, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _create(self, start: bool, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _body(receive)
        try:
            data = _DECODE.decode(body)
        except msgspec.DecodeError:
            data = None
        if not isinstance(data, dict):
            await self.app(scope, _replay(body, receive), send)
            return
        await self._run(lambda: self.handlers.create(data, start), 201, scope, receive, send)

    async def _run(self, call: Call, status: int, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = self.answer(await run_in_threadpool(call), status)
        except Exception as exc:
            answer = self.error_answer(exc)
            if answer is None:
                raise
            response = answer
        await response(scope, receive, send)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: nobody to answer
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the FastAPI app after the fast path has read the body."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
