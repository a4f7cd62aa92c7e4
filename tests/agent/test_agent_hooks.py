"""Operator hooks: executable scripts in ``<hooks-dir>/<point>/``, run in name order on the domain XML.

Exit 0 is fine, 1 a warning reported in the response, 2 (or any other status, or a timeout) fails the
operation before libvirt is asked to do it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from corral.agent.service import Agent

from .conftest import Api, spec, wait_for


def hook(hooks_dir: Path, point: str, name: str, body: str, executable: bool = True) -> Path:
    folder = hooks_dir / point
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755 if executable else 0o644)
    return script


ADD_DESCRIPTION = "sed -i 's|</name>|</name><description>set by a hook</description>|' \"$CORRAL_DOMXML\""


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    path = tmp_path / "hooks"
    path.mkdir()
    return path


@pytest.fixture
def hooked(agent_factory: Callable[..., Agent], hooks_dir: Path, emulate: str | None) -> Api:
    return Api(agent_factory(emulate, hooks_dir=hooks_dir, hook_timeout=5.0))


def test_a_hook_rewrites_the_domain_xml_and_libvirt_gets_it(hooked: Api, hooks_dir: Path) -> None:
    hook(hooks_dir, "before_vm_start", "50-describe", ADD_DESCRIPTION)
    vm_id = hooked.create(spec())["id"]
    info = hooked.post(f"/v1/vms/{vm_id}/start", expect=200).json()
    assert info["state"] == "up" and "warnings" not in info
    dom = hooked.conn().lookupByUUIDString(vm_id)
    assert dom.isActive()
    assert "<description>set by a hook</description>" in dom.XMLDesc(0)
    assert "<description>set by a hook</description>" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    # the VM is still Corral's: its spec came through the rewrite
    assert hooked.get(f"/v1/vms/{vm_id}", expect=200).json()["external"] is False


def test_a_rewriting_hook_keeps_the_vnc_password(agent_factory: Callable[..., Agent], hooks_dir: Path) -> None:
    api = Api(agent_factory("kvm", hooks_dir=hooks_dir))
    hook(hooks_dir, "before_vm_start", "50-describe", ADD_DESCRIPTION)
    vm_id = api.create(spec(graphics={"password": "pw123"}))["id"]
    api.post(f"/v1/vms/{vm_id}/start", expect=200)
    secure = api.conn().lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE
                                                           | libvirt.VIR_DOMAIN_XML_SECURE)
    assert "set by a hook" in secure and "passwd='pw123'" in secure


def test_hooks_run_in_name_order_each_on_the_previous_ones_xml(hooked: Api, hooks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hook(hooks_dir, "before_vm_start", "20-second",
         f"grep -q 'set by a hook' \"$CORRAL_DOMXML\" || exit 2\n"
         f"sed -i 's|set by a hook|set by two hooks|' \"$CORRAL_DOMXML\"\n"
         f"env | grep '^CORRAL_' | sort > {out}/env")
    hook(hooks_dir, "before_vm_start", "10-first", ADD_DESCRIPTION)
    hook(hooks_dir, "before_vm_start", "05-not-executable", "exit 2", executable=False)
    hook(hooks_dir, "after_vm_start", "10-record", f"echo \"$CORRAL_HOOK\" >> {out}/after")
    data = spec()
    hooked.create(data, start=True)
    dom = hooked.conn().lookupByUUIDString(data["id"])
    assert "<description>set by two hooks</description>" in dom.XMLDesc(0)
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    assert env["CORRAL_HOOK"] == "before_vm_start"
    assert env["CORRAL_VM_ID"] == data["id"] and env["CORRAL_VM_NAME"] == data["name"]
    assert not Path(env["CORRAL_DOMXML"]).exists()  # the agent's temporary file is gone
    assert (out / "after").read_text() == "after_vm_start\n"


def test_exit_1_is_a_warning_in_the_response(hooked: Api, hooks_dir: Path) -> None:
    hook(hooks_dir, "before_vm_start", "30-warn", "echo 'disk cache looks cold' >&2; exit 1")
    vm_id = hooked.create(spec())["id"]
    info = hooked.post(f"/v1/vms/{vm_id}/start", expect=200).json()
    assert info["state"] == "up"
    assert len(info["warnings"]) == 1
    assert "30-warn" in info["warnings"][0] and "disk cache looks cold" in info["warnings"][0]
    assert hooked.conn().lookupByUUIDString(vm_id).isActive()


@pytest.mark.parametrize("status", [2, 3])
def test_exit_2_fails_the_start_and_the_vm_is_not_started(hooked: Api, hooks_dir: Path, status: int) -> None:
    hook(hooks_dir, "before_vm_start", "40-veto", f"echo 'maintenance window' >&2; exit {status}")
    vm_id = hooked.create(spec())["id"]
    body = hooked.post(f"/v1/vms/{vm_id}/start", expect=409).json()
    assert body["code"] == "hook_failed"
    assert body["hook"] == "40-veto" and body["exit_status"] == status
    assert "maintenance window" in body["message"] and "before_vm_start" in body["message"]
    dom = hooked.conn().lookupByUUIDString(vm_id)
    assert not dom.isActive()
    assert hooked.get(f"/v1/vms/{vm_id}", expect=200).json()["state"] == "down"
    # create with start=true fails the same way; the VM stays defined and stopped
    data = spec()
    body = hooked.post("/v1/vms?start=true", json=data, expect=409).json()
    assert body["code"] == "hook_failed"
    assert not hooked.conn().lookupByUUIDString(data["id"]).isActive()


def test_a_hook_that_outlives_its_timeout_fails_the_operation(agent_factory: Callable[..., Agent],
                                                              hooks_dir: Path, tmp_path: Path) -> None:
    api = Api(agent_factory("xen", hooks_dir=hooks_dir, hook_timeout=1.0))
    pidfile, finished = tmp_path / "sleeper.pid", tmp_path / "sleeper.finished"
    # the hook's child would write `finished` after 30 s: if it exists, the agent waited for the hook
    hook(hooks_dir, "before_vm_start", "60-slow", f"(sleep 30; touch {finished}) &\necho $! > {pidfile}\nwait")
    vm_id = api.create(spec())["id"]
    body = api.post(f"/v1/vms/{vm_id}/start", expect=409).json()
    assert body["code"] == "hook_failed" and "timed out after 1 s" in body["message"]
    assert not api.conn().lookupByUUIDString(vm_id).isActive()
    # the hook's own children are killed with it, not left running
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 2, "the pid file"))

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie waiting for init is gone too

    wait_for(gone, 5, f"hook child {pid} to be killed")
    assert not finished.exists(), "the hook ran to its end: the agent did not stop it at its timeout"


def test_before_vm_define_rewrites_or_vetoes_the_definition(hooked: Api, hooks_dir: Path) -> None:
    script = hook(hooks_dir, "before_vm_define", "10-describe", ADD_DESCRIPTION)
    data = spec()
    hooked.create(data)
    xml = hooked.conn().lookupByUUIDString(data["id"]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "set by a hook" in xml
    script.write_text("#!/bin/sh\necho 'no VMs on this host' >&2\nexit 2\n")
    data = spec()
    body = hooked.post("/v1/vms", json=data, expect=409).json()
    assert body["code"] == "hook_failed" and "no VMs on this host" in body["message"]
    assert data["name"] not in {d.name() for d in hooked.conn().listAllDomains(0)}


def test_a_failing_before_vm_destroy_hook_keeps_the_vm_running(hooked: Api, hooks_dir: Path) -> None:
    vm_id = hooked.create(spec(), start=True)["id"]
    hook(hooks_dir, "before_vm_destroy", "10-protect", "echo protected >&2; exit 2")
    body = hooked.post(f"/v1/vms/{vm_id}/destroy", expect=409).json()
    assert body["code"] == "hook_failed" and "protected" in body["message"]
    assert hooked.conn().lookupByUUIDString(vm_id).isActive()


def test_no_hooks_dir_means_no_hooks(agent_factory: Callable[..., Agent], tmp_path: Path) -> None:
    api = Api(agent_factory(hooks_dir=tmp_path / "does-not-exist"))
    info = api.create(spec(id=str(uuid.uuid4())), start=True)
    assert info["state"] == "up" and "warnings" not in info


def test_failing_after_hooks_are_warnings_in_the_answers(hooked: Api, hooks_dir: Path) -> None:
    """The action has happened when an after_* hook runs: its failure is reported in the answer, not an error.
    (The device hooks run only around a live attach or detach, which the test driver does not have.)"""
    vm_id = hooked.create(spec(), start=True)["id"]
    for point in ("after_vm_destroy", "after_vm_shutdown"):
        hook(hooks_dir, point, "10-fail", f"echo '{point} went wrong' >&2; exit 2")
    destroyed = hooked.post(f"/v1/vms/{vm_id}/destroy", expect=200).json()
    assert destroyed["state"] == "down" and any("after_vm_destroy went wrong" in w for w in destroyed["warnings"])
    hooked.post(f"/v1/vms/{vm_id}/start", expect=200)
    stopped = hooked.post(f"/v1/vms/{vm_id}/shutdown", json={"timeout": 0, "force": True}, expect=200).json()
    assert stopped["state"] == "down"
    assert any("after_vm_shutdown went wrong" in w for w in stopped["warnings"])
