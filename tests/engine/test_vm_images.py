"""VM disks made from images, ISOs as CD-ROM media, on SQLite and PostgreSQL (issue 12, images slice).

Refusals are checked without agents (the images are rows: the test driver cannot upload); the rest runs against
two real agents on libvirt's test driver, whose pools hold real volume definitions: an image's volume made on
one host and recorded as an image, a VM with ``image=`` gets a pending thin clone that its start makes on that
host only (qcow2, backing the image, grown), a full copy on request; an image cannot be deleted while a clone
reads it, by name.
"""

from __future__ import annotations

from typing import Any

import pytest

from corral.engine.db.models import Image, StorageDomain, Volume
from corral.engine.db.session import Database
from corral.engine.ids import new_id
from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_vm_volumes import GIB, IMAGES, refused, started, vm_body, volumes_on
from tests.engine.test_with_agents import add_hosts


def add_image(db_url: str, name: str, kind: str = "image", fmt: str = "qcow2", capacity: int = 2 * GIB,
              domain: str = "local", host_id: str | None = None, path: str | None = None) -> str:
    """An image as an upload records it: a ready volume and its images row."""
    db = Database(db_url)
    vid = new_id()
    try:
        def add(s: Any) -> None:
            d = s.query(StorageDomain).filter_by(name=domain).one()
            s.add(Volume(id=vid, name=name, domain_id=d.id, host_id=host_id, format=fmt, capacity_bytes=capacity,
                         path=path or f"{IMAGES}/{name}", state="ready"))
            s.flush()
            s.add(Image(volume_id=vid, kind=kind, sha256="0" * 64, size_bytes=capacity))
        db.call(add)
    finally:
        db.dispose()
    return vid


def volume_row(db_url: str, name: str) -> dict[str, Any]:
    db = Database(db_url)
    try:
        def read(s: Any) -> dict[str, Any]:
            v = s.query(Volume).filter_by(name=name).one()
            return {"backing_id": v.backing_id, "clone_of_id": v.clone_of_id, "template_id": v.template_id}
        return db.call(read)  # type: ignore[no-any-return]
    finally:
        db.dispose()


