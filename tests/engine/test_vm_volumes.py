"""VM disks that name volumes (issue 12): ``size_bytes`` and ``volume`` disks, on SQLite and PostgreSQL.

Refusals are checked without agents; the rest runs against two real agents on libvirt's test driver: a VM
created with a ``size_bytes`` disk records a pending volume; its start makes the volume on the chosen host and
defines the domain with the volume's path; a later start stays on that host (a local domain); hosts where the
domain is not active are refused with the reason; deleting the VM deletes the volume, unless it is kept.
"""

from __future__ import annotations

from typing import Any

import pytest

from corral.engine.db.models import StorageDomain, Volume
from corral.engine.db.session import Database
from corral.engine.ids import new_id
from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_with_agents import add_hosts

GIB = 1 << 30
IMAGES = "/var/lib/corral/images"


def vm_body(name: str, *disks: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "memory_mib": 128, "vcpus": 1, "disks": list(disks)}


def refused(api: Api, body: dict[str, Any], status: int, field: str, query: str = "") -> dict[str, Any]:
    answer = api.call("POST", "/vms" + query, status, json=body)
    assert isinstance(answer, dict) and answer["field"] == field, answer
    return answer


def started(api: Api, vm: str, **params: str) -> dict[str, Any]:
    task = api.wait_task(api.call("POST", f"/vms/{vm}/start", 202, params=params))  # type: ignore[arg-type]
    assert task["state"] == "succeeded", task
    return task


def volumes_on(agent: AgentProc, pool: str) -> dict[str, dict[str, Any]]:
    r = agent.call("GET", f"/v1/storage/pools/{pool}/volumes")
    assert r.status_code == 200, r.text
    return {v["name"]: v for v in r.json()["items"]}


@pytest.mark.parametrize(("disk", "status", "field"), [
    ({"size_bytes": 0}, 422, "disks.0.size_bytes"),
    ({"size_bytes": -1}, 422, "disks.0.size_bytes"),
    ({"source": "/srv/a.img", "size_bytes": GIB}, 422, "disks.0.size_bytes"),
    ({"volume": "v1", "size_bytes": GIB}, 422, "disks.0.size_bytes"),
    ({"source": "/srv/a.img", "volume": "v1"}, 422, "disks.0.volume"),
    ({"volume": "a/b"}, 422, "disks.0.volume"),
    ({"source": "/srv/a.img", "storage": "local"}, 422, "disks.0.storage"),
    ({"device": "cdrom", "size_bytes": GIB}, 422, "disks.0.size_bytes"),
    ({}, 422, "disks.0.source"),
    ({"size_bytes": GIB, "storage": "nope"}, 404, "disks.0.storage"),
    ({"size_bytes": GIB}, 422, "disks.0.storage"),  # two domains in the cluster: name one
    ({"size_bytes": GIB, "storage": "lvm", "format": "qcow2"}, 422, "disks.0.format"),
    ({"volume": "nope"}, 404, "disks.0.volume"),
    ({"volume": "base", "storage": "lvm"}, 404, "disks.0.volume"),
    ({"volume": "base", "format": "raw"}, 422, "disks.0.format"),  # it is qcow2
])
def test_bad_disks_refused_by_field(api: Api, db_url: str, disk: dict[str, Any], status: int, field: str) -> None:
    api.post("/storage-domains", {"name": "local", "type": "dir", "path": IMAGES}, status=201)
    api.post("/storage-domains", {"name": "lvm", "type": "logical", "source": {"vg": "vg0"}}, status=201)
    db = Database(db_url)
    try:
        def base(s: Any) -> None:
            d = s.query(StorageDomain).filter_by(name="local").one()
            s.add(Volume(id=new_id(), name="base", domain_id=d.id, format="qcow2", capacity_bytes=GIB,
                         path=f"{IMAGES}/base", state="ready"))
        db.call(base)
    finally:
        db.dispose()
    refused(api, vm_body("web1", disk), status, field)
    assert api.get("/vms")["items"] == []
    assert [v["name"] for v in api.get("/volumes")["items"]] == ["base"]


