"""On the QEMU lab (issue 12): a VM created from an uploaded qcow2 image with ``image=``/``size_bytes`` boots,
its disk a qcow2 overlay whose backing file is the image, grown to the size asked (read by the agent and by
``qemu-img info``); the VM sealed as a template and a VM cloned from it boot too; the image and template are
not deleted while clones read them; everything is removed afterwards (the lab's libvirtd is shared)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.engine.test_images import Engine, LabAgent, engine, lab_engine  # noqa: F401 - fixtures used here
from tests.engine.test_with_agents import eventually
from tests.qemulab import qemu_lab

MiB = 1 << 20
MARKER = "CORRAL-GUEST-UP"


def qemu_img_info(path: str) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output", "json", path], capture_output=True, check=True)
    return dict(json.loads(out.stdout))


def boot(eng: Engine, vm_id: str) -> None:
    task = eng.wait_task(eng.call("POST", f"/vms/{vm_id}/start", 202), timeout=120)
    assert task["state"] == "succeeded", task
    eventually(lambda: MARKER in eng.call("GET", f"/vms/{vm_id}/console", 200)["log"], 90)


def stop(eng: Engine, vm_id: str) -> None:
    assert eng.wait_task(eng.call("POST", f"/vms/{vm_id}/stop", 202, json={}))["state"] == "succeeded"


@pytest.mark.qemulab
def test_vm_from_image_and_template_clone_boot(lab_engine: tuple[Engine, str, Path, LabAgent],  # noqa: F811
                                               tmp_path: Path) -> None:
    eng, pool, where, agent = lab_engine
    lab = qemu_lab()
    assert lab is not None
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "c.img"), "64M"], check=True)
    img = eng.upload("cloud", (tmp_path / "c.img").read_bytes(), 201, storage=pool)
    assert (img["format"], img["capacity_bytes"]) == ("qcow2", 64 * MiB)
    name = f"ci-{uuid.uuid4().hex[:6]}"
    guest = {"memory_mib": 192, "vcpus": 1, "kernel": str(lab.kernel), "initrd": str(lab.initrd),
             "cmdline": "console=ttyS0 panic=-1"}
    assert eng.call("POST", "/vms", 422, json={**guest, "name": name, "disks": [
        {"image": "cloud", "size_bytes": 32 * MiB}]})["field"] == "disks.0.size_bytes"
    vm = eng.call("POST", "/vms", 201, json={**guest, "name": name, "disks": [
        {"image": "cloud", "size_bytes": 128 * MiB}]})
    clone_name = vm["spec"]["disks"][0]["volume"]
    try:
        boot(eng, vm["id"])
        shown = agent.call("GET", f"/v1/storage/pools/{pool}/volumes/{clone_name}").json()
        assert (shown["format"], shown["backing"], shown["capacity_bytes"]) == ("qcow2", img["path"], 128 * MiB)
        info = qemu_img_info(shown["path"])
        assert (info["format"], info["virtual-size"], info["backing-filename"]) == ("qcow2", 128 * MiB,
                                                                                    img["path"])
        assert eng.call("DELETE", "/images/cloud", 409)["field"] == "volume"
        stop(eng, vm["id"])

        t = eng.wait_task(eng.call("POST", "/templates", 202, json={"name": f"t-{name}", "vm": name}))
        assert t["state"] == "succeeded", t
        base = t["result"]["volumes"][0]
        assert base["name"] == clone_name
        clone = eng.call("POST", "/vms", 201, json={"name": f"{name}-c", "template": f"t-{name}"})
        try:
            boot(eng, clone["id"])
            made = eng.call("GET", f"/volumes/{clone['spec']['disks'][0]['volume']}", 200)
            info = qemu_img_info(made["path"])
            assert (info["backing-filename"], info["virtual-size"]) == (base["path"], 128 * MiB)
            # the chain: clone -> template base (itself a clone) -> image
            assert info["full-backing-filename"] == base["path"]
            assert qemu_img_info(base["path"])["backing-filename"] == img["path"]
            assert eng.call("DELETE", f"/templates/t-{name}", 409)["field"] == "template"
            stop(eng, clone["id"])
        finally:
            eng.call("DELETE", f"/vms/{clone['id']}", 204, params={"force": "true"})
    finally:
        vms = eng.call("GET", "/vms", 200, params={"name": name})["items"]
        for v in vms:
            if v["state"] not in ("down", "crashed"):
                stop(eng, v["id"])
            eng.call("DELETE", f"/vms/{v['id']}", 204)
        for t in eng.call("GET", "/templates", 200)["items"]:
            assert eng.wait_task(eng.call("DELETE", f"/templates/{t['id']}", 202))["state"] == "succeeded"
        assert eng.wait_task(eng.call("DELETE", "/images/cloud", 202))["state"] == "succeeded"
    assert not any(where.iterdir())
