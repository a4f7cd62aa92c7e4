"""Deploy test fixtures: the engine (with its CA in a data dir shared by the session, so the wheels are built
once), an SSH host in a network namespace, and a small API helper."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.engine.app import create_app
from corral.engine.auth import create_token
from corral.engine.monitor import MonitorSettings
from tests.deploy.sshhost import SshHost, unavailable_reason
from tests.require import unavailable

FAST = MonitorSettings(poll_interval=0.5, flush_interval=0.05, full_every=3, unreachable_after=2,
                       sync_interval=1.0)


class Api:
    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, status: int | None = None, **kwargs: Any) -> Any:
        resp = self.client.request(method, "/api/v1" + path, headers=self.headers, **kwargs)
        if status is not None:
            assert resp.status_code == status, (resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, 200, params=params)

    def post(self, path: str, body: Any = None, status: int = 202) -> Any:
        return self.call("POST", path, status, json=body)

    def wait(self, task: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while task["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, task
            time.sleep(0.2)
            task = self.get(f"/tasks/{task['id']}")
        return task

    def host(self, name: str) -> dict[str, Any]:
        return dict(self.get(f"/hosts/{name}"))

    def events(self, host_id: str) -> list[dict[str, Any]]:
        return list(self.get("/events", object_id=host_id, limit=500)["items"])


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine")


@pytest.fixture
def api(engine_dir: Path, tmp_path: Path) -> Iterator[Api]:
    db = f"sqlite:///{tmp_path / 'engine.db'}"
    token = create_token(db)
    app = create_app(db, monitor=FAST, data_dir=engine_dir)
    with TestClient(app) as client:
        yield Api(client, token)


@pytest.fixture(scope="session")
def sshhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    reason = unavailable_reason()
    if reason:
        unavailable(reason)
    host = SshHost(tmp_path_factory.mktemp("sshhost"))
    try:
        host.start()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        host.stop([])
        unavailable(f"cannot start the SSH host in a network namespace: {exc}")
    roots: list[Path] = []
    host.roots = roots  # type: ignore[attr-defined]
    try:
        yield host
    finally:
        host.stop(roots)


def libvirt_uri_for_tests() -> str:
    """qemu:///system where a libvirtd answers (the QEMU lab starts one), else the test driver."""
    try:
        ok = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=20,
                            check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return "qemu:///system" if ok else "test:///default"
