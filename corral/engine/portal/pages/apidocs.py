"""``/portal/api-docs``: Swagger UI on the REST API's document, for a logged-in user (issue 14).

Its files come from the engine (npm ``swagger-ui-dist``, fetched by ``scripts/install`` like noVNC), never from
a CDN: the page's Content-Security-Policy allows this origin only. The document is read through the portal's
pass-through to the API (``/portal/api/openapi.json``, with the session's token), and so are the calls "Try it
out" makes (``static/apidocs.js`` sends them to ``/portal/api/`` with the page's CSRF token), so the page works
with the session, without pasting a token."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from corral.engine.portal.console import _npm_package
from corral.engine.portal.core import PREFIX
from corral.engine.portal.deps import PageDep
from corral.engine.portal.pages.console import _asset

router = APIRouter(include_in_schema=False)


def swagger_dir() -> Path | None:
    """Where Swagger UI's ``swagger-ui-bundle.js`` is (``CORRAL_SWAGGER_UI_DIR`` or scripts/install's copy)."""
    return _npm_package("CORRAL_SWAGGER_UI_DIR", "swagger-ui", "swagger-ui-dist", "swagger-ui-bundle.js")


_swagger = lru_cache(maxsize=1)(swagger_dir)


@router.get(PREFIX + "/api-docs")
async def api_docs(page: PageDep) -> Response:
    return page.render("apidocs.html", title="REST API", installed=_swagger() is not None)


@router.get(PREFIX + "/swagger/{path:path}")
def swagger_file(path: str) -> Response:
    return _asset(_swagger(), path, "Swagger UI")
