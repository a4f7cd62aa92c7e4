"""Engine test fixtures: a database per test on SQLite and on a real PostgreSQL, and an API client.

``db_url`` is parametrized over both backends; PostgreSQL params are skipped only when no ``initdb`` is
installed (the Debian ``postgresql-15`` package provides it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from corral.engine.app import create_app
from corral.engine.auth import create_token
from corral.engine.monitor import MonitorSettings
from tests.engine.agents import AgentProc
from tests.engine.pg import PgCluster, pg_bin
from tests.require import unavailable


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster | None]:
    bindir = pg_bin()
    if bindir is None:
        yield None
        return
    cluster = PgCluster(bindir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    if cluster is None:
        unavailable("PostgreSQL is not installed (no initdb)")
    return str(cluster.new_database())


FAST = MonitorSettings(poll_interval=0.3, flush_interval=0.05, full_every=3, unreachable_after=2,
                       sync_interval=1.0)


class Api:
    """A TestClient with the admin token and helpers that fail loudly."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, status: int | None = None, **kwargs: object) -> object:
        resp = self.client.request(method, "/api/v1" + path, headers=self.headers, **kwargs)  # type: ignore[arg-type]
        if status is not None:
            assert resp.status_code == status, (resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def get(self, path: str, status: int = 200, **params: object) -> dict:  # type: ignore[type-arg]
        return self.call("GET", path, status, params=params)  # type: ignore[return-value]

    def post(self, path: str, body: object = None, status: int = 200) -> dict:  # type: ignore[type-arg]
        return self.call("POST", path, status, json=body)  # type: ignore[return-value]

    def wait_task(self, task: dict, timeout: float = 30.0) -> dict:  # type: ignore[type-arg]
        import time

        deadline = time.monotonic() + timeout
        while task["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, task
            time.sleep(0.05)
            task = self.get(f"/tasks/{task['id']}")
        return task


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    token = create_token(db_url)
    app = create_app(db_url, monitor=FAST)
    with TestClient(app) as client:
        yield Api(client, token)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[dict[str, AgentProc]]:
    """Two real agents on the test driver: a Xen dom0 (bridge xenbr0) and a KVM host (bridge br0)."""
    procs = {"xen-host": AgentProc("xen-host", "xen", ["xenbr0"], tmp_path / "xen"),
             "kvm-host": AgentProc("kvm-host", "kvm", ["br0"], tmp_path / "kvm")}
    try:
        for a in procs.values():
            a.start()
        yield procs
    finally:
        for a in procs.values():
            a.stop()
