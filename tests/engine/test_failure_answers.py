"""What the API answers when no route expected it (issue 14): a database that cannot take the write now is
503 JSON with ``Retry-After`` (after a short lock wait, not SQLite's former 30 s), a bug is a JSON 500 without
the exception's text. The lock is real: another connection holds it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from corral.engine.app import create_app
from corral.engine.db.session import BUSY_TIMEOUT_SECONDS
from tests.engine.conftest import Api


@contextmanager
def write_lock(db_url: str) -> Iterator[None]:
    """Another client of the database holding what a new cluster needs, until the block ends."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the one write lock of the file
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False)) as pg:
        pg.execute("LOCK TABLE clusters IN ACCESS EXCLUSIVE MODE")
        yield
        pg.rollback()


def test_locked_database_is_503_json_with_retry_after(api: Api, db_url: str) -> None:
    with write_lock(db_url):
        resp = api.client.post("/api/v1/clusters", json={"name": "blocked"}, headers=api.headers)
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"].isdigit()
    assert resp.json()["code"] == "unavailable"
    assert "database" in resp.json()["message"] and "locked" not in resp.text  # no driver text
    assert api.post("/clusters", {"name": "blocked"}, status=201)["name"] == "blocked"  # and it passes


def test_lock_wait_is_short(api: Api, db_url: str) -> None:
    """The wait is the engine's setting on every connection, well under a client's patience."""
    db = api.client.app.state.db  # type: ignore[attr-defined]
    with db.engine.connect() as conn:
        if db.dialect == "sqlite":
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == BUSY_TIMEOUT_SECONDS * 1000
        else:
            assert conn.execute(text("SHOW lock_timeout")).scalar() == f"{BUSY_TIMEOUT_SECONDS}s"
    assert BUSY_TIMEOUT_SECONDS <= 10


def test_a_bug_is_json_500_without_its_text(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'e.db'}", auth=False, start_monitor=False)

    def broken() -> None:
        raise RuntimeError("secret /var/lib/corral/pki/ca.key")

    app.add_api_route("/api/v1/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/api/v1/broken")
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["code"] == "internal_error"
    assert "secret" not in resp.text and "RuntimeError" not in resp.text
