"""A hook runs as root: it runs only when root (or the agent's user) owns it and its folders and nobody else can
write them (issue 14). Otherwise it is refused with the reason, failing a before_* operation like a failing hook
and warning after an after_* one; never skipped silently. Files really chowned and chmodded (the tests run as
root; elsewhere the ownership cases are skipped)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from corral.agent.service import Agent

from .conftest import Api, spec
from .test_agent_hooks import hook

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    path = tmp_path / "hooks"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture
def hooked(agent_factory: Callable[..., Agent], hooks_dir: Path) -> Api:
    return Api(agent_factory("kvm", hooks_dir=hooks_dir, hook_timeout=5.0))


def refused_start(api: Api, why: str) -> None:
    vm_id = api.create(spec())["id"]
    body = api.post(f"/v1/vms/{vm_id}/start", expect=409).json()
    assert body["code"] == "hook_failed" and body["reason"] == "unsafe_hook", body
    assert "refused" in body["message"] and why in body["message"], body
    dom: libvirt.virDomain = api.conn().lookupByUUIDString(vm_id)
    assert not dom.isActive()


def test_a_group_writable_hook_is_refused(hooked: Api, hooks_dir: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    script = hook(hooks_dir, "before_vm_start", "10-open", f"touch {ran}")
    script.chmod(0o775)
    refused_start(hooked, "writable by group")
    assert not ran.exists()


def test_a_world_writable_hook_folder_is_refused(hooked: Api, hooks_dir: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    script = hook(hooks_dir, "before_vm_start", "10-fine", f"touch {ran}")
    script.parent.chmod(0o757)
    refused_start(hooked, "writable by others")
    assert not ran.exists()


@as_root
def test_a_hook_owned_by_another_user_is_refused(hooked: Api, hooks_dir: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    script = hook(hooks_dir, "before_vm_start", "10-theirs", f"touch {ran}")
    os.chown(script, NOBODY, NOBODY)
    refused_start(hooked, f"owned by uid {NOBODY}")
    assert not ran.exists()


def test_an_unsafe_after_hook_is_a_warning(hooked: Api, hooks_dir: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    hook(hooks_dir, "after_vm_start", "10-open", f"touch {ran}").chmod(0o757)
    vm_id = hooked.create(spec())["id"]
    info = hooked.post(f"/v1/vms/{vm_id}/start", expect=200).json()
    assert info["state"] == "up"
    assert any("refused" in w and "writable by others" in w for w in info["warnings"]), info
    assert not ran.exists()


def test_a_safe_hook_still_runs(hooked: Api, hooks_dir: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    hook(hooks_dir, "before_vm_start", "10-fine", f"touch {ran}")
    vm_id = hooked.create(spec())["id"]
    assert hooked.post(f"/v1/vms/{vm_id}/start", expect=200).json()["state"] == "up"
    assert ran.exists()
