"""``corral user …``, ``corral token …`` and ``corral event list --user`` (issue 14) against a real engine
(uvicorn in a thread, SQLite), in every ``--output``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from corral.cli import app
from corral.engine.app import create_app
from corral.engine.auth import create_token
from tests.cli.support import free_port


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[str, str]]:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    token = create_token(url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(url, start_monitor=False), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{base}/api/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield base, token
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run(engine: tuple[str, str], *args: str, token: str | None = None, code: int = 0, stdin: str | None = None) -> str:
    url, admin = engine
    result = CliRunner().invoke(app, list(args), env={"CORRAL_URL": url, "CORRAL_TOKEN": token or admin},
                                input=stdin)
    assert result.exit_code == code, (args, result.stdout, result.stderr, result.exception)
    return result.stdout if code == 0 else result.stderr


def test_users_tokens_and_the_audit_trail(engine: tuple[str, str]) -> None:
    created = json.loads(run(engine, "user", "create", "otto", "--role", "operator", "--password", "pw-otto-123",
                             "-o", "json"))
    assert created["username"] == "otto" and created["role"] == "operator"
    run(engine, "user", "create", "vera", "--role", "viewer", "--password-prompt", stdin="pw-vera-123\npw-vera-123\n")
    assert "give --password" in run(engine, "user", "create", "x", "--role", "viewer", code=2)
    assert "--role" in run(engine, "user", "create", "x", "--role", "root", "--password", "pw-123456", code=2)
    listed = yaml.safe_load(run(engine, "user", "list", "-o", "yaml"))
    assert [(u["username"], u["role"]) for u in listed["items"]] == [("otto", "operator"), ("vera", "viewer")]
    assert "| vera" in run(engine, "user", "list", "-o", "markdown")
    assert "otto" in run(engine, "user", "list")

    # token create prints the token alone (table) or the whole answer with "token" (json)
    otto_token = run(engine, "token", "create", "ci", "--user", "otto", "--expires", "30d").strip()
    assert otto_token.startswith("crl_") and "\n" not in otto_token
    answer = json.loads(run(engine, "token", "create", "ro", "--user", "otto", "--role", "viewer", "-o", "json"))
    assert answer["token"].startswith("crl_") and answer["role"] == "viewer" and answer["user"] == "otto"

    # otto works with his token; the audit trail names him
    vm = {"name": "by-otto", "memory_mib": 64}
    r = httpx.post(f"{engine[0]}/api/v1/vms", json=vm, headers={"Authorization": f"Bearer {otto_token}"})
    assert r.status_code == 201
    events = json.loads(run(engine, "event", "list", "--user", "otto", "-o", "json"))["items"]
    assert [(e["type"], e["actor"]) for e in events] == [("vm_created", "otto")]
    assert "otto" in run(engine, "event", "list", "--user", "otto")
    assert json.loads(run(engine, "event", "list", "--user", "vera", "-o", "json"))["items"] == []

    # his own tokens only, for him; revoked by name; then refused
    mine = json.loads(run(engine, "token", "list", "-o", "json", token=otto_token))["items"]
    assert sorted(t["name"] for t in mine) == ["ci", "ro"]
    assert "ci" in run(engine, "token", "list", "--user", "otto", "-o", "markdown")
    assert json.loads(run(engine, "token", "revoke", "ro", "-o", "json", token=otto_token))["state"] == "revoked"
    assert "revoked" in run(engine, "token", "list", "-o", "yaml")

    # role and state changes; a viewer is refused writes with the role named
    assert json.loads(run(engine, "user", "set-role", "otto", "viewer", "-o", "json"))["role"] == "viewer"
    err = run(engine, "vm", "create", "again", "--memory", "64", token=otto_token, code=1)
    assert "forbidden" in err and "operator" in err
    assert json.loads(run(engine, "user", "disable", "otto", "-o", "json"))["disabled"] is True
    assert "disabled" in run(engine, "vm", "list", token=otto_token, code=1)
    assert json.loads(run(engine, "user", "enable", "otto", "-o", "json"))["disabled"] is False
