"""Host paths in VM specs (issue 14), on SQLite and PostgreSQL: for admins only (403 naming the field) and only
under the directories of ``CORRAL_HOST_PATHS`` (422 naming the field), at create, at update (new paths only),
at a disk hot-plug and a CD-ROM media change."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine.conftest import Api

PW = "long-enough-pw"


@pytest.fixture(autouse=True)
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_HOST_PATHS", "/srv/images:/var/lib/xen/boot")


def operator(api: Api) -> dict[str, str]:
    api.post("/users", {"username": "otto", "role": "operator", "password": PW}, status=201)
    t = api.post("/tokens", {"name": "otto", "user": "otto"}, status=201)
    return {"Authorization": f"Bearer {t['token']}"}


def vm(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "memory_mib": 64, **extra}


def post(api: Api, headers: dict[str, str], body: Any, path: str = "/vms", method: str = "POST") -> tuple[int, Any]:
    r = api.client.request(method, "/api/v1" + path, headers=headers, json=body)
    return r.status_code, r.json()


@pytest.mark.parametrize(("field", "extra"), [
    ("disks.0.source", {"disks": [{"source": "/srv/images/a.img"}]}),
    ("disks.1.source", {"disks": [{"device": "cdrom"}, {"source": "/etc/shadow"}]}),
    ("kernel", {"kernel": "/var/lib/xen/boot/vmlinuz", "guest_type": "pv"}),
    ("bootloader", {"bootloader": "/bin/sh", "guest_type": "pv"}),
])
def test_operators_give_no_host_paths(api: Api, field: str, extra: dict[str, Any]) -> None:
    status, body = post(api, operator(api), vm("v", **extra))
    assert status == 403 and body["field"] == field and "admins only" in body["message"]


def test_operators_use_program_bootloaders_and_volumes(api: Api) -> None:
    status, body = post(api, operator(api), vm("pv", guest_type="pv", bootloader="pygrub"))
    assert status == 201, body


@pytest.mark.parametrize(("field", "extra"), [
    ("disks.0.source", {"disks": [{"source": "/etc/shadow"}]}),
    ("disks.0.source", {"disks": [{"source": "/dev/sda", "source_type": "block"}]}),
    ("disks.0.source", {"disks": [{"source": "/srv/images/../../etc/shadow"}]}),
    ("disks.0.source", {"disks": [{"source": "/srv/images-other/a.img"}]}),
    ("bootloader", {"bootloader": "/bin/sh", "guest_type": "pv"}),
    ("initrd", {"kernel": "/var/lib/xen/boot/k", "initrd": "/boot/initrd.img", "guest_type": "pv"}),
])
def test_admins_only_under_the_allowed_directories(api: Api, field: str, extra: dict[str, Any]) -> None:
    body = api.post("/vms", vm("v", **extra), status=422)
    assert body["field"] == field and "CORRAL_HOST_PATHS" in body["message"]


def test_admins_under_the_allowed_directories(api: Api) -> None:
    api.post("/vms", vm("a", disks=[{"source": "/srv/images/a.img"}, {"source": "/srv/images/sub/b.qcow2",
                                                                       "format": "qcow2"}]), status=201)
    api.post("/vms", vm("k", guest_type="pv", kernel="/var/lib/xen/boot/vmlinuz"), status=201)


def test_an_update_checks_only_new_paths(api: Api) -> None:
    otto = operator(api)
    created = api.post("/vms", vm("db", disks=[{"source": "/srv/images/db.img"}]), status=201)
    spec = {k: v for k, v in created["spec"].items() if k != "graphics"}
    status, body = post(api, otto, {**spec, "memory_mib": 128}, f"/vms/{created['id']}", "PUT")
    assert status == 200, body  # the admin's path stays; the operator changed the memory
    more = {**spec, "disks": [*spec["disks"], {"source": "/srv/images/other.img"}]}
    status, body = post(api, otto, more, f"/vms/{created['id']}", "PUT")
    assert status == 403 and body["field"] == "disks.1.source"


def test_device_plug_and_media(api: Api) -> None:
    otto = operator(api)
    created = api.post("/vms", vm("hot"), status=201)
    status, body = post(api, otto, {"disk": {"source": "/srv/images/x.img"}}, f"/vms/{created['id']}/devices")
    assert status == 403 and body["field"] == "disk.source"
    status, body = post(api, otto, {"media": "/srv/images/x.iso"}, f"/vms/{created['id']}/devices/cd", "PATCH")
    assert status == 403 and body["field"] == "media"
    # an admin passes the rule and meets the next one: the VM is on no host
    assert api.call("POST", f"/vms/{created['id']}/devices", 422, json={"disk": {"source": "/etc/x"}})["field"] == \
        "disk.source"
    assert api.call("POST", f"/vms/{created['id']}/devices", 409, json={"disk": {"source": "/srv/images/x"}})[
        "field"] == "vm"