def test_create_records_pending_volumes_and_refuses_taken_ones(api: Api) -> None:
    refused(api, vm_body("web1", {"size_bytes": GIB}), 409, "disks.0.storage")  # the cluster has no domain
    api.post("/storage-domains", {"name": "local", "type": "dir", "path": IMAGES}, status=201)
    vm = api.post("/vms", vm_body("web1", {"size_bytes": GIB}, {"size_bytes": 2 * GIB, "format": "raw"},
                                  {"source": "/srv/extra.img"}), status=201)
    d0, d1, d2 = vm["spec"]["disks"]
    assert (d0["volume"], d0["storage"], d0["format"], d0["size_bytes"], d0["source"]) == (
        "web1-disk0", "local", "qcow2", None, None)
    assert (d1["volume"], d1["format"]) == ("web1-disk1", "raw")
    assert (d2["source"], d2["volume"]) == ("/srv/extra.img", None)
    vols = {v["name"]: v for v in api.get("/volumes", vm=vm["id"])["items"]}
    assert set(vols) == {"web1-disk0", "web1-disk1"}
    v0 = vols["web1-disk0"]
    assert (v0["state"], v0["host_id"], v0["path"], v0["vm"], v0["capacity_bytes"], v0["format"]) == (
        "pending", None, None, "web1", GIB, "qcow2")
    assert vols["web1-disk1"]["capacity_bytes"] == 2 * GIB

    # another VM cannot take a volume of web1, by name
    taken = refused(api, vm_body("db1", {"volume": "web1-disk0"}), 409, "disks.0.volume")
    assert taken["vms"] == ["web1"]
    refused(api, vm_body("db1", {"volume": "web1-disk0"}, {"volume": "web1-disk0"}), 409, "disks.0.volume")
    # nor can the volume be deleted under it
    assert api.call("DELETE", "/volumes/web1-disk0", 409)["vms"] == ["web1"]  # type: ignore[index]

    # a PUT that adds a size_bytes disk records one more; the stored references stay
    spec = vm["spec"]
    spec["disks"].append({"size_bytes": GIB})
    put = api.call("PUT", f"/vms/{vm['id']}", 200, json=spec)
    assert [d["volume"] for d in put["spec"]["disks"]] == ["web1-disk0", "web1-disk1", None, "web1-disk3"]  # type: ignore[index]
    assert len(api.get("/volumes", vm=vm["id"])["items"]) == 3

    # deleted before it ever ran: its pending volumes go (they exist on no host)
    api.call("DELETE", f"/vms/{vm['id']}", 204, params={"keep_volumes": "true"})
    assert api.get("/volumes")["items"] == []


