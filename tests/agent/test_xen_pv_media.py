"""Xen PV CD-ROMs on an emulated Xen host (libvirt's test driver) [X6]: a PV CD-ROM is a real PV CD-ROM
(``device='cdrom'``), never a read-only PV disk, which Xen 4.17's qdisk drops at start; libxl cannot change,
insert or eject the media of a running PV CD-ROM (measured on the lab, docs/xen-readonly.md), so such a change is
refused by field before anything changes, and made while the VM is down; a read-only disk on a file is refused
by field before anything is defined (and before a hot-plug)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import libvirt
import pytest

from corral.agent.service import Agent
from tests.agent.conftest import Api, spec


@pytest.fixture
def xen(agent_factory: Callable[..., Agent]) -> Api:
    return Api(agent_factory("xen"))


def _pv(**extra: object) -> dict[str, object]:
    return spec(guest_type="pv", kernel="/boot/vmlinuz", **extra)


def test_a_running_pv_cdrom_keeps_its_media_and_the_change_is_refused_by_field(xen: Api) -> None:
    cd = str(uuid.uuid4())
    data = _pv(disks=[{"source": "/var/lib/corral/images/a.raw"}, {"id": cd, "device": "cdrom",
                                                                     "source": "/isos/first.iso"}])
    vm_id = xen.create(data, start=True)["id"]
    dom = xen.conn().lookupByUUIDString(vm_id)
    live = dom.XMLDesc(0)
    assert "device='cdrom'" in live and "/isos/first.iso" in live, "the PV CD-ROM is a CD-ROM with its media"
    before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    for media, verb in (("/isos/second.iso", "change"), (None, "eject")):
        body = xen.patch(f"/v1/vms/{vm_id}/devices/{cd}", json={"media": media}, expect=409).json()
        assert body["code"] == "unsupported" and body["field"] == "media", body
        assert f"cannot {verb} the media" in body["message"] and "X6" in body["message"]
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before, "a refusal changed the definition"
    assert xen.get(f"/v1/vms/{vm_id}").json()["spec"]["disks"][1]["source"] == "/isos/first.iso"
    # while the VM is down the media changes, and the next start has it
    xen.post(f"/v1/vms/{vm_id}/destroy", expect=200)
    xen.patch(f"/v1/vms/{vm_id}/devices/{cd}", json={"media": "/isos/second.iso"}, expect=200)
    xen.post(f"/v1/vms/{vm_id}/start", expect=200)
    assert "/isos/second.iso" in dom.XMLDesc(0)


def test_media_into_a_running_pv_drive_that_started_empty_is_refused(xen: Api) -> None:
    cd = str(uuid.uuid4())
    vm_id = xen.create(_pv(disks=[{"source": "/var/lib/corral/images/a.raw"}, {"id": cd, "device": "cdrom"}]),
                       start=True)["id"]
    body = xen.patch(f"/v1/vms/{vm_id}/devices/{cd}", json={"media": "/isos/a.iso"}, expect=409).json()
    assert body["code"] == "unsupported" and body["field"] == "media" and "X6" in body["message"]
    assert xen.get(f"/v1/vms/{vm_id}").json()["spec"]["disks"][1]["source"] is None


def test_a_readonly_file_disk_is_refused_before_anything_is_defined(xen: Api) -> None:
    data = _pv(disks=[{"source": "/var/lib/corral/images/a.raw", "readonly": True}])
    names = {d.name() for d in xen.conn().listAllDomains(0)}
    body = xen.post("/v1/vms", json=data, expect=422).json()
    assert "disks.0.readonly" in body["message"] and "Block node is read-only" in body["message"], body
    assert {d.name() for d in xen.conn().listAllDomains(0)} == names
    # nor hot-plugged into a running PV guest
    vm_id = xen.create(_pv(), start=True)["id"]
    body = xen.post(f"/v1/vms/{vm_id}/devices", json={"disk": {"source": "/var/lib/corral/images/b.raw",
                                                      "readonly": True}}, expect=422).json()
    assert "disks.1.readonly" in body["message"], body
