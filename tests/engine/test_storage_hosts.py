"""A storage domain as each host has it (issue 12: "a domain that a host cannot mount makes that host
non-operational for VMs that need it, with the reason"), and an nfs domain's port, NFS version and mount options;
on SQLite and PostgreSQL against two real agents on libvirt's test driver.

The host shows it (``GET /hosts/{id}``: ``storage``, one entry per domain of its cluster with state and reason);
when monitoring finds a domain no longer active on a host, one ``storage_unreachable`` event with the agent's
reason is recorded (not one per poll), and ``storage_reachable`` when it is active again. Placement turning such a
host away is tested in tests/engine/test_vm_volumes.py.
"""

from __future__ import annotations

from typing import Any

from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_storage import _pools, refused
from tests.engine.test_with_agents import add_hosts, eventually


def _storage(api: Api, host: str) -> dict[str, dict[str, Any]]:
    return {d["domain"]: d for d in api.get(f"/hosts/{host}")["storage"]}


def _events(api: Api, kind: str, host_id: str) -> list[dict[str, Any]]:
    return list(api.get("/events", type=kind, object_type="host", object_id=host_id)["items"])


def test_host_shows_a_domain_it_lost_with_the_reason_and_one_event(agents: dict[str, AgentProc], api: Api) -> None:
    hosts = add_hosts(api, agents)
    kvm = agents["kvm-host"]
    api.post("/storage-domains", {"name": "images", "type": "dir", "path": "/srv/images"}, status=201)
    shown = _storage(api, "kvm-host")["images"]
    assert (shown["state"], shown["reason"], shown["type"], shown["shared"]) == ("active", "", "dir", False)
    assert shown["capacity_bytes"] and shown["free_bytes"]

    # behind the engine's back the pool becomes another one on kvm-host: monitoring's put is refused (409)
    assert kvm.call("DELETE", "/v1/storage/pools/images").status_code == 204
    assert kvm.call("PUT", "/v1/storage/pools/images", json={"type": "dir", "path": "/srv/other"}).status_code == 200
    eventually(lambda: _storage(api, "kvm-host")["images"]["state"] == "error")
    shown = _storage(api, "kvm-host")["images"]
    assert "/srv/other" in shown["reason"] and "conflict" in shown["reason"], shown
    assert _storage(api, "xen-host")["images"]["state"] == "active"

    # recorded once with the reason, however many polls see it since: later polls record the new reason of a
    # pool redefined again (so they ran), not another event
    lost = eventually(lambda: _events(api, "storage_unreachable", hosts["kvm-host"]["id"]))
    assert kvm.call("DELETE", "/v1/storage/pools/images").status_code == 204
    assert kvm.call("PUT", "/v1/storage/pools/images", json={"type": "dir", "path": "/srv/third"}).status_code == 200
    eventually(lambda: "/srv/third" in _storage(api, "kvm-host")["images"]["reason"])
    assert len(api.get("/events", type="storage_unreachable")["items"]) == 1
    assert lost[0]["severity"] == "warning" and "/srv/other" in lost[0]["message"]
    assert lost[0]["detail"]["domain"] == "images" and lost[0]["detail"]["state"] == "error"
    assert _events(api, "storage_unreachable", hosts["xen-host"]["id"]) == []

    # the pool given back: monitoring puts the domain again, active, and says so once
    assert kvm.call("DELETE", "/v1/storage/pools/images").status_code == 204
    eventually(lambda: _storage(api, "kvm-host")["images"]["state"] == "active")
    back = eventually(lambda: _events(api, "storage_reachable", hosts["kvm-host"]["id"]))
    assert len(back) == 1 and back[0]["detail"]["domain"] == "images"

    # a host in maintenance shows its domains inactive, with why
    api.post("/hosts/kvm-host/maintenance", status=200)
    shown = _storage(api, "kvm-host")["images"]
    assert (shown["state"], shown["reason"]) == ("inactive", "host is maintenance")


def test_nfs_domain_port_version_and_mount_options(agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, agents)
    base = {"name": "shared", "type": "nfs", "path": "/mnt/shared"}
    source = {"host": "10.0.2.2", "dir": "/export"}
    assert refused(api, "POST", "/storage-domains", {**base, "source": {**source, "port": 0}},
                   422)["field"] == "source.port"
    assert refused(api, "POST", "/storage-domains", {**base, "source": {**source, "nfs_version": 2}},
                   422)["field"] == "source.nfs_version"
    assert refused(api, "POST", "/storage-domains", {**base, "source": {**source, "mount_options": ["ro,exec"]}},
                   422)["field"] == "source.mount_options.0"
    assert refused(api, "POST", "/storage-domains", {"name": "d", "type": "dir", "path": "/srv/d",
                                                     "source": {"port": 2049}}, 422)["field"] == "source"
    assert refused(api, "POST", "/storage-domains", {"name": "lv", "type": "logical",
                                                     "source": {"vg": "vg0", "nfs_version": 4}},
                   422)["field"] == "source.nfs_version"
    assert api.get("/storage-domains")["items"] == []

    d = api.post("/storage-domains", {**base, "source": {**source, "port": 20490, "nfs_version": 4,
                                                         "mount_options": ["soft"]}}, status=201)
    assert d["source"] == {**source, "port": 20490, "nfs_version": 4, "mount_options": ["soft"]}
    assert {h["host"]: h["state"] for h in d["hosts"]} == {"kvm-host": "active", "xen-host": "active"}
    for agent in agents.values():  # the test driver keeps the port and the version (not the fs namespace)
        assert _pools(agent)["shared"]["source"] == {**source, "format": "nfs", "port": 20490,
                                                      "protocol_version": 4}
    assert _storage(api, "xen-host")["shared"]["shared"] is True
