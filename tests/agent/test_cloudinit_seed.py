"""The agent's cloud-init seeds: a real ISO 9660 volume labelled ``cidata`` whose Rock Ridge / Joliet names are
the NoCloud files, the same bytes for the same data, written again only when the data changes; defined into the
domain by each flavor (test driver emulating KVM and Xen) and never a disk of the spec (issue 12)."""

from __future__ import annotations

import io
import os
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml
from lxml import etree

from corral.agent.cloudinit import SeedStore, build_iso
from corral.agent.service import Agent
from corral.domain.cloudinit import SEED_DEVICE_ID, seed_files
from corral.domain.spec import VmSpec, parse_spec
from tests.agent.conftest import Api, spec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxt6G9g+a8LegMBJ+yAwHL9mOGHCiLG2pPmu0OuwuJ3 alice@laptop"
CLOUD_INIT = {"user": "alice", "ssh_authorized_keys": [KEY], "hostname": "web1"}


def ci_spec(**cloud_init: Any) -> VmSpec:
    return parse_spec({"name": "web1", "memory_mib": 256, "nics": [{"source": "br0", "mac": "52:54:00:00:00:01"}],
                       "cloud_init": {**CLOUD_INIT, **cloud_init}})


def read_iso(data: bytes) -> tuple[str, dict[str, str], dict[str, str]]:
    """The volume label, and the files by Rock Ridge name and by Joliet name."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        by_rr: dict[str, str] = {}
        by_joliet: dict[str, str] = {}
        for child in iso.list_children(rr_path="/"):
            name = child.rock_ridge.name().decode() if child.rock_ridge else ""
            if name in (".", "..", "") or child.is_dir():
                continue
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            by_rr[name] = out.getvalue().decode()
        for name in by_rr:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            by_joliet[name] = out.getvalue().decode()
    finally:
        iso.close()
    return label, by_rr, by_joliet


def test_the_seed_is_a_cidata_volume_with_the_three_nocloud_files() -> None:
    files = seed_files(ci_spec(), "52:54:00")
    assert files is not None
    label, by_rr, by_joliet = read_iso(build_iso(files))
    assert label == "cidata"
    assert by_rr == by_joliet == {"meta-data": files.meta_data, "user-data": files.user_data,
                                  "network-config": files.network_config}
    user = yaml.safe_load(by_rr["user-data"])
    assert user["user"] == "alice" and user["ssh_authorized_keys"] == [KEY] and user["hostname"] == "web1"
    assert yaml.safe_load(by_rr["meta-data"])["local-hostname"] == "web1"
    assert yaml.safe_load(by_rr["network-config"])["ethernets"]["nic0"]["dhcp4"] is True


def test_the_same_data_gives_the_same_bytes_whatever_the_clock_and_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    files = seed_files(ci_spec(), "52:54:00")
    assert files is not None
    first = build_iso(files)
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a local-time date would differ
    time.tzset()
    try:
        assert build_iso(files) == first
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert time.time() > 1_577_836_800  # the real clock is untouched after a build
    other = seed_files(ci_spec(hostname="web2"), "52:54:00")
    assert other is not None and build_iso(other) != first


def test_the_store_writes_once_rewrites_on_change_and_keeps_it_private(tmp_path: Path) -> None:
    store = SeedStore(tmp_path)
    spec_ = ci_spec()
    path = store.ensure(spec_, "52:54:00")
    assert path == tmp_path / "cloud-init" / spec_.id / "cidata.iso"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o711
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o711
    before = path.stat()
    assert store.ensure(spec_, "52:54:00") == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "rewritten without a change"
    changed = spec_.model_copy(update={"cloud_init": ci_spec(user="bob").cloud_init})
    store.ensure(changed, "52:54:00")
    assert path.stat().st_ino != before.st_ino  # a new file renamed over the old one
    assert yaml.safe_load(read_iso(path.read_bytes())[1]["user-data"])["user"] == "bob"
    path.unlink()  # gone (a host's state dir cleaned): made again
    store.ensure(changed, "52:54:00")
    assert path.is_file()
    assert store.ensure(changed.model_copy(update={"cloud_init": None}), "52:54:00") is None
    assert not path.parent.exists()


# ---- through the agent (test driver emulating each flavor) ---------------------------------------------


def _seed_disk(api: Api, vm_id: str) -> Any:
    xml = api.conn().lookupByUUIDString(vm_id).XMLDesc(0)
    disks = etree.fromstring(xml).findall("devices/disk")
    return next((d for d in disks if (d.find("alias") is not None and d.find("alias").get("name") == "ua-cloud-init")
                 or "cloud-init" in (d.find("source").get("file") if d.find("source") is not None else "")), None)


@pytest.mark.parametrize(("emulate", "extra", "device", "target", "bus"), [
    ("kvm", {}, "cdrom", "hdd", "ide"),
    ("xen", {}, "cdrom", "hdd", "ide"),
    ("xen", {"guest_type": "pv", "kernel": "/boot/vmlinuz"}, "cdrom", "xvdz", "xen"),
], ids=["kvm", "xen-hvm", "xen-pv"])
def test_the_agent_defines_the_seed_per_flavor_and_never_as_a_spec_disk(
        agent_factory: Callable[..., Agent], emulate: str, extra: dict[str, Any], device: str, target: str,
        bus: str) -> None:
    agent = agent_factory(emulate)
    api = Api(agent)
    body = spec(cloud_init=CLOUD_INIT, **extra)
    plan = api.post("/v1/vms/plan", json=body, expect=200).json()
    seed_decision = next(d for d in plan["decisions"] if d["path"] == "cloud_init")
    assert seed_decision["detail"].startswith("cloud-init seed: ") and target in seed_decision["detail"]
    info = api.create(body, start=True)
    vm_id = body["id"]
    seed_path = agent.settings.state_dir / "cloud-init" / vm_id / "cidata.iso"
    assert seed_path.is_file()
    disk = _seed_disk(api, vm_id)
    assert disk is not None, "no seed in the defined domain"
    assert disk.get("device") == device and disk.find("readonly") is not None
    assert disk.find("target").get("dev") == target and disk.find("target").get("bus") == bus
    assert disk.find("source").get("file") == str(seed_path)
    shown = api.get(f"/v1/vms/{vm_id}", expect=200).json()
    seed = [d for d in shown["devices"] if d.get("target") == target]
    assert len(seed) == 1 and seed[0]["id"] == SEED_DEVICE_ID and seed[0]["readonly"] is True
    # the spec keeps its own disks only: the seed is the host's device, never stored as a disk of the VM
    assert [d["id"] for d in shown["spec"]["disks"]] == [d["id"] for d in info["spec"]["disks"]] == \
        [d["id"] for d in body["disks"]]
    api.delete(f"/v1/vms/{vm_id}/devices/{SEED_DEVICE_ID}", expect=404)  # not a device that can be detached
    assert _seed_disk(api, vm_id) is not None
    label, files, _ = read_iso(seed_path.read_bytes())
    assert label == "cidata" and yaml.safe_load(files["user-data"])["user"] == "alice"
    api.post(f"/v1/vms/{vm_id}/destroy", expect=200)
    seed_path.unlink()  # the state dir lost it: the agent's own start writes it again
    api.post(f"/v1/vms/{vm_id}/start", expect=200)
    assert seed_path.is_file()
    api.post(f"/v1/vms/{vm_id}/destroy", expect=200)
    api.delete(f"/v1/vms/{vm_id}", expect=204)
    assert not seed_path.parent.exists()


def test_a_vm_without_cloud_init_has_no_seed(agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory("kvm")
    api = Api(agent)
    body = spec()
    api.create(body)
    assert _seed_disk(api, body["id"]) is None
    assert not (agent.settings.state_dir / "cloud-init" / body["id"]).exists()
    plan = api.post("/v1/vms/plan", json=spec(name=f"p-{uuid.uuid4().hex[:6]}"), expect=200).json()
    assert not any(d["path"] == "cloud_init" for d in plan["decisions"])
    assert os.path.isdir(agent.settings.state_dir)
