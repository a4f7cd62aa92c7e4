"""Plain-HTTP agent URLs (issue 14): a host is added by an http:// URL only on the loopback, unless the engine
runs with ``--insecure``; https:// anywhere. The refusal names the field ``url``; nothing is written."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from corral.engine.app import create_app
from corral.engine.auth import create_token
from corral.loopback import is_loopback
from tests.engine.conftest import FAST, Api

TOKEN = "t" * 32


@pytest.fixture(params=[False, True], ids=["secure", "insecure"])
def engine(request: pytest.FixtureRequest, db_url: str) -> Iterator[tuple[Api, bool]]:
    token = create_token(db_url)
    with TestClient(create_app(db_url, monitor=FAST, insecure=request.param)) as client:
        yield Api(client, token), request.param


@pytest.mark.parametrize("url", ["http://192.0.2.10:8443", "http://agent.example.com:8443",
                                 "http://[2001:db8::1]:8443", "http://10.0.0.1"])
def test_plain_http_agent_off_the_loopback(engine: tuple[Api, bool], url: str) -> None:
    api, insecure = engine
    resp = api.client.post("/api/v1/hosts", headers=api.headers, json={"name": "h", "url": url, "token": TOKEN})
    if insecure:
        assert resp.status_code == 202, resp.text  # accepted (the agent is not there: the task fails later)
        return
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["field"] == "url" and "--insecure" in body["message"] and "https://" in body["message"], body
    assert api.get("/hosts")["items"] == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "http://127.8.9.10:9", "http://localhost:9",
                                 "http://[::1]:9", "https://192.0.2.10:8443"])
def test_loopback_or_https_agent_urls_are_accepted(engine: tuple[Api, bool], url: str) -> None:
    api, _ = engine
    resp = api.client.post("/api/v1/hosts", headers=api.headers, json={"name": "h", "url": url, "token": TOKEN})
    assert resp.status_code == 202, resp.text


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.255.0.9", "::1", "[::1]", "localhost", "LOCALHOST.", "a.localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "192.0.2.1", "localhost.example.com", "",
                                     "127.0.0.1.example.com", "::ffff:10.0.0.1"]))
