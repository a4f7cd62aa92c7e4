"""``corral host list`` says which hosts are emulated (libvirt's test driver presenting a hypervisor): issue 20,
item 9 — an operator saw a score, not that the KVM host the VM went to was not a real one.

A real engine (uvicorn in a thread, SQLite) and the real command; the hosts are rows, not agents, since only
what the list shows matters here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from corral.cli import app
from corral.engine.api.clusters import default_cluster
from corral.engine.app import create_app
from corral.engine.auth import create_token
from corral.engine.db.models import Host
from corral.engine.db.session import Database
from tests.cli.support import free_port


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[str, str]]:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    token = create_token(url)
    db = Database(url)
    db.migrate()

    def seed(s: object) -> None:
        c = default_cluster(s)  # type: ignore[arg-type]
        for name, emulated in (("real-xen", False), ("test-kvm", True)):
            s.add(Host(id=name, name=name, cluster_id=c.id, agent_url=f"http://127.0.0.1:9/{name}",  # type: ignore[attr-defined]
                       state="maintenance", hypervisor="xen" if "xen" in name else "kvm", emulated=emulated,
                       cpu_flags=[], bridges=[], info={}))
    db.call(seed)
    db.dispose()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(url), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{base}/api/v1/hosts", headers={"Authorization": f"Bearer {token}"}, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield base, token
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_host_list_marks_emulated_hosts(engine: tuple[str, str]) -> None:
    url, token = engine
    result = CliRunner().invoke(app, ["host", "list"], env={"CORRAL_URL": url, "CORRAL_TOKEN": token})
    assert result.exit_code == 0, (result.stdout, result.exception)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "hypervisor" in line)
    column = [c.strip() for c in header.split("┃")].index("emulated")
    cells = {row[2]: row[column] for row in ([c.strip() for c in line.split("│")] for line in lines)
             if len(row) > column}
    assert cells == {"real-xen": "", "test-kvm": "yes"}, result.stdout