def test_size_disk_made_on_the_chosen_host_and_kept_there(agents: dict[str, AgentProc], api: Api) -> None:
    hosts = add_hosts(api, agents)
    api.post("/storage-domains", {"name": "local", "type": "dir", "path": IMAGES}, status=201)
    vm = api.post("/vms", vm_body("web1", {"size_bytes": GIB}), status=201)

    task = started(api, vm["id"], host="xen-host")
    assert task["result"]["host"] == "xen-host"
    vol = api.get("/volumes/web1-disk0")
    path = f"{IMAGES}/web1-disk0"
    assert (vol["state"], vol["host"], vol["host_id"], vol["path"], vol["format"], vol["vm"]) == (
        "ready", "xen-host", hosts["xen-host"]["id"], path, "qcow2", "web1")
    made = volumes_on(agents["xen-host"], "local")
    assert made["web1-disk0"]["format"] == "qcow2" and made["web1-disk0"]["capacity_bytes"] == GIB
    assert volumes_on(agents["kvm-host"], "local") == {}
    # the host defined the domain with the volume's path (read back from its live XML); the engine keeps the
    # reference
    live = api.get(f"/vms/{vm['id']}")
    assert live["state"] == "up" and live["host"]["name"] == "xen-host"
    disks = [(d["id"], d["source"], d["format"]) for d in live["devices"] if d["kind"] == "disk"]
    assert disks == [(vm["spec"]["disks"][0]["id"], path, "qcow2")], live["devices"]
    disk = live["spec"]["disks"][0]
    assert (disk["volume"], disk["storage"], disk["source"]) == ("web1-disk0", "local", None)

    # stopped and started again without a host: the volume lives on xen-host, so the VM does too
    assert api.wait_task(api.post(f"/vms/{vm['id']}/stop", {}, status=202))["state"] == "succeeded"
    task = started(api, vm["id"])
    assert task["result"]["host"] == "xen-host"
    rejected = {r["host"]: r["reasons"] for r in task["result"]["placement"]["rejected"]}
    assert rejected["kvm-host"] == ["volume web1-disk0 lives on host xen-host"], rejected
    # asked for the other host: refused with that reason
    assert api.wait_task(api.post(f"/vms/{vm['id']}/stop", {}, status=202))["state"] == "succeeded"
    task = api.wait_task(api.call("POST", f"/vms/{vm['id']}/start", 202,  # type: ignore[arg-type]
                                  params={"host": "kvm-host"}))
    assert task["state"] == "failed" and task["error"]["code"] == "no_host", task
    assert "volume web1-disk0 lives on host xen-host" in task["error"]["message"]
    assert api.get(f"/vms/{vm['id']}")["state"] == "down"

    # deleting the VM deletes its volume, on its host too
    api.call("DELETE", f"/vms/{vm['id']}", 204)
    assert api.get("/volumes")["items"] == []
    assert volumes_on(agents["xen-host"], "local") == {}

    # kept: the volume stays, released, and can be attached to another VM, which then runs where it is
    vm2 = api.post("/vms", vm_body("web2", {"size_bytes": GIB, "format": "raw"}), status=201)
    host2 = started(api, vm2["id"])["result"]["host"]
    assert api.wait_task(api.post(f"/vms/{vm2['id']}/stop", {}, status=202))["state"] == "succeeded"
    api.call("DELETE", f"/vms/{vm2['id']}", 204, params={"keep_volumes": "true"})
    kept = api.get("/volumes/web2-disk0")
    assert (kept["state"], kept["vm_id"], kept["host"], kept["format"]) == ("ready", None, host2, "raw")
    assert "web2-disk0" in volumes_on(agents[host2], "local")
    vm3 = api.post("/vms", vm_body("web3", {"volume": "web2-disk0"}), status=201)
    assert (vm3["spec"]["disks"][0]["volume"], vm3["spec"]["disks"][0]["format"]) == ("web2-disk0", "raw")
    assert started(api, vm3["id"])["result"]["host"] == host2
    assert api.wait_task(api.post(f"/vms/{vm3['id']}/stop", {}, status=202))["state"] == "succeeded"
    api.call("DELETE", f"/vms/{vm3['id']}", 204)  # not its own volume: it stays
    assert api.get("/volumes/web2-disk0")["state"] == "ready"


def test_placement_refuses_hosts_without_the_domain(agents: dict[str, AgentProc], api: Api) -> None:
    """A pool named like the domain but defined otherwise on kvm-host: the domain is in error there, so a VM
    with a volume in it goes to xen-host, and kvm-host's rejection says why."""
    add_hosts(api, agents)
    r = agents["kvm-host"].call("PUT", "/v1/storage/pools/images", json={"type": "dir", "path": "/srv/other"})
    assert r.status_code == 200, r.text
    api.post("/storage-domains", {"name": "images", "type": "dir", "path": "/srv/images"}, status=201)
    vm = api.post("/vms", vm_body("web1", {"size_bytes": GIB, "storage": "images"}), status=201)

    task = api.wait_task(api.call("POST", f"/vms/{vm['id']}/start", 202,  # type: ignore[arg-type]
                                  params={"host": "kvm-host"}))
    assert task["state"] == "failed" and task["error"]["code"] == "no_host", task
    reasons = {r["host"]: r["reasons"] for r in task["error"]["rejections"]}
    assert len(reasons["kvm-host"]) == 1, reasons
    assert reasons["kvm-host"][0].startswith("storage domain images not active here (error: ")
    assert "/srv/other" in reasons["kvm-host"][0]
    assert api.get("/volumes/web1-disk0")["state"] == "pending"  # nothing was made
    assert volumes_on(agents["kvm-host"], "images") == {}

    task = started(api, vm["id"])
    assert task["result"]["host"] == "xen-host"
    rejected = {r["host"]: r["reasons"] for r in task["result"]["placement"]["rejected"]}
    assert rejected["kvm-host"][0].startswith("storage domain images not active here"), rejected
    assert api.get("/volumes/web1-disk0")["host"] == "xen-host"
    assert "web1-disk0" in volumes_on(agents["xen-host"], "images")
