"""Portal login hardening (issue 14): failed logins limited per account, per address and per both in bounded
caches; the client address is the connection's peer unless proxies are named; logging in and out refuse
another site's forms."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from corral.engine.app import create_app
from corral.engine.portal import users
from corral.engine.portal.sessions import COOKIE, csrf_token
from tests.engine.agents import REPO, free_port

PASSWORD = "correct horse battery"
LOGIN_COOKIE = "corral_login"  # corral.engine.portal.pages.session
BROWSER = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_counts_per_account_and_per_address() -> None:
    from corral.engine.portal.limiter import LoginLimiter

    clock = Clock()
    lim = LoginLimiter(per_pair=3, per_account=5, per_address=8, window=60, clock=clock)
    for i in range(5):  # one account from five addresses: no pair reaches 3
        assert lim.blocked(f"10.0.0.{i}", "admin") == 0
        lim.failed(f"10.0.0.{i}", "admin")
    assert lim.blocked("10.0.0.99", "Admin") > 0  # the account, from any address, any case
    assert lim.blocked("10.0.0.99", "alice") == 0
    for i in range(8):  # one address trying eight accounts
        lim.failed("192.0.2.1", f"user{i}")
    assert lim.blocked("192.0.2.1", "bob") > 0
    assert lim.blocked("192.0.2.2", "bob") == 0
    lim.succeeded("10.0.0.1", "admin")  # a success elsewhere does not forgive the account's failures
    assert lim.blocked("10.0.0.1", "admin") > 0
    clock.now += 61
    assert lim.blocked("10.0.0.99", "admin") == 0 and lim.blocked("192.0.2.1", "bob") == 0


def test_limiter_memory_is_bounded_and_a_flood_does_not_unblock_a_used_key() -> None:
    from corral.engine.portal.limiter import LoginLimiter

    clock = Clock()
    lim = LoginLimiter(per_pair=2, per_account=2, per_address=1000, window=60, size=50, clock=clock)
    lim.failed("198.51.100.1", "admin")
    lim.failed("198.51.100.2", "admin")
    for i in range(500):
        lim.failed(f"203.0.113.{i % 250}", f"u{i}")
        if i % 10 == 0:
            assert lim.blocked("198.51.100.3", "admin") > 0  # in use: kept (least recently used go first)
    assert all(len(c.failures) <= 50 for c in (lim._pair, lim._account, lim._address))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    users.create_admin(db_url, "admin", PASSWORD)
    with TestClient(create_app(db_url, start_monitor=False), base_url="http://testserver") as c:
        yield c


def test_login_from_another_sites_form_is_refused(client: TestClient) -> None:
    form = {"username": "admin", "password": PASSWORD}
    r = client.post("/portal/login", data=form, headers=BROWSER, follow_redirects=False)
    assert r.status_code == 403 and "another site" in r.text and COOKIE not in client.cookies
    page = client.get("/portal/login")  # the portal's own form: its token in a field and in a cookie
    token = client.cookies.get(LOGIN_COOKIE)
    assert token and f'name="csrf" value="{token}"' in page.text
    assert "samesite=strict" in page.headers["set-cookie"].lower()
    r = client.post("/portal/login", data={**form, "csrf": "guessed"}, headers=BROWSER, follow_redirects=False)
    assert r.status_code == 403
    token = client.cookies.get(LOGIN_COOKIE)
    r = client.post("/portal/login", data={**form, "csrf": token}, headers=BROWSER, follow_redirects=False)
    assert r.status_code == 303 and client.cookies.get(COOKIE)


def test_logout_without_the_csrf_token_changes_nothing(client: TestClient) -> None:
    r = client.post("/portal/login", data={"username": "admin", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303
    session = client.cookies.get(COOKIE)
    assert session
    r = client.post("/portal/logout", data={"csrf": "nope"}, follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert client.get("/portal/", follow_redirects=False).status_code == 200  # still logged in
    r = client.post("/portal/logout", data={"csrf": csrf_token(session)}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.set(COOKIE, session)
    assert client.get("/portal/", follow_redirects=False).status_code == 303  # the session is gone


def test_one_address_trying_many_accounts_is_stopped(client: TestClient) -> None:
    for i in range(20):
        r = client.post("/portal/login", data={"username": f"user{i}", "password": "x"}, follow_redirects=False)
        assert r.status_code == 401
    r = client.post("/portal/login", data={"username": "admin", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 429 and "Too many failed attempts" in r.text


def test_forwarded_for_is_not_believed_unless_proxies_are_named(tmp_path: Path) -> None:
    """A real ``corral engine serve``: a client naming a new X-Forwarded-For each time is still one address."""
    data, port = tmp_path / "data", free_port()
    db = f"sqlite:///{data / 'engine.db'}"
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    corral = [sys.executable, "-m", "corral"]
    subprocess.run([*corral, "engine", "create-admin", "--db", db, "--data-dir", str(data), "--password-file",
                    str(pw)], check=True, capture_output=True, cwd=REPO)
    log = open(tmp_path / "engine.log", "wb")  # noqa: SIM115 - the child's
    proc = subprocess.Popen([*corral, "engine", "serve", "--db", db, "--data-dir", str(data), "--listen",
                             f"127.0.0.1:{port}", "--no-tls"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "engine.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=30) as web:
            for i in range(20):
                r = web.post("/portal/login", data={"username": f"user{i}", "password": "x"},
                             headers={"X-Forwarded-For": f"198.51.100.{i}"})
                assert r.status_code == 401
            r = web.post("/portal/login", data={"username": "admin", "password": PASSWORD},
                         headers={"X-Forwarded-For": "198.51.100.200"})
            assert r.status_code == 429, r.status_code
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
