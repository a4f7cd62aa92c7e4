"""Templates (issue 12) on SQLite and PostgreSQL, with two real agents on libvirt's test driver: a stopped VM
sealed as a template (its volume becomes a read-only base, its disk a thin clone of it), VMs cloned from the
template thin and full, made on the base's host at start; the template and its base are not deleted while a
clone reads it, by name; then deleted, on the host too."""

from __future__ import annotations

from typing import Any

from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_vm_images import volume_row
from tests.engine.test_vm_volumes import GIB, IMAGES, refused, started, vm_body, volumes_on
from tests.engine.test_with_agents import add_hosts


def done(api: Api, task: Any) -> dict[str, Any]:
    out = api.wait_task(task)
    assert out["state"] == "succeeded", out
    return out


def test_template_refusals(api: Api) -> None:
    api.post("/storage-domains", {"name": "local", "type": "dir", "path": IMAGES}, status=201)
    assert api.post("/templates", {"name": "t1", "vm": "nope"}, status=404)["field"] == "vm"
    assert api.post("/templates", {"name": "a/b", "vm": "x"}, status=422)["code"]
    path_vm = api.post("/vms", vm_body("p1", {"source": "/var/lib/libvirt/boot/p1.img"}), status=201)
    assert api.post("/templates", {"name": "t1", "vm": path_vm["name"]}, status=409)["field"] == "vm"
    never = api.post("/vms", vm_body("n1", {"size_bytes": GIB}), status=201)
    answer = api.post("/templates", {"name": "t1", "vm": never["id"]}, status=409)
    assert answer["field"] == "vm" and "start the VM once" in answer["message"], answer
    assert api.get("/templates")["items"] == []
    assert api.call("DELETE", "/templates/nope", 404)["field"] == "template"  # type: ignore[index]


def test_template_from_vm_and_clones(agents: dict[str, AgentProc], api: Api, db_url: str) -> None:
    add_hosts(api, agents)
    api.post("/storage-domains", {"name": "local", "type": "dir", "path": IMAGES}, status=201)
    src = api.post("/vms", {**vm_body("gold", {"size_bytes": GIB}, {"device": "cdrom"}), "vcpus": 2,
                            "nics": [{"source": "xenbr0"}], "description": "golden"}, status=201)
    host = started(api, src["id"], host="xen-host")["result"]["host"]
    # running: refused
    assert api.post("/templates", {"name": "t1", "vm": "gold"}, status=409)["field"] == "vm"
    done(api, api.post(f"/vms/{src['id']}/stop", {}, status=202))

    task = done(api, api.post("/templates", {"name": "t1", "vm": "gold", "description": "base image"},
                              status=202))
    t = task["result"]
    assert (t["name"], t["state"], t["source_vm"], t["description"], t["vcpus"]) == (
        "t1", "ready", "gold", "base image", 2)
    assert [(v["name"], v["host"]) for v in t["volumes"]] == [("gold-disk0", host)]
    assert "id" not in t["spec"] and "name" not in t["spec"] and "mac" not in t["spec"]["nics"][0]
    assert all("id" not in d for d in t["spec"]["disks"])
    assert t["spec"]["disks"][0]["volume"] == "gold-disk0"
    base = api.get("/volumes/gold-disk0")
    assert base["vm_id"] is None and volume_row(db_url, "gold-disk0")["template_id"] == t["id"]
    # the VM goes on as a clone of its template: it never writes the base again
    gold = api.get("/vms/gold")
    assert gold["spec"]["disks"][0]["volume"] == "gold-disk0-1"
    assert api.get("/volumes/gold-disk0-1")["backing_id"] == base["id"]
    assert t["clones"] == ["gold-disk0-1"] and t["vms"] == ["gold"]
    assert [x["name"] for x in api.get("/templates")["items"]] == ["t1"]
    assert api.get("/templates/t1")["id"] == t["id"]
    assert api.post("/templates", {"name": "t1", "vm": "gold"}, status=409)["field"] == "vm"  # pending volume

    # sealed: no VM attaches the base, and it is not deleted under the template
    refused(api, vm_body("x1", {"volume": "gold-disk0"}), 409, "disks.0.volume")
    assert api.call("DELETE", "/volumes/gold-disk0", 409)["field"] == "volume"  # type: ignore[index]

    # clones: thin (the default) and full, the body overriding the template's memory
    web1 = api.post("/vms", {"name": "web1", "template": "t1", "memory_mib": 256}, status=201)
    assert (web1["memory_mib"], web1["spec"]["vcpus"], web1["spec"]["description"]) == (256, 2, "golden")
    assert web1["spec"]["nics"][0]["mac"] != src["spec"]["nics"][0]["mac"]
    d0 = web1["spec"]["disks"][0]
    assert (d0["volume"], d0["format"], d0["clone"]) == ("web1-disk0", "qcow2", None)
    assert web1["spec"]["disks"][1]["device"] == "cdrom"
    web2 = api.post("/vms", {"name": "web2", "template": "t1", "clone": "full"}, status=201)
    assert volume_row(db_url, "web2-disk0")["clone_of_id"] == base["id"]

    for vm in (web1, web2):
        assert started(api, vm["id"])["result"]["host"] == host  # where the base lives
    made = volumes_on(agents[host], "local")
    assert made["web1-disk0"]["backing"] == base["path"] and made["web1-disk0"]["format"] == "qcow2"
    assert made["web2-disk0"]["backing"] is None

    refusal = api.call("DELETE", "/templates/t1", 409)
    assert isinstance(refusal, dict) and refusal["field"] == "template", refusal
    assert refusal["vms"] == ["gold", "web1"] and "web1" in refusal["message"]  # web2 is a full copy: made
    for vm in (web1, web2):
        done(api, api.post(f"/vms/{vm['id']}/stop", {}, status=202))
        api.call("DELETE", f"/vms/{vm['id']}", 204)
    api.call("DELETE", "/vms/gold", 204)
    assert api.get("/templates/t1")["clones"] == []
    base_delete = api.call("DELETE", "/volumes/gold-disk0", 409)  # no clone reads it now: still the template's
    assert isinstance(base_delete, dict) and base_delete["field"] == "volume" and "template" in base_delete["message"]
    done(api, api.call("DELETE", "/templates/t1", 202))
    assert api.get("/templates")["items"] == []
    assert api.get("/volumes")["items"] == []
    assert volumes_on(agents[host], "local") == {}
