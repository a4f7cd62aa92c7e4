"""The API's description behind login, its docs page without a CDN (issue 14), on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import pytest

from corral.engine.portal import users
from corral.engine.portal.pages.apidocs import swagger_dir
from corral.engine.portal.sessions import COOKIE
from tests.engine.conftest import Api

PASSWORD = "correct horse battery"


def test_openapi_document_needs_a_token(api: Api) -> None:
    resp = api.client.get("/api/v1/openapi.json")
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
    doc = api.client.get("/api/v1/openapi.json", headers=api.headers).json()
    assert "/api/v1/vms" in doc["paths"] and "/api/v1/openapi.json" not in doc["paths"]
    for public_docs in ("/api/v1/docs", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert api.client.get(public_docs, follow_redirects=False).status_code == 404, public_docs


def test_portal_docs_page_is_local_and_for_logged_in_users(api: Api, db_url: str) -> None:
    if swagger_dir() is None:
        pytest.skip("Swagger UI is not installed (scripts/install fetches npm swagger-ui-dist)")
    r = api.client.get("/portal/api-docs", follow_redirects=False)
    assert r.status_code == 303 and "/portal/login" in r.headers["location"]
    users.create_admin(db_url, "docs", PASSWORD)
    r = api.client.post("/portal/login", data={"username": "docs", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303 and api.client.cookies.get(COOKIE)
    page = api.client.get("/portal/api-docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/portal/swagger/swagger-ui-bundle.js" in sources and "/portal/swagger/swagger-ui.css" in sources
    assert not [s for s in sources if "//" in s], sources  # nothing from another site
    assert "default-src 'self'" in page.headers["content-security-policy"]
    js = api.client.get("/portal/swagger/swagger-ui-bundle.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert api.client.get("/portal/swagger/../../../../etc/passwd").status_code == 404
    # the page reads the document through the portal's pass-through, with the session
    doc = api.client.get("/portal/api/openapi.json")
    assert doc.status_code == 200 and "/api/v1/vms" in doc.json()["paths"]
