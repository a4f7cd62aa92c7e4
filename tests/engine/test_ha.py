"""HA restart with fencing (issue 13), on SQLite and PostgreSQL, with real test-driver agents as processes.

Host A "stops answering" by being frozen (SIGSTOP): its agent is alive but silent, as a hung server is. The lab
fence agent (labs/fence/fence_corral_lab) really kills it by its pidfile; only then does the HA VM start on B.
With a fence agent that fails nothing is restarted until the operator confirms the host was rebooted."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.engine.app import create_app
from corral.engine.auth import create_token
from corral.engine.ha import HaSettings
from corral.engine.monitor import MonitorSettings
from corral.engine.portal import users
from tests.engine.agents import REPO, AgentProc
from tests.engine.conftest import Api
from tests.engine.test_with_agents import add_hosts, eventually
from tests.portal.test_portal_app import PASSWORD, login

LAB_FENCE = REPO / "labs" / "fence"
# short cycles; a poll of a frozen agent times out after 1 s; 3 missed polls make a host unreachable
HA_MONITOR = MonitorSettings(poll_interval=0.3, flush_interval=0.05, full_every=3, unreachable_after=3,
                             sync_interval=1.0, poll_deadline=1.0)


@pytest.fixture
def ha_api(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("CORRAL_FENCE_PATH", str(LAB_FENCE))
    token = create_token(db_url)
    app = create_app(db_url, monitor=HA_MONITOR, ha=HaSettings(status_delay=0.1))
    with TestClient(app) as client:
        yield Api(client, token)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, AgentProc]]:
    procs = {"host-a": AgentProc("host-a", "kvm", ["br0"], tmp_path / "a"),
             "host-b": AgentProc("host-b", "kvm", ["br0"], tmp_path / "b")}
    try:
        for a in procs.values():
            a.start()
        yield procs
    finally:
        for a in procs.values():
            if a.proc is not None and a.proc.poll() is None:
                os.kill(a.proc.pid, signal.SIGCONT)
            a.kill()


def put(api: Api, path: str, body: object, status: int = 200) -> dict[str, Any]:
    return api.call("PUT", path, status, json=body)  # type: ignore[return-value]


def setup_vms(api: Api, pair: dict[str, AgentProc]) -> dict[str, dict[str, Any]]:
    add_hosts(api, pair)
    vms = {"web": api.post("/vms", {"name": "web", "memory_mib": 64, "ha": True, "ha_priority": 70}, status=201),
           "batch": api.post("/vms", {"name": "batch", "memory_mib": 64}, status=201)}
    assert vms["web"]["ha"] is True and vms["web"]["ha_priority"] == 70 and vms["batch"]["ha"] is False
    for vm in vms.values():
        task = api.wait_task(api.post(f"/vms/{vm['id']}/start", {"host": "host-a"}, status=202))
        assert task["state"] == "succeeded", task
    return vms


def lab_fencing(api: Api, agent: AgentProc, tmp_path: Path) -> None:
    """host-a's power management: the lab agent, which kills that agent's process (its pidfile)."""
    assert agent.proc is not None
    pidfile = tmp_path / "host-a.pid"
    pidfile.write_text(f"{agent.proc.pid}\n")
    put(api, "/hosts/host-a/fencing", {"agent": "fence_corral_lab",
                                       "options": {"pidfile": str(pidfile), "match": "corral"}, "timeout": 30})


def freeze(agent: AgentProc) -> None:
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGSTOP)


def event_types(api: Api, object_id: str) -> list[str]:
    return [e["type"] for e in api.get("/events", object_id=object_id, limit=500)["items"]]


def test_fenced_host_ha_vm_restarts_elsewhere(ha_api: Api, pair: dict[str, AgentProc], tmp_path: Path) -> None:
    api = ha_api
    vms = setup_vms(api, pair)
    lab_fencing(api, pair["host-a"], tmp_path)
    test = api.post("/hosts/host-a/fence-test")
    assert test["power"] == "on" and test["exit"] == 0, test
    freeze(pair["host-a"])

    host = eventually(lambda: (h := api.get("/hosts/host-a"))["fence_state"] == "fenced" and h, timeout=60)
    assert host["state"] == "unreachable"
    proc = pair["host-a"].proc
    assert proc is not None and proc.wait(timeout=10) == -signal.SIGKILL  # the fence agent really killed it
    web = eventually(lambda: (v := api.get(f"/vms/{vms['web']['id']}"))["state"] == "up" and v, timeout=60)
    assert web["host"]["name"] == "host-b"
    batch = api.get(f"/vms/{vms['batch']['id']}")
    assert batch["state"] == "down" and batch["host_id"] is None and "host-a was fenced" in batch["state_reason"]
    assert pair["host-b"].call("GET", f"/v1/vms/{vms['batch']['id']}").status_code == 404
    steps = event_types(api, host["id"])
    assert steps.index("host_unreachable") < steps.index("host_fencing") < steps.index("host_fenced")
    assert "vm_ha_restart" in event_types(api, vms["web"]["id"])
    assert "vm_ha_restart" not in event_types(api, vms["batch"]["id"])
    fenced = api.get("/events", object_id=host["id"], type="host_fenced")["items"][0]
    assert [r["action"] for r in fenced["detail"]["runs"]][:2] == ["off", "status"]
    assert fenced["detail"]["runs"][-1]["exit"] == 2
    assert api.get(f"/vms/{vms['web']['id']}")["state"] == "up"  # its debt is paid: not started again


def test_failed_fence_restarts_nothing_until_confirmed(ha_api: Api, pair: dict[str, AgentProc], db_url: str) -> None:
    api = ha_api
    vms = setup_vms(api, pair)
    put(api, "/hosts/host-a/fencing", {"agent": "fence_corral_fail", "options": {"ip": "10.0.0.9"}})
    freeze(pair["host-a"])

    host = eventually(lambda: (h := api.get("/hosts/host-a"))["fence_state"] == "fence_failed" and h, timeout=60)
    assert "always fails" in host["fence_reason"] and "confirm" in host["fence_reason"]
    for name in ("web", "batch"):
        vm = api.get(f"/vms/{vms[name]['id']}")
        assert vm["state"] == "unknown" and vm["host_id"] == host["id"], vm
    assert pair["host-b"].call("GET", f"/v1/vms/{vms['web']['id']}").status_code == 404
    assert "vm_ha_restart" not in event_types(api, vms["web"]["id"])
    assert api.get("/events", object_id=host["id"], type="host_fence_failed")["items"][0]["severity"] == "error"
    web_starts = [t for t in api.get("/tasks", limit=500)["items"] if t["object_id"] == vms["web"]["id"]]
    assert len(web_starts) == 1  # the first start only
    users.create_admin(db_url, "admin", PASSWORD)  # the portal's host page shows the fencing state
    login(api.client)
    page = api.client.get(f"/portal/hosts/{host['id']}").text
    fence = page[page.index(f'data-host-fence="{host["id"]}"'):]
    assert fence.index("fence_failed") < fence.index("</dd>") and "always fails" in fence[:fence.index("</dd>")]

    # the operator checked the machine: the host's VMs are released, the HA one starts on B
    pair["host-a"].kill()  # (it is really off now)
    shown = api.post("/hosts/host-a/confirm-rebooted")
    assert shown["state"] == "confirmed"
    web = eventually(lambda: (v := api.get(f"/vms/{vms['web']['id']}"))["state"] == "up" and v, timeout=60)
    assert web["host"]["name"] == "host-b"
    batch = api.get(f"/vms/{vms['batch']['id']}")
    assert batch["state"] == "down" and "confirmed rebooted" in batch["state_reason"]
    assert "host_confirmed_rebooted" in event_types(api, host["id"])


def test_no_power_management_is_a_failed_fence(ha_api: Api, pair: dict[str, AgentProc]) -> None:
    api = ha_api
    vms = setup_vms(api, pair)
    assert api.call("POST", "/hosts/host-a/confirm-rebooted", 409)["state"] == "up"  # type: ignore[index]
    freeze(pair["host-a"])
    host = eventually(lambda: (h := api.get("/hosts/host-a"))["fence_state"] == "fence_failed" and h, timeout=60)
    assert host["fence_reason"].startswith("no power management configured")
    assert api.get(f"/vms/{vms['web']['id']}")["state"] == "unknown"


def test_fencing_settings_redacted_and_checked(ha_api: Api, pair: dict[str, AgentProc], tmp_path: Path) -> None:
    api = ha_api
    add_hosts(api, {"host-a": pair["host-a"]})
    body = {"agent": "fence_corral_lab", "options": {"pidfile": str(tmp_path / "x.pid"), "username": "root",
                                                       "password": "s3cret"}}
    shown = put(api, "/hosts/host-a/fencing", body)
    assert shown["config"]["options"]["password"] is None and shown["config"]["secrets_set"] == ["password"]
    assert "s3cret" not in str(api.get("/hosts/host-a/fencing")) and "s3cret" not in str(api.get("/events"))
    # the password sent back as null is kept; any other null drops its option
    put(api, "/hosts/host-a/fencing", {**body, "options": {"password": None, "username": None, "pidfile": "/p"}})
    client = api.client
    from corral.engine.db.session import Database  # the stored value, which no answer shows
    db = Database(str(client.app.state.db.url))  # type: ignore[attr-defined]
    try:
        from corral.engine.db.models import Host
        stored = db.read(lambda s: s.query(Host).filter_by(name="host-a").one().fence)
    finally:
        db.dispose()
    assert stored["options"] == {"password": "s3cret", "pidfile": "/p"}

    for bad, field in (({"agent": "fence_nonexistent_xyz"}, "agent"), ({"agent": "/bin/sh"}, "agent"),
                       ({"agent": "fence_corral_lab", "options": {"action": "on"}}, "options"),
                       ({"agent": "fence_corral_lab", "options": {"ip": "a\nb"}}, "options"),
                       ({"agent": "fence_corral_lab", "timeout": 0}, "timeout")):
        err = put(api, "/hosts/host-a/fencing", bad, status=422)
        assert field in (err.get("field") or ""), (bad, err)
    # status of a pidfile that names no process: off (exit 2), nothing was powered off
    (tmp_path / "gone.pid").write_text("999999999\n")
    put(api, "/hosts/host-a/fencing", {"agent": str(LAB_FENCE / "fence_corral_lab"),
                                       "options": {"pidfile": str(tmp_path / "gone.pid")}})
    test = api.post("/hosts/host-a/fence-test")
    assert test["power"] == "off" and test["exit"] == 2 and test["ok"] is True
    put(api, "/hosts/host-a/fencing", {"agent": None})
    assert api.get("/hosts/host-a/fencing")["config"] is None
    assert api.call("POST", "/hosts/host-a/fence-test", 409)["field"] == "agent"  # type: ignore[index]


def test_vm_ha_flag(ha_api: Api) -> None:
    api = ha_api
    vm = api.post("/vms", {"name": "db", "memory_mib": 64}, status=201)
    assert vm["ha"] is False and vm["ha_priority"] == 0
    assert put(api, f"/vms/{vm['id']}/ha", {"ha": True, "priority": 90}) == {
        "id": vm["id"], "name": "db", "ha": True, "ha_priority": 90}
    assert api.get("/vms", name="db")["items"][0]["ha"] is True
    assert put(api, "/vms/db/ha", {"ha": False})["ha_priority"] == 90
    assert put(api, "/vms/db/ha", {"ha": True, "priority": 101}, status=422)
    assert api.post("/vms", {"name": "x", "memory_mib": 64, "ha_priority": 500}, status=422)["field"] == \
        "ha_priority"
    assert api.post("/vms", {"name": "x", "memory_mib": 64, "ha": "yes"}, status=422)["field"] == "ha"
    spec = api.get("/vms/db")["spec"]
    updated = put(api, "/vms/db", {**spec, "ha": True, "ha_priority": 5})
    assert updated["ha"] is True and updated["ha_priority"] == 5 and "ha" not in updated["spec"]
