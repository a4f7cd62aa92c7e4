"""The REST API for the browser's scripts (``/portal/api/<path>`` = ``/api/v1/<path>``): the session's token is
added here, and a write needs the page's CSRF token in ``X-CSRF-Token``. Answers, errors included, pass through
unchanged, so the scripts show each error next to the field it names.

A request body is passed on as it arrives (with its ``Content-Length``), never read whole first: an image
upload (``PUT images/{name}``) streams from the browser through here to the engine's API and on to the agent;
a browser that goes away mid-upload ends the API's upload too, which then keeps nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PortalDep, SessionDep
from corral.engine.portal.sessions import csrf_ok

router = APIRouter(prefix=PREFIX, include_in_schema=False)


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


@router.api_route("/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def api_proxy(request: Request, path: str, portal: PortalDep, auth: SessionDep) -> Response:
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
    length = request.headers.get("content-length")
    params = httpx.QueryParams(str(request.query_params))
    if length is not None and length.isdigit() and int(length) > 0:
        headers["Content-Length"] = length
        resp = await portal.api.request(request.method, "/" + path, params=params, content=_body(request),
                                        headers=headers)
    elif "chunked" in request.headers.get("transfer-encoding", "").lower():
        # streamed too, without a length: what needs one (an upload) answers 411 naming Content-Length
        resp = await portal.api.request(request.method, "/" + path, params=params, content=_body(request),
                                        headers=headers)
    else:
        resp = await portal.api.request(request.method, "/" + path, params=params, content=await request.body(),
                                        headers=headers)
    return Response(resp.content, status_code=resp.status_code,
                    media_type=resp.headers.get("content-type", "application/json"),
                    headers={"Cache-Control": "no-store"})
