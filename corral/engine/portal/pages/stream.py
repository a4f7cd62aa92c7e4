"""Live updates (``/portal/stream``): the feed's batches as server-sent events to a logged-in page. A stream
ends after ``STREAM_LIFETIME`` (the browser reconnects, and the session is checked again) and at shutdown; a
reconnecting browser's ``Last-Event-ID`` gets it what it missed (``corral.engine.portal.feed``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PortalDep, SessionDep
from corral.engine.portal.feed import Message

router = APIRouter(prefix=PREFIX, include_in_schema=False)

STREAM_LIFETIME = 300.0
KEEPALIVE = 15.0


def sse(messages: list[Message]) -> str:
    out = []
    for kind, payload in messages:
        head = f"event: {kind}\n"
        if kind == "event":
            head += f"id: {payload['id']}\n"
        out.append(head + "data: " + json.dumps(payload, default=str, separators=(",", ":")) + "\n\n")
    return "".join(out)


@router.get("/stream")
async def stream(request: Request, portal: PortalDep, auth: SessionDep, after: int | None = None) -> Response:
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
