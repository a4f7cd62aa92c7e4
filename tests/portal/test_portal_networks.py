"""The portal's networks page without a browser (issue 18): each network with VLAN, MTU, roles, bridge, which
hosts carry it and which VMs use it; the add form whose inputs name the API's fields; the add and delete going
through the portal's API pass-through (refusals by field). Engine with the two test-driver agents (xen-host has
bridge xenbr0, kvm-host br0), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from corral.engine.app import create_app
from corral.engine.portal import users
from corral.engine.portal.sessions import csrf_token
from tests.engine import conftest as engine_fixtures
from tests.engine.agents import AgentProc
from tests.portal.test_portal_app import PASSWORD, login

pg_cluster, db_url, agents = engine_fixtures.pg_cluster, engine_fixtures.db_url, engine_fixtures.agents


@pytest.fixture
def portal(db_url: str, agents: dict[str, AgentProc]) -> Iterator[tuple[TestClient, dict[str, str]]]:
    users.create_admin(db_url, "admin", PASSWORD)
    with TestClient(create_app(db_url, monitor=engine_fixtures.FAST), base_url="http://testserver") as c:
        h = {"X-CSRF-Token": csrf_token(login(c))}
        for name, a in agents.items():
            task = c.post("/portal/api/hosts", json={"name": name, "url": a.url, "token": a.token}, headers=h).json()
            while task["state"] in ("pending", "running"):
                task = c.get(f"/portal/api/tasks/{task['id']}").json()
            assert task["state"] == "succeeded", task
        yield c, h


def test_networks_page(portal: tuple[TestClient, dict[str, str]]) -> None:
    c, h = portal
    assert "No network yet" in c.get("/portal/networks").text
    r = c.post("/portal/api/networks", headers=h, json={"name": "data", "vlan": 42, "mtu": 9000,
                                                        "roles": ["vm", "storage"], "required": True})
    assert r.status_code == 201, r.text
    r = c.post("/portal/api/networks", headers=h, json={"name": "data"})
    assert r.status_code == 409 and r.json()["field"] == "name"
    r = c.post("/portal/api/vms", headers=h, json={"name": "web", "memory_mib": 64, "nics": [{"network": "data"}]})
    assert r.status_code == 201, r.text

    html = c.get("/portal/networks").text
    assert 'aria-current="page">Networks<' in html
    section = html[html.index('data-network="data"'):]
    for text in ("42", "9000", "vm, storage", "<code>cn-data</code>", "0 of 2 hosts", "VMs on it: web"):
        assert text in section, text
    for host in ("xen-host", "kvm-host"):
        row = re.search(rf'<tr data-network-host="{host}">(.*?)</tr>', section, re.S)
        assert row and "no</span> bridge <code>cn-data</code> missing" in row.group(1), host
    for path in ("name", "cluster", "vlan", "mtu", "roles", "required", "description"):
        assert f'data-path="{path}"' in html, path
    assert "/static/networks.js" in html and c.get("/portal/static/networks.js").status_code == 200

    # the host page's API answer names the missing required network
    host = c.get("/portal/api/hosts/kvm-host").json()
    assert host["networks"]["reason"] == "missing required network(s): data"

    r = c.delete("/portal/api/networks/data", headers=h)
    assert r.status_code == 409 and r.json()["field"] == "network" and r.json()["vms"] == ["web"]
    assert c.delete("/portal/api/vms/web", headers=h).status_code == 204
    assert c.delete("/portal/api/networks/data", headers=h).status_code == 204
    assert "No network yet" in c.get("/portal/networks").text