@pytest.fixture
def library(api: Api, db_url: str) -> dict[str, str]:
    api.post("/storage-domains", {"name": "local", "type": "dir", "path": IMAGES}, status=201)
    api.post("/storage-domains", {"name": "lvm", "type": "logical", "source": {"vg": "vg0"}}, status=201)
    return {"cloud": add_image(db_url, "cloud.qcow2"), "rawimg": add_image(db_url, "raw.img", fmt="raw"),
            "debian.iso": add_image(db_url, "debian.iso", kind="iso", fmt="raw", capacity=GIB // 2)}


@pytest.mark.parametrize(("disk", "status", "field"), [
    ({"image": "nope"}, 404, "disks.0.image"),
    ({"image": "debian.iso"}, 422, "disks.0.image"),  # an ISO is never a writable disk
    ({"device": "cdrom", "image": "cloud.qcow2"}, 422, "disks.0.image"),  # a disk image is never media
    ({"volume": "debian.iso"}, 422, "disks.0.volume"),
    ({"device": "cdrom", "volume": "cloud.qcow2"}, 422, "disks.0.volume"),
    ({"image": "cloud.qcow2", "size_bytes": GIB}, 422, "disks.0.size_bytes"),  # below its virtual size
    ({"image": "cloud.qcow2", "source": "/srv/a.img"}, 422, "disks.0.image"),
    ({"image": "cloud.qcow2", "volume": "raw.img"}, 422, "disks.0.image"),
    ({"image": "cloud.qcow2", "storage": "nope"}, 404, "disks.0.storage"),
    ({"image": "cloud.qcow2", "storage": "lvm", "format": "qcow2"}, 422, "disks.0.format"),
    ({"image": "cloud.qcow2", "clone": "half"}, 422, "disks.0.clone"),
    ({"size_bytes": GIB, "storage": "local", "clone": "full"}, 422, "disks.0.clone"),
    ({"volume": "raw.img", "clone": "thin"}, 422, "disks.0.clone"),  # only images and template volumes
    ({"device": "cdrom", "image": "debian.iso", "clone": "full"}, 422, "disks.0.clone"),
])
def test_image_and_iso_disks_refused_by_field(api: Api, library: dict[str, str], disk: dict[str, Any],
                                              status: int, field: str) -> None:
    refused(api, vm_body("web1", disk), status, field)
    assert api.get("/vms")["items"] == []
    assert len(api.get("/volumes")["items"]) == 3


def test_template_and_clone_in_the_create_body_refused_by_field(api: Api) -> None:
    refused(api, {**vm_body("web1"), "template": "nope"}, 404, "template")
    refused(api, {**vm_body("web1"), "clone": "full"}, 422, "clone")
    refused(api, {**vm_body("web1"), "template": "nope", "clone": "half"}, 422, "clone")


def test_image_disks_record_pending_clones_and_isos_are_shared(api: Api, db_url: str,
                                                             library: dict[str, str]) -> None:
    vm = api.post("/vms", vm_body("web1", {"image": "cloud.qcow2", "size_bytes": 20 * GIB},
                                  {"image": "raw.img", "clone": "full"},
                                  {"image": "cloud.qcow2", "storage": "lvm"},
                                  {"device": "cdrom", "image": "debian.iso"}), status=201)
    d0, d1, d2, d3 = vm["spec"]["disks"]
    assert (d0["volume"], d0["storage"], d0["format"], d0["image"], d0["size_bytes"], d0["clone"]) == (
        "web1-disk0", "local", "qcow2", None, None, None)
    assert (d1["volume"], d1["format"]) == ("web1-disk1", "raw")  # a full copy keeps the image's format
    assert (d2["volume"], d2["storage"], d2["format"]) == ("web1-disk2", "lvm", "raw")  # LVM: a raw copy
    assert (d3["device"], d3["volume"], d3["storage"], d3["readonly"]) == ("cdrom", "debian.iso", "local", True)
    vols = {v["name"]: v for v in api.get("/volumes", vm=vm["id"])["items"]}
    assert set(vols) == {"web1-disk0", "web1-disk1", "web1-disk2"}
    assert (vols["web1-disk0"]["state"], vols["web1-disk0"]["capacity_bytes"]) == ("pending", 20 * GIB)
    assert vols["web1-disk0"]["backing_id"] == library["cloud"]
    assert volume_row(db_url, "web1-disk1") == {"backing_id": None, "clone_of_id": library["rawimg"],
                                                "template_id": None}
    assert volume_row(db_url, "web1-disk2")["clone_of_id"] == library["cloud"]
    assert vols["web1-disk2"]["capacity_bytes"] == 2 * GIB  # the image's virtual size

    # the ISO is media for any number of VMs; an image read by clones is attached by no VM writable
    vm2 = api.post("/vms", vm_body("web2", {"device": "cdrom", "volume": "debian.iso"}), status=201)
    assert vm2["spec"]["disks"][0]["volume"] == "debian.iso"
    taken = refused(api, vm_body("db1", {"volume": "cloud.qcow2"}), 409, "disks.0.volume")
    assert taken["volumes"] == ["web1-disk0", "web1-disk2"]

    # no image is deleted while a clone reads it or a VM has it as media: refused by name
    gone = api.call("DELETE", "/images/cloud.qcow2", 409)
    assert isinstance(gone, dict) and gone["field"] == "volume" and "web1-disk0" in gone["message"], gone
    db1 = api.post("/vms", vm_body("db1", {"volume": "cloud.qcow2", "readonly": True}), status=201)
    api.call("DELETE", f"/vms/{db1['id']}", 204)
    gone = api.call("DELETE", "/images/debian.iso", 409)
    assert isinstance(gone, dict) and set(gone["vms"]) == {"web1", "web2"}, gone

    # a PUT keeps the clones (the VM's own volumes) and may add one
    spec = vm["spec"]
    spec["disks"].append({"image": "cloud.qcow2"})
    put = api.call("PUT", f"/vms/{vm['id']}", 200, json=spec)
    assert [d["volume"] for d in put["spec"]["disks"]] == [  # type: ignore[index]
        "web1-disk0", "web1-disk1", "web1-disk2", "debian.iso", "web1-disk4"]
    api.call("DELETE", f"/vms/{vm['id']}", 204)
    api.call("DELETE", f"/vms/{vm2['id']}", 204)
    assert {v["name"] for v in api.get("/volumes")["items"]} == {"cloud.qcow2", "raw.img", "debian.iso"}
    assert api.wait_task(api.call("DELETE", "/images/raw.img", 202))["state"] == "succeeded"  # type: ignore[arg-type]


def test_image_clone_made_on_the_image_host(agents: dict[str, AgentProc], api: Api, db_url: str) -> None:
    """The image lives on kvm-host (a local domain): the clone is made there, as a qcow2 volume backed by the
    image and grown to the size asked, and the VM runs there; xen-host is refused with the reason."""
    hosts = add_hosts(api, agents)
    api.post("/storage-domains", {"name": "local", "type": "dir", "path": IMAGES}, status=201)
    r = agents["kvm-host"].call("POST", "/v1/storage/pools/local/volumes",
                                json={"name": "cloud.qcow2", "format": "qcow2", "capacity_bytes": 2 * GIB})
    assert r.status_code in (200, 201), r.text
    image_id = add_image(db_url, "cloud.qcow2", host_id=hosts["kvm-host"]["id"], path=r.json()["path"])
    vm = api.post("/vms", vm_body("web1", {"image": "cloud.qcow2", "size_bytes": 5 * GIB},
                                  {"image": "cloud.qcow2", "clone": "full"}), status=201)

    task = started(api, vm["id"])
    assert task["result"]["host"] == "kvm-host"
    rejected = {r["host"]: r["reasons"] for r in task["result"]["placement"]["rejected"]}
    assert rejected["xen-host"] == ["volume cloud.qcow2 lives on host kvm-host"], rejected
    made = volumes_on(agents["kvm-host"], "local")
    thin, full = made["web1-disk0"], made["web1-disk1"]
    assert (thin["format"], thin["capacity_bytes"], thin["backing"]) == ("qcow2", 5 * GIB, f"{IMAGES}/cloud.qcow2")
    assert (full["format"], full["capacity_bytes"], full["backing"]) == ("qcow2", 2 * GIB, None)
    v0 = api.get("/volumes/web1-disk0")
    assert api.get("/volumes/web1-disk1")["state"] == "ready"
    assert (v0["state"], v0["host"], v0["backing_id"], v0["capacity_bytes"]) == ("ready", "kvm-host", image_id,
                                                                                  5 * GIB)
    assert volume_row(db_url, "web1-disk1")["clone_of_id"] is None  # made: no longer needs its original
    assert volumes_on(agents["xen-host"], "local") == {}

    refused_delete = api.call("DELETE", "/images/cloud.qcow2", 409)
    assert isinstance(refused_delete, dict) and "web1-disk0" in refused_delete["message"]
    assert api.wait_task(api.post(f"/vms/{vm['id']}/stop", {}, status=202))["state"] == "succeeded"
    api.call("DELETE", f"/vms/{vm['id']}", 204)
    assert set(volumes_on(agents["kvm-host"], "local")) == {"cloud.qcow2"}
    assert api.wait_task(api.call("DELETE", "/images/cloud.qcow2", 202))["state"] == "succeeded"  # type: ignore[arg-type]
    assert volumes_on(agents["kvm-host"], "local") == {}


def test_image_on_another_domain_is_copied(api: Api, db_url: str, library: dict[str, str]) -> None:
    api.post("/storage-domains", {"name": "fast", "type": "dir", "path": "/srv/fast"}, status=201)
    vm = api.post("/vms", vm_body("web1", {"image": "cloud.qcow2", "storage": "fast"}), status=201)
    disk = vm["spec"]["disks"][0]
    assert (disk["storage"], disk["format"]) == ("fast", "qcow2")
    assert volume_row(db_url, "web1-disk0")["clone_of_id"] == library["cloud"]
    assert volume_row(db_url, "web1-disk0")["backing_id"] is None
    # the same domain but raw asked: a raw copy, not an overlay
    vm2 = api.post("/vms", vm_body("web2", {"image": "cloud.qcow2", "format": "raw"}), status=201)
    assert vm2["spec"]["disks"][0]["format"] == "raw"
    assert volume_row(db_url, "web2-disk0")["clone_of_id"] == library["cloud"]
