"""Request size limits: no request body above ``MAX_BODY`` is read, except an image upload, which streams.

Every body the engine parses whole (JSON for the API, forms for the portal) is small: a VmSpec with 64 disks
is a few tens of KiB. Without a limit one request could make the engine hold gigabytes in memory. The limit
is applied before the route runs, from ``Content-Length`` (413 at once, nothing read); a body sent without one
(chunked) is counted as it is read and cut at the limit. An image upload (``PUT /api/v1/images/{name}`` and the
portal's pass-through of it) is never held whole (corral.engine.api.images) and has its own bound.
"""

from __future__ import annotations

import json
import re

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 1024 * 1024
STREAMED = re.compile(r"^/(api/v1|portal/api)/images/[^/]+$")  # PUT: the upload routes


class BodyTooLarge(HTTPException):
    """Raised while a body without ``Content-Length`` is read past the limit (FastAPI passes it on as is)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


def too_large_body(limit: int) -> bytes:
    return json.dumps({"code": "too_large", "message": f"the request body is larger than {limit} bytes",
                       "field": None, "limit": limit}).encode()


class BodyLimit:
    """Pure ASGI middleware (a ``BaseHTTPMiddleware`` would buffer streamed answers such as the portal's feed)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "PUT" and STREAMED.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if not length.isdigit():
                await _answer(send, 400, {"code": "bad_request", "message": "Content-Length must be a number",
                                          "field": "Content-Length"})
                return
            if int(length) > self.limit:
                await _answer(send, 413, json.loads(too_large_body(self.limit)))
                return
            await self.app(scope, receive, send)  # the server delivers no more than Content-Length
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


async def _answer(send: Send, status: int, body: dict[str, object]) -> None:
    content = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": content})
