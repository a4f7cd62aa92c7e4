"""The REST API's OpenAPI document behind login (issue 14): ``GET /api/v1/openapi.json`` needs a bearer token like
every API call (any role may read it). FastAPI's own ``/docs`` page, which loads Swagger UI from a CDN, and its
public document are off (corral.engine.app); the portal serves Swagger UI from a local copy to logged-in users
(corral.engine.portal.pages.apidocs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from corral.engine.api.deps import require_token

OPENAPI_PATH = "/api/v1/openapi.json"


def openapi_router() -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], include_in_schema=False)

    @router.get(OPENAPI_PATH)
    def openapi(request: Request) -> Any:
        return JSONResponse(request.app.openapi())

    return router
