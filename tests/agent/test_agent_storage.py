"""The agent's storage API (``/v1/storage``, issue 12 slice 1): libvirt pools and volumes.

Two backends, both real. libvirt's test driver has pools and volumes (define, build, start, autostart,
createXML, createXMLFrom, delete) but no upload, download or resize: those answer 409 ``unsupported`` there,
naming the operation. The QEMU lab's real libvirtd (``qemu:///system``) does all of it on a ``dir`` pool in a
temporary directory, and shows what a pool that cannot mount answers.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from corral.agent import volstreams
from corral.agent.errors import Conflict
from corral.agent.service import Agent, Settings
from corral.agent.storage import StorageManager, probe
from tests.agent.conftest import TOKEN, Api, Served, spec, wait_for
from tests.qemulab import lab_unavailable_reason, qemu_lab
from tests.require import unavailable

POOLS = "/v1/storage/pools"
MiB = 1024 * 1024


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def qcow2_image(path: Path, size: str = "64M", backing: Path | None = None) -> Path:
    extra = ["-b", str(backing), "-F", "raw"] if backing else []
    qemu_img("create", "-q", "-f", "qcow2", *extra, str(path), size)
    return path


# ------------------------------------------------------------------------------------------- test driver


@pytest.fixture
def tapi(agent_factory: Callable[..., Agent]) -> Api:
    return Api(agent_factory())


def dir_pool(api: Api, tmp_path: Path, name: str = "images") -> dict[str, Any]:
    answer: dict[str, Any] = api.put(f"{POOLS}/{name}", json={"type": "dir", "path": str(tmp_path / name)},
                                     expect=200).json()
    return answer


def test_a_dir_pool_is_defined_started_autostarted_and_idempotent(tapi: Api, tmp_path: Path) -> None:
    pool = dir_pool(tapi, tmp_path)
    assert pool == {"name": "images", "type": "dir", "state": "running", "path": str(tmp_path / "images"),
                    "source": None, "capacity_bytes": pool["capacity_bytes"], "allocation_bytes": 0,
                    "available_bytes": pool["available_bytes"], "autostart": True, "error": None}
    lv = tapi.conn().storagePoolLookupByName("images")
    assert lv.isActive() and lv.autostart()
    assert dir_pool(tapi, tmp_path) == pool  # the same definition again: kept, nothing changes
    assert len(tapi.conn().listAllStoragePools()) == 1
    assert tapi.get(POOLS, expect=200).json() == {"items": [pool]}

    # a different definition under that name is refused, naming what differs; the pool is untouched
    body = tapi.put(f"{POOLS}/images", json={"type": "dir", "path": str(tmp_path / "other")}, expect=409).json()
    assert body["code"] == "conflict" and body["field"] == "path" and str(tmp_path / "images") in body["message"]
    body = tapi.put(f"{POOLS}/images", json={"type": "netfs", "path": str(tmp_path / "images"),
                                             "source": {"host": "nfs1", "dir": "/export"}}, expect=409).json()
    assert body["field"] == "type"
    assert lv.isActive() and "images" in lv.XMLDesc(0)

    # a stopped pool is started again by the same PUT
    lv.destroy()
    assert tapi.get(POOLS).json()["items"][0]["state"] == "inactive"
    assert tapi.get(f"{POOLS}/images/volumes", expect=409).json()["field"] == "pool"
    assert dir_pool(tapi, tmp_path)["state"] == "running"


def test_netfs_and_logical_pools_are_defined_as_libvirt_pools(tapi: Api, tmp_path: Path) -> None:
    pool = tapi.put(f"{POOLS}/shared", expect=200, json={
        "type": "netfs", "path": str(tmp_path / "mnt"), "source": {"host": "nfs.example", "dir": "/export/vms"}}).json()
    assert pool["type"] == "netfs" and pool["source"] == {"host": "nfs.example", "dir": "/export/vms", "format": "nfs"}
    pool = tapi.put(f"{POOLS}/vg0", json={"type": "logical", "source": {"vg": "vg0"}}, expect=200).json()
    assert pool["type"] == "logical" and pool["source"] == {"vg": "vg0"} and pool["path"] == "/dev/vg0"
    # an LVM volume group holds raw volumes only
    body = tapi.post(f"{POOLS}/vg0/volumes", json={"name": "d", "format": "qcow2", "capacity_bytes": MiB},
                     expect=422).json()
    assert body["field"] == "format"


def test_delete_pool_stops_and_undefines_it(tapi: Api, tmp_path: Path) -> None:
    dir_pool(tapi, tmp_path)
    tapi.delete(f"{POOLS}/images", expect=204)
    assert tapi.conn().listAllStoragePools() == []
    assert tapi.delete(f"{POOLS}/images", expect=404).json()["field"] == "pool"
    assert tapi.get(f"{POOLS}/images/volumes", expect=404).json()["code"] == "not_found"


@pytest.mark.parametrize(("path", "body", "field"), [
    ("images", {"type": "nfs", "path": "/x"}, "type"),
    ("images", {"path": "/x"}, "type"),
    ("images", {"type": "dir", "path": "relative/dir"}, "path"),
    ("images", {"type": "dir", "path": "/srv/../etc"}, "path"),
    ("images", {"type": "dir", "path": "/"}, "path"),
    ("images", {"type": "dir"}, "path"),
    ("images", {"type": "dir", "path": "/srv/x", "colour": "red"}, "colour"),
    ("images", {"type": "netfs", "path": "/mnt/x", "source": {"host": "a host", "dir": "/e"}}, "source.host"),
    ("images", {"type": "netfs", "path": "/mnt/x", "source": {"host": "h", "dir": "e"}}, "source.dir"),
    ("images", {"type": "netfs", "path": "/mnt/x", "source": {"host": "h", "dir": "/e", "format": "ext4"}},
     "source.format"),
    ("images", {"type": "logical", "source": {"vg": "../vg"}}, "source.vg"),
    ("images", ["dir"], "body"),
    ("bad name", {"type": "dir", "path": "/srv/x"}, "name"),
    ("-images", {"type": "dir", "path": "/srv/x"}, "name"),
    ("x" * 65, {"type": "dir", "path": "/srv/x"}, "name"),
])
def test_bad_pool_definitions_are_refused_by_field(tapi: Api, path: str, body: Any, field: str) -> None:
    answer = tapi.put(f"{POOLS}/{path}", json=body, expect=422).json()
    assert answer["code"] == "invalid" and answer["field"] == field, answer
    assert tapi.conn().listAllStoragePools() == []


def test_volumes_raw_qcow2_thin_clone_and_copy(tapi: Api, tmp_path: Path) -> None:
    dir_pool(tapi, tmp_path)
    vols = f"{POOLS}/images/volumes"
    raw = tapi.post(vols, json={"name": "disk1", "capacity_bytes": 10 * MiB}, expect=201).json()
    assert raw == {"name": "disk1", "pool": "images", "path": str(tmp_path / "images" / "disk1"), "format": "raw",
                   "format_probed": False, "capacity_bytes": 10 * MiB, "allocation_bytes": raw["allocation_bytes"],
                   "backing": None}
    base = tapi.post(vols, json={"name": "base", "format": "qcow2", "capacity_bytes": 20 * MiB}, expect=201).json()
    assert base["format"] == "qcow2" and base["capacity_bytes"] == 20 * MiB

    # thin clone: qcow2 over the backing, its size by default; libvirt holds the backing store
    clone = tapi.post(vols, json={"name": "web1", "backing": {"pool": "images", "volume": "base"}},
                      expect=201).json()
    assert clone["format"] == "qcow2" and clone["backing"] == base["path"] and clone["capacity_bytes"] == 20 * MiB
    xml = tapi.conn().storagePoolLookupByName("images").storageVolLookupByName("web1").XMLDesc(0)
    assert f"<path>{base['path']}</path>" in xml
    bigger = tapi.post(vols, json={"name": "web2", "backing": {"pool": "images", "volume": "base"},
                                   "capacity_bytes": 40 * MiB}, expect=201).json()
    assert bigger["capacity_bytes"] == 40 * MiB

    # full copy (createXMLFrom): the source's format and size unless asked
    copy = tapi.post(vols, json={"name": "copy", "clone_of": {"pool": "images", "volume": "disk1"}},
                     expect=201).json()
    assert copy["format"] == "raw" and copy["capacity_bytes"] == 10 * MiB and copy["backing"] is None

    names = [v["name"] for v in tapi.get(vols, expect=200).json()["items"]]
    assert names == ["base", "copy", "disk1", "web1", "web2"]
    assert tapi.get(f"{vols}/web1", expect=200).json() == clone

    # a backing volume cannot go while clones use it; they can
    body = tapi.delete(f"{vols}/base", expect=409).json()
    assert body["field"] == "volume" and body["volumes"] == ["images/web1", "images/web2"]
    assert "web1" in body["message"]
    tapi.delete(f"{vols}/web1", expect=204)
    tapi.delete(f"{vols}/web2", expect=204)
    tapi.delete(f"{vols}/base", expect=204)
    assert tapi.get(f"{vols}/base", expect=404).json()["field"] == "volume"


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "bad/name", "capacity_bytes": MiB}, "name"),
    ({"name": ".hidden", "capacity_bytes": MiB}, "name"),
    ({"name": "", "capacity_bytes": MiB}, "name"),
    ({"name": "d", "capacity_bytes": 0}, "capacity_bytes"),
    ({"name": "d", "capacity_bytes": -1}, "capacity_bytes"),
    ({"name": "d", "capacity_bytes": "1G"}, "capacity_bytes"),
    ({"name": "d", "capacity_bytes": 1.5}, "capacity_bytes"),
    ({"name": "d", "capacity_bytes": True}, "capacity_bytes"),
    ({"name": "d", "capacity_bytes": 1 << 61}, "capacity_bytes"),
    ({"name": "d"}, "capacity_bytes"),
    ({"name": "d", "format": "vmdk", "capacity_bytes": MiB}, "format"),
    ({"name": "d", "capacity_bytes": MiB, "size": 3}, "size"),
    ({"name": "d", "backing": {"pool": "images", "volume": "base"}, "format": "raw"}, "format"),
    ({"name": "d", "backing": {"pool": "images", "volume": "base"},
      "clone_of": {"pool": "images", "volume": "base"}}, "clone_of"),
    ({"name": "d", "backing": {"pool": "images", "volume": "base"}, "capacity_bytes": MiB}, "capacity_bytes"),
    ({"name": "d", "backing": {"pool": "images", "volume": "nothere"}}, "backing.volume"),
    ({"name": "d", "clone_of": {"pool": "nothere", "volume": "base"}}, "clone_of.pool"),
    ({"name": "d", "clone_of": {"pool": "images"}}, "clone_of.volume"),
    ({"name": "base", "capacity_bytes": MiB}, "name"),
])
def test_bad_volumes_are_refused_by_field(tapi: Api, tmp_path: Path, body: dict[str, Any], field: str) -> None:
    dir_pool(tapi, tmp_path)
    tapi.post(f"{POOLS}/images/volumes", json={"name": "base", "format": "qcow2", "capacity_bytes": 2 * MiB},
              expect=201)
    answer = tapi.post(f"{POOLS}/images/volumes", json=body).json()
    assert answer["field"] == field, answer
    assert [v.name() for v in tapi.conn().storagePoolLookupByName("images").listAllVolumes()] == ["base"]


def test_volume_names_in_the_path_are_checked(tapi: Api, tmp_path: Path) -> None:
    dir_pool(tapi, tmp_path)
    assert tapi.get(f"{POOLS}/images/volumes/a%20b", expect=422).json()["field"] == "volume"
    assert tapi.delete(f"{POOLS}/images/volumes/-x", expect=422).json()["field"] == "volume"
    assert tapi.get(f"{POOLS}/no%20pool/volumes", expect=422).json()["field"] == "pool"
    assert tapi.delete(f"{POOLS}/images/volumes/nothere", expect=404).json()["field"] == "volume"


def test_delete_is_refused_while_a_domain_uses_the_volume(tapi: Api, tmp_path: Path) -> None:
    dir_pool(tapi, tmp_path)
    vol = tapi.post(f"{POOLS}/images/volumes", json={"name": "root", "capacity_bytes": MiB}, expect=201).json()
    vm = tapi.create(spec("web1", disks=[{"id": str(uuid.uuid4()), "source": vol["path"]}]))
    body = tapi.delete(f"{POOLS}/images/volumes/root", expect=409).json()
    assert body["code"] == "conflict" and body["domains"] == ["web1"] and "web1" in body["message"]
    tapi.delete(f"/v1/vms/{vm['id']}", expect=204)
    tapi.delete(f"{POOLS}/images/volumes/root", expect=204)


def test_what_the_test_driver_lacks_is_unsupported_by_name(tapi: Api, tmp_path: Path) -> None:
    """libvirt's test driver has no virStorageVolUpload, Download or Resize: 409 naming it, nothing left over."""
    dir_pool(tapi, tmp_path)
    tapi.post(f"{POOLS}/images/volumes", json={"name": "disk", "capacity_bytes": MiB}, expect=201)
    body = tapi.put(f"{POOLS}/images/volumes/new.img/content", content=b"x" * 1000, expect=409).json()
    assert body["code"] == "unsupported" and "virStorageVolUpload" in body["message"]
    names = [v.name() for v in tapi.conn().storagePoolLookupByName("images").listAllVolumes()]
    assert names == ["disk"]  # the volume made for the upload is gone again
    body = tapi.get(f"{POOLS}/images/volumes/disk/content", expect=409).json()
    assert body["code"] == "unsupported" and "virStorageVolDownload" in body["message"]
    body = tapi.post(f"{POOLS}/images/volumes/disk/resize", json={"capacity_bytes": 2 * MiB}, expect=409).json()
    assert body["code"] == "unsupported" and "virStorageVolResize" in body["message"]
    # refused before libvirt is asked: a shrink, and an upload with no length or a bad format
    body = tapi.post(f"{POOLS}/images/volumes/disk/resize", json={"capacity_bytes": MiB // 2}, expect=422).json()
    assert body["field"] == "capacity_bytes"
    assert tapi.put(f"{POOLS}/images/volumes/disk/content", content=b"", expect=422).json()["field"] \
        == "Content-Length"
    assert tapi.put(f"{POOLS}/images/volumes/disk/content?format=iso", content=b"x",
                    expect=422).json()["field"] == "format"


@pytest.mark.parametrize("emulate", ["xen", "kvm"])
def test_online_resize_asks_the_flavor_first(agent_factory: Callable[..., Agent], tmp_path: Path,
                                             emulate: str) -> None:
    """A volume a running VM uses: on Xen the flavor refuses (libxl has no virDomainBlockResize, measured) by
    field with the feature named, before libvirt is asked; on KVM libvirt is asked (the test driver lacks the
    call too: 409 naming virDomainBlockResize). Nothing changes either way."""
    api = Api(agent_factory(emulate))
    dir_pool(api, tmp_path)
    vol = api.post(f"{POOLS}/images/volumes", json={"name": "root", "capacity_bytes": MiB}, expect=201).json()
    vm = api.create(spec("web1", disks=[{"id": str(uuid.uuid4()), "source": vol["path"]}]), start=True)
    body = api.post(f"{POOLS}/images/volumes/root/resize", json={"capacity_bytes": 2 * MiB}, expect=409).json()
    assert body["code"] == "unsupported" and body["field"] == "capacity_bytes", body
    if emulate == "xen":
        assert body["feature"] == "disk.resize_live" and body["domains"] == ["web1"]
        assert "virDomainBlockResize" in body["message"] and "stop the VM" in body["message"]
    else:
        assert "feature" not in body and "virDomainBlockResize" in body["message"]
    assert api.get(f"{POOLS}/images/volumes/root", expect=200).json()["capacity_bytes"] == MiB
    api.post(f"/v1/vms/{vm['id']}/destroy", expect=200)


def test_a_pool_error_is_kept_over_agent_restarts(agent_factory: Callable[..., Agent], tmp_path: Path) -> None:
    """The reason a pool could not start is the agent's (libvirt only says inactive): kept in the state dir."""
    agent = agent_factory()
    api = Api(agent)
    dir_pool(api, tmp_path)
    api.conn().storagePoolLookupByName("images").destroy()
    manager = StorageManager(lambda: agent.connection.conn, agent.settings.state_dir)
    manager._set_error("images", "mount failed: no route to host")
    again = StorageManager(lambda: agent.connection.conn, agent.settings.state_dir)
    pool = again.show_pool("images")
    assert pool["state"] == "inaccessible" and pool["error"] == "mount failed: no route to host"
    assert dir_pool(api, tmp_path)["error"] is None  # started: the error is cleared, on disk too
    assert StorageManager(lambda: agent.connection.conn, agent.settings.state_dir).show_pool("images")["error"] is None


# ------------------------------------------------------------------------------------------- probing


def test_formats_are_probed_from_bytes_never_from_names(tmp_path: Path) -> None:
    raw = tmp_path / "looks-like.qcow2"
    raw.write_bytes(os.urandom(4096))
    assert probe(str(raw)).format == "raw"  # type: ignore[union-attr]
    image = qcow2_image(tmp_path / "disk.raw", "64M")
    found = probe(str(image))
    assert found is not None and (found.format, found.virtual_size, found.backing) == ("qcow2", 64 * MiB, None)
    overlay = qcow2_image(tmp_path / "overlay.img", "128M", backing=raw)
    found = probe(str(overlay))
    assert found is not None and (found.format, found.virtual_size, found.backing) == ("qcow2", 128 * MiB, str(raw))
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", raw.name, str(overlay)],
                   check=True, timeout=60)  # a relative backing name is relative to the image's directory
    assert probe(str(overlay)).backing == str(raw)  # type: ignore[union-attr]
    assert probe(str(tmp_path / "missing")) is None
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert probe(str(empty)).format == "raw"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------- real libvirtd


@pytest.fixture
def lab_api(tmp_path: Path) -> Iterator[Api]:
    """An agent in this process on the QEMU lab's libvirtd (qemu:///system); every pool named ct-* it made is
    removed afterwards (their files live under tmp_path)."""
    lab = qemu_lab()
    if lab is None:
        unavailable(f"QEMU lab unavailable: {lab_unavailable_reason()}")
    agent = Agent(Settings(libvirt=lab.uri, state_dir=tmp_path / "state", allow_tcg=True, accel="tcg"))
    agent.start()
    api = Api(agent)
    before = {p.name() for p in api.conn().listAllStoragePools()}
    try:
        yield api
    finally:
        for pool in api.conn().listAllStoragePools():
            if pool.name() not in before and pool.name().startswith("ct-"):
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
        agent.stop()


def _name() -> str:
    return f"ct-{uuid.uuid4().hex[:8]}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.qemulab
@pytest.mark.parametrize("written_by", ["file", "libvirt stream"])
def test_real_dir_pool_volumes_upload_download_clone_resize(lab_api: Api, tmp_path: Path, written_by: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads into a dir pool write the volume's file (the agent is on the host); with no pool type counted as
    files they go through libvirt's virStorageVolUpload stream, as for LVM: both paths, same answers."""
    if written_by != "file":
        monkeypatch.setattr(volstreams, "FILE_POOLS", frozenset())
    api, pool = lab_api, _name()
    where = tmp_path / "pool"
    info = api.put(f"{POOLS}/{pool}", json={"type": "dir", "path": str(where)}, expect=200).json()
    assert info["state"] == "running" and info["autostart"] and info["capacity_bytes"] > 0
    assert where.is_dir()  # built by libvirt (mkdir)
    assert api.put(f"{POOLS}/{pool}", json={"type": "dir", "path": str(where)}, expect=200).json()["path"] \
        == str(where)
    assert api.put(f"{POOLS}/{pool}", json={"type": "dir", "path": str(tmp_path / "x")}, expect=409).json()[
        "field"] == "path"
    vols = f"{POOLS}/{pool}/volumes"

    # new volumes: the format is read back from the files themselves
    raw = api.post(vols, json={"name": "empty.qcow2", "capacity_bytes": 4 * MiB}, expect=201).json()
    assert (raw["format"], raw["format_probed"], raw["capacity_bytes"]) == ("raw", True, 4 * MiB)
    assert (where / "empty.qcow2").stat().st_size == 4 * MiB
    q = api.post(vols, json={"name": "q.raw", "format": "qcow2", "capacity_bytes": 8 * MiB}, expect=201).json()
    assert (q["format"], q["format_probed"], q["capacity_bytes"]) == ("qcow2", True, 8 * MiB)
    assert (where / "q.raw").read_bytes()[:4] == b"QFI\xfb"

    # upload: streamed, sha256 of what arrived, the bytes read back equal; raw bytes named .qcow2 stay raw
    data = os.urandom(3 * MiB + 12345)
    up = api.put(f"{vols}/disk.qcow2/content", content=data, expect=200).json()
    assert up["sha256"] == _sha256(data) and up["format"] == "raw" and up["capacity_bytes"] == len(data)
    assert up["written_by"] == written_by
    assert (where / "disk.qcow2").read_bytes() == data
    down = api.get(f"{vols}/disk.qcow2/content", expect=200)
    assert down.headers["content-type"] == "application/octet-stream" and down.content == data

    # qcow2 bytes uploaded under a raw-looking name are qcow2, with their virtual size
    image = qcow2_image(tmp_path / "cloud.img", "64M").read_bytes()
    up = api.put(f"{vols}/cloud.raw/content?format=qcow2", content=image, expect=200).json()
    assert (up["format"], up["capacity_bytes"], up["sha256"]) == ("qcow2", 64 * MiB, _sha256(image))
    assert api.get(f"{vols}/cloud.raw", expect=200).json()["format"] == "qcow2"
    # ... and refused when the uploader said raw: the volume is removed
    body = api.put(f"{vols}/wrong/content?format=raw", content=image, expect=422).json()
    assert body["field"] == "format" and body["probed"] == "qcow2"
    assert not (where / "wrong").exists()

    # thin clone over the uploaded image: qemu-img sees the backing file
    clone = api.post(vols, json={"name": "web1", "backing": {"pool": pool, "volume": "cloud.raw"},
                                 "capacity_bytes": 128 * MiB}, expect=201).json()
    assert clone["backing"] == str(where / "cloud.raw") and clone["capacity_bytes"] == 128 * MiB
    assert str(where / "cloud.raw") in qemu_img("info", "-U", str(where / "web1"))
    # full copy to qcow2 (createXMLFrom)
    copy = api.post(vols, json={"name": "copy", "format": "qcow2", "clone_of": {"pool": pool, "volume": "disk.qcow2"}},
                    expect=201).json()
    assert copy["format"] == "qcow2" and copy["backing"] is None and copy["capacity_bytes"] >= len(data)

    # resize: grow raw and qcow2, never shrink
    grown = api.post(f"{vols}/empty.qcow2/resize", json={"capacity_bytes": 6 * MiB}, expect=200).json()
    assert grown["capacity_bytes"] == 6 * MiB and (where / "empty.qcow2").stat().st_size == 6 * MiB
    grown = api.post(f"{vols}/q.raw/resize", json={"capacity_bytes": 16 * MiB}, expect=200).json()
    assert grown["capacity_bytes"] == 16 * MiB and grown["format"] == "qcow2"
    body = api.post(f"{vols}/q.raw/resize", json={"capacity_bytes": 8 * MiB}, expect=422).json()
    assert body["field"] == "capacity_bytes"
    assert probe(str(where / "q.raw")).virtual_size == 16 * MiB  # type: ignore[union-attr]

    # delete: refused while a defined domain uses the volume, or a clone backs on it
    dom_name = _name()
    dom = api.conn().defineXML(f"""<domain type='qemu'><name>{dom_name}</name><memory unit='MiB'>64</memory>
      <os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{where / "disk.qcow2"}'/><target dev='vda' bus='virtio'/>
      </disk></devices></domain>""")
    try:
        body = api.delete(f"{vols}/disk.qcow2", expect=409).json()
        assert body["domains"] == [dom_name] and dom_name in body["message"]
        body = api.put(f"{vols}/disk.qcow2/content", content=b"overwrite", expect=409).json()
        assert body["domains"] == [dom_name]
        assert (where / "disk.qcow2").read_bytes() == data
        assert (where / "disk.qcow2").exists()
    finally:
        dom.undefine()
    api.delete(f"{vols}/disk.qcow2", expect=204)
    assert not (where / "disk.qcow2").exists()
    assert api.delete(f"{vols}/cloud.raw", expect=409).json()["volumes"] == [f"{pool}/web1"]

    # the pool goes, the files stay
    api.delete(f"{POOLS}/{pool}", expect=204)
    assert (where / "web1").exists()
    with pytest.raises(libvirt.libvirtError):
        api.conn().storagePoolLookupByName(pool)


@pytest.mark.qemulab
def test_real_online_resize_grows_the_disk_of_a_running_domain(lab_api: Api, tmp_path: Path) -> None:
    """A volume a running domain uses is grown by that domain (virDomainBlockResize): qemu grows the qcow2 and
    the domain's block device; the answer says online and names the domain."""
    lab = qemu_lab()
    assert lab is not None
    api, pool = lab_api, _name()
    where = tmp_path / "pool"
    api.put(f"{POOLS}/{pool}", json={"type": "dir", "path": str(where)}, expect=200)
    vols = f"{POOLS}/{pool}/volumes"
    vol = api.post(vols, json={"name": "live", "format": "qcow2", "capacity_bytes": 16 * MiB}, expect=201).json()
    dom = api.conn().createXML(f"""<domain type='qemu'><name>{_name()}</name><memory unit='MiB'>128</memory>
      <os><type arch='x86_64'>hvm</type><kernel>{lab.kernel}</kernel><initrd>{lab.initrd}</initrd>
      <cmdline>console=ttyS0 panic=-1</cmdline></os><devices><disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{vol["path"]}'/><target dev='vda' bus='virtio'/>
      </disk></devices></domain>""")
    try:
        grown = api.post(f"{vols}/live/resize", json={"capacity_bytes": 48 * MiB}, expect=200).json()
        assert grown["online"] is True and grown["domain"] == dom.name() and grown["capacity_bytes"] == 48 * MiB
        assert dom.blockInfo(vol["path"])[0] == 48 * MiB  # the running domain's block device
        assert probe(vol["path"]).virtual_size == 48 * MiB  # type: ignore[union-attr]
        body = api.post(f"{vols}/live/resize", json={"capacity_bytes": 32 * MiB}, expect=422).json()
        assert body["field"] == "capacity_bytes" and dom.blockInfo(vol["path"])[0] == 48 * MiB
    finally:
        dom.destroy()
    offline = api.post(f"{vols}/live/resize", json={"capacity_bytes": 64 * MiB}, expect=200).json()
    assert offline["online"] is False and offline["capacity_bytes"] == 64 * MiB


@pytest.mark.qemulab
def test_real_interrupted_upload_leaves_no_volume(lab_api: Api, tmp_path: Path) -> None:
    api, pool = lab_api, _name()
    where = tmp_path / "pool"
    api.put(f"{POOLS}/{pool}", json={"type": "dir", "path": str(where)}, expect=200)
    with Served(api.agent) as served:
        with socket.create_connection(("127.0.0.1", served.port)) as sock:
            sock.sendall((f"PUT {POOLS}/{pool}/volumes/partial/content HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {TOKEN}\r\nContent-Length: {8 * MiB}\r\n\r\n").encode())
            sock.sendall(os.urandom(2 * MiB))
            wait_for(lambda: (where / "partial").exists(), 30, "the upload to begin")
        # the client is gone after 2 of 8 MiB: the partial volume is deleted
        wait_for(lambda: not (where / "partial").exists(), 30, "the partial volume to be deleted")
        assert "partial" not in [v["name"] for v in api.get(f"{POOLS}/{pool}/volumes", expect=200).json()["items"]]
        # a body that ends before its Content-Length (the client closes its sending half): nothing is left
        with socket.create_connection(("127.0.0.1", served.port)) as sock:
            sock.sendall((f"PUT {POOLS}/{pool}/volumes/short/content HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {TOKEN}\r\nContent-Length: {MiB}\r\n\r\n").encode())
            sock.sendall(b"y" * 1000)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(30)
            sock.recv(65536)
        wait_for(lambda: not (where / "short").exists(), 30, "the short volume to be deleted")

    # one upload per volume at a time; an aborted one leaves nothing
    storage = StorageManager(lambda: api.agent.connection.conn, api.agent.settings.state_dir)
    first = storage.begin_upload(pool, "one", MiB, None)
    with pytest.raises(Conflict, match="already running"):
        storage.begin_upload(pool, "one", MiB, None)
    first.send(b"z" * 1000)
    first.abort()
    assert not (where / "one").exists()
    second = storage.begin_upload(pool, "one", 4, None)
    second.send(b"abcd")
    assert second.finish()["sha256"] == _sha256(b"abcd")
    assert (where / "one").read_bytes() == b"abcd"


@pytest.mark.qemulab
def test_real_pool_that_cannot_mount_answers_the_reason(lab_api: Api, tmp_path: Path) -> None:
    api, pool = lab_api, _name()
    body = api.put(f"{POOLS}/{pool}", expect=502, json={
        "type": "netfs", "path": str(tmp_path / "mnt"), "source": {"host": "127.0.0.1", "dir": "/nonexistent"}}).json()
    assert body["code"] == "libvirt" and f"storage pool {pool} cannot start: " in body["message"]
    reason = body["message"].split("cannot start: ", 1)[1]
    assert reason and body["pool"]["state"] == "inaccessible" and body["pool"]["error"] == reason
    # it stays defined, and monitoring reads why it is not running
    listed = next(p for p in api.get(POOLS, expect=200).json()["items"] if p["name"] == pool)
    assert listed["state"] == "inaccessible" and listed["error"] == reason and listed["autostart"] is True
    assert listed["source"] == {"host": "127.0.0.1", "dir": "/nonexistent", "format": "nfs"}
    assert not api.conn().storagePoolLookupByName(pool).isActive()
    assert reason in api.get(f"{POOLS}/{pool}/volumes", expect=409).json()["message"]
    api.delete(f"{POOLS}/{pool}", expect=204)
    assert pool not in [p["name"] for p in api.get(POOLS).json()["items"]]


# ------------------------------------------------------------------------------------------- simulator


def test_simulated_hosts_have_the_routes_and_say_they_have_no_storage() -> None:
    from fastapi.testclient import TestClient

    from corral.simulate import Simulator, SimulatorSettings, create_simulator_app

    token = "storage-sim-token-0123456789"
    sim = Simulator(SimulatorSettings(hosts=1, vms_per_host=0, seed=1, token=token, event_rate=0))
    with TestClient(create_simulator_app(sim), headers={"Authorization": f"Bearer {token}"}) as client:
        for method, path, kw in [("GET", POOLS, {}), ("PUT", f"{POOLS}/p", {"json": {"type": "dir", "path": "/x"}}),
                                 ("PUT", f"{POOLS}/p/volumes/v/content", {"content": b"abc"})]:
            resp = client.request(method, f"/hosts/1{path}", **kw)
            assert resp.status_code == 409 and resp.json()["code"] == "unsupported", resp.text
