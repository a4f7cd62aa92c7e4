"""The operator's scenario, from the engine on the outside, on real hypervisors.

One file proves both: the real Xen 4.17 lab (libvirt's libxl driver in a dom0 booted in QEMU/TCG, agent
inside dom0) and the real libvirtd + QEMU (TCG) lab. Each step checks what libvirt and the hypervisor
really report (virsh/xl in dom0, libvirt-python on the QEMU host), not only what Corral says.

Xen-only steps: NIC link emulated on vifD.N, the console protected by the agent's relay instead of a VNC password,
floppy and network filter refused before anything is defined, the HVM device-model watchdog, on_crash.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engine.agents import free_port

REPO = Path(__file__).resolve().parents[2]
CORRAL = [sys.executable, "-m", "corral"]


@dataclass
class Engine:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url + "/api/v1", timeout=120,
                                 headers={"Authorization": f"Bearer {self.token}"})

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201, 202, 204),
             **kw: Any) -> Any:
        resp = self.http.request(method, path, **kw)
        codes = (expect,) if isinstance(expect, int) else expect
        assert resp.status_code in codes, f"{method} {path} -> {resp.status_code} {resp.text[:2000]}"
        return resp.json() if resp.content else None

    def wait_task(self, task: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while task["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, f"task {task} did not finish"
            time.sleep(0.5)
            task = self.call("GET", f"/tasks/{task['id']}")
        return task

    def run(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        task = self.wait_task(self.call(method, path, expect=202, **kw))
        assert task["state"] == "succeeded", task
        return task


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = f"sqlite:///{tmp_path / 'engine.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    token = subprocess.run([*CORRAL, "engine", "create-token", "--db", db, "--data-dir", str(tmp_path)],
                           capture_output=True, text=True, check=True, env=env, cwd=REPO).stdout.strip()
    port = free_port()
    log = open(tmp_path / "engine.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([*CORRAL, "engine", "serve", "--db", db, "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(tmp_path), "--no-tls"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=REPO, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp_path / "engine.log").read_text()[-3000:]
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "engine did not start"
        time.sleep(0.3)
    eng = Engine(url, token, proc)
    try:
        yield eng
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Backend:
    """One real hypervisor host: how to reach its agent and how to look at it behind Corral's back."""

    kind: str  # "xen" | "qemu"
    agent_url: str
    agent_token: str
    bridge: str
    kernel: str
    initrd: str
    console: str  # spec console kind
    cmdline: str
    marker: str
    sh: Callable[[str], str]  # run a shell command on the host, return stdout
    virsh: str
    make_qcow2: Callable[[str], str]
    media: str  # a file to insert as CD-ROM media
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def _xen_backend() -> Backend:
    from tests.require import unavailable
    from tests.xenlab import lab_unavailable_reason, xen_lab

    lab = xen_lab()
    if lab is None:
        unavailable(f"Xen lab unavailable: {lab_unavailable_reason()}")

    def sh(cmd: str) -> str:
        proc = lab.ssh(cmd, timeout=180)
        return proc.stdout

    def qcow2(name: str) -> str:
        path = f"/var/lib/corral-lab/{name}.qcow2"
        sh(f"qemu-img create -f qcow2 {path} 64M >/dev/null")
        return path

    return Backend("xen", lab.agent_url, lab.agent_token, "xenbr0", str(lab.guest_kernel), str(lab.guest_initrd),
                   "pv", "console=hvc0", "CORRAL-XEN-GUEST-UP", sh, "virsh -c xen:///system", qcow2,
                   str(lab.mbr_disk))


def _qemu_backend(tmp: Path) -> Backend:
    from tests.qemulab import lab_unavailable_reason, qemu_lab
    from tests.require import unavailable

    lab = qemu_lab()
    if lab is None:
        unavailable(f"QEMU lab unavailable: {lab_unavailable_reason()}")
    bridge = "corraltest0"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], capture_output=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    token = secrets.token_urlsafe(24)
    (tmp / "agent-token").write_text(token)
    port = free_port()
    log = open(tmp / "agent.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([*CORRAL, "agent", "serve", "--libvirt", lab.uri, "--listen", f"127.0.0.1:{port}",
                             "--token-file", str(tmp / "agent-token"), "--state-dir", str(tmp / "agent"),
                             "--accel", "tcg"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp / "agent.log").read_text()[-3000:]
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.3)

    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120).stdout

    def qcow2(name: str) -> str:
        path = str(tmp / f"{name}.qcow2")
        subprocess.run(["qemu-img", "create", "-f", "qcow2", path, "64M"], check=True, capture_output=True)
        return path

    media = tmp / "media.raw"
    shutil.copy(lab.disk, media)
    backend = Backend("qemu", url, token, bridge, str(lab.kernel), str(lab.initrd), "serial", "console=ttyS0",
                      "CORRAL-GUEST-UP", sh, f"virsh -c {lab.uri}", qcow2, str(media))

    def stop() -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)

    backend.cleanup.append(stop)
    return backend


@pytest.fixture(params=[pytest.param("xen", marks=pytest.mark.xenlab, id="xen-lab"),
                        pytest.param("qemu", marks=pytest.mark.qemulab, id="qemu-lab")])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = _xen_backend() if request.param == "xen" else _qemu_backend(tmp_path)
    try:
        yield b
    finally:
        for fn in b.cleanup:
            fn()


def _undefine(b: Backend, name: str) -> None:
    b.sh(f"{b.virsh} destroy {name} >/dev/null 2>&1; {b.virsh} undefine {name} >/dev/null 2>&1; true")


def _wait(pred: Callable[[], Any], timeout: float, what: str, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def _add_host(engine: Engine, b: Backend) -> dict[str, Any]:
    engine.run("POST", "/hosts", json={"name": f"{b.kind}-host", "url": b.agent_url, "token": b.agent_token})
    hosts = engine.call("GET", "/hosts", params={"name": f"{b.kind}-host"})["items"]
    assert len(hosts) == 1
    return dict(engine.call("GET", f"/hosts/{hosts[0]['id']}"))


def _decisions(engine: Engine, vm_id: str, host_id: str) -> dict[str, dict[str, Any]]:
    plan = engine.call("GET", f"/vms/{vm_id}/plan", params={"host": host_id})
    return {d["path"]: d for d in plan["decisions"]}


def _console(engine: Engine, vm_id: str) -> str:
    return str(engine.call("GET", f"/vms/{vm_id}/console", params={"tail": 200000}).get("log") or "")


def test_scenario(engine: Engine, backend: Backend) -> None:
    b = backend
    xen = b.kind == "xen"
    name = f"scn-{uuid.uuid4().hex[:6]}"
    b.cleanup.append(lambda: _undefine(b, name))

    # 1. the host is detected for what it is, and passes a hardware check fit for it
    host = _add_host(engine, b)
    assert host["state"] == "up", host
    check = host["info"]["hardware_check"]
    assert check["ok"], check
    if xen:
        assert host["hypervisor"] == "xen" and host["flavor"] == "xen" and not host["emulated"]
        assert "control_d" in repr(host["info"]["detection"])
        assert b.sh("test -e /dev/kvm && echo present || echo absent").strip() == "absent"
    else:
        assert host["hypervisor"] == "qemu" and host["flavor"] == "kvm" and host["accel"] == "tcg"

    # 2. a VM asking for KVM-style devices; its plan for this host
    spec = {
        "name": name, "memory_mib": 128, "max_memory_mib": 256, "vcpus": 1, "max_vcpus": 2,
        "guest_type": "pv" if xen else "hvm", "kernel": b.kernel, "initrd": b.initrd, "cmdline": b.cmdline,
        "disks": [{"source": b.make_qcow2(name), "format": "qcow2", "bus": "virtio"}, {"device": "cdrom"}],
        "nics": [{"source": b.bridge, "model": "virtio"}],
        "graphics": {"type": "vnc", "listen": "127.0.0.1", "password": "secret"},
        "consoles": [{"kind": b.console}], "guest_agent": {}, "balloon": {},
    }
    vm = engine.call("POST", "/vms", json=spec, expect=201)
    vm_id = vm["id"]
    decisions = _decisions(engine, vm_id, host["id"])
    assert not [d for d in decisions.values() if d["outcome"] == "refused"], decisions
    if xen:
        for path in ("disks.0.bus", "nics.0.model", "graphics.password", "guest_agent", "balloon"):
            assert decisions[path]["outcome"] == "translated", decisions[path]
        assert "relay" in decisions["graphics.password"]["detail"]
    else:
        for path in ("disks.0.bus", "nics.0.model", "guest_agent", "balloon"):
            assert decisions[path]["outcome"] == "native", decisions[path]

    # 3. start: the guest boots and its marker shows in the console log read through Corral
    engine.run("POST", f"/vms/{vm_id}/start", json={"host": host["id"]})
    assert "running" in b.sh(f"{b.virsh} domstate {name}")
    _wait(lambda: b.marker in _console(engine, vm_id), 400, "the guest's console marker", every=3)

    # 4. live devices are matched to the spec's devices
    detail = engine.call("GET", f"/vms/{vm_id}")
    spec_now = detail["spec"]
    found = {d["id"]: d for d in detail["devices"] if d.get("id")}
    expect = [spec_now["disks"][0]["id"], spec_now["nics"][0]["id"], spec_now["graphics"]["id"],
              spec_now["consoles"][0]["id"], spec_now["guest_agent"]["id"], spec_now["balloon"]["id"]]
    if not xen:
        expect.append(spec_now["disks"][1]["id"])  # on Xen PV an empty CD-ROM has no drive until media goes in
    for dev_id in expect:
        assert dev_id in found, (dev_id, detail["devices"])
        assert found[dev_id]["matched_by"] in ("alias", "mac", "target", "source", "order")
    nic_id, cd_id, gfx_id = spec_now["nics"][0]["id"], spec_now["disks"][1]["id"], spec_now["graphics"]["id"]

    # 5a. NIC link down and up
    engine.call("PATCH", f"/vms/{vm_id}/devices/{nic_id}", json={"link": "down"})
    if xen:
        vif = found[nic_id]["vif"]
        assert re.match(r"vif\d+\.\d+$", vif), vif
        flags = b.sh(f"ip -br link show {vif}")
        assert "<" in flags and ",UP" not in flags and "<UP" not in flags, flags
    else:
        mac = found[nic_id]["mac"]
        assert "down" in b.sh(f"{b.virsh} domif-getlink {name} {mac}")
    engine.call("PATCH", f"/vms/{vm_id}/devices/{nic_id}", json={"link": "up"})
    if xen:
        assert ",UP" in b.sh(f"ip -br link show {vif}") or "<UP" in b.sh(f"ip -br link show {vif}")
    else:
        assert "up" in b.sh(f"{b.virsh} domif-getlink {name} {mac}")

    # 5b. CD-ROM media change: live on KVM; on Xen PV refused by field before anything changes (libxl cannot
    # change a running PV CD-ROM's media [X6]; the read-only PV disk once plugged instead was dropped by qdisk)
    if xen:
        resp = engine.http.patch(f"/vms/{vm_id}/devices/{cd_id}", json={"media": b.media})
        assert resp.status_code == 409 and resp.json()["field"] == "media", resp.text
        assert b.media not in b.sh(f"{b.virsh} domblklist {name}")
    else:
        engine.call("PATCH", f"/vms/{vm_id}/devices/{cd_id}", json={"media": b.media})
        assert b.media in b.sh(f"{b.virsh} domblklist {name}")
        engine.call("PATCH", f"/vms/{vm_id}/devices/{cd_id}", json={"media": None})
        assert b.media not in b.sh(f"{b.virsh} domblklist {name}")

    # 5c. balloon target and vCPUs within max
    engine.call("PUT", f"/vms/{vm_id}/memory", json={"memory_mib": 200})
    if xen:
        mem = _wait(lambda: re.search(rf"^{name}\s+\d+\s+(\d+)", b.sh(f"xl list {name}"), re.M), 60, "xl list")
        assert abs(int(mem.group(1)) - 200) <= 8, mem.group(0)
    else:
        def used_kib() -> int:
            out = b.sh(f"{b.virsh} dominfo {name}")
            found = re.search(r"Used memory:\s+(\d+) KiB", out)
            return int(found.group(1)) if found else 0
        _wait(lambda: abs(used_kib() - 200 * 1024) <= 8 * 1024, 90, "the guest to deflate its balloon to 200 MiB")
    engine.call("PUT", f"/vms/{vm_id}/vcpus", json={"vcpus": 2})
    assert b.sh(f"{b.virsh} vcpucount {name} --live --current").strip() == "2"
    too_many = engine.http.put(f"/vms/{vm_id}/vcpus", json={"vcpus": 3})
    assert too_many.status_code == 422 and too_many.json()["field"] == "vcpus"

    # 5d. VNC password change: refused on Xen with what protects the console instead
    resp = engine.http.patch(f"/vms/{vm_id}/devices/{gfx_id}", json={"password": "other"})
    if xen:
        assert resp.status_code == 409, resp.text
        assert resp.json()["code"] == "unsupported" and "relay" in resp.json()["message"]
        assert "passwd" not in b.sh(f"{b.virsh} dumpxml --security-info {name} | grep graphics")
    else:
        assert resp.status_code == 200, resp.text
        assert "passwd='other'" in b.sh(f"{b.virsh} dumpxml --security-info {name} | grep graphics")

    # 6. graceful stop: shutdown, then destroy after the timeout (Xen refuses graceful destroy)
    engine.run("POST", f"/vms/{vm_id}/stop", json={"timeout": 20})
    assert "shut off" in b.sh(f"{b.virsh} domstate {name}")
    assert engine.call("GET", f"/vms/{vm_id}")["state"] == "down"
    engine.call("DELETE", f"/vms/{vm_id}", expect=204)
    assert name not in b.sh(f"{b.virsh} list --all --name")

    if not xen:
        return

    # 7. a floppy or a network filter is refused before anything is changed on the host
    before = b.sh(f"{b.virsh} list --all --name")
    for extra, field_path in (({"disks": [{"source": b.media, "device": "floppy"}]}, "disks.0.device"),
                              ({"nics": [{"source": b.bridge, "filter": "clean-traffic"}]}, "nics.0.filter")):
        bad = {**spec, **extra, "name": f"{name}-bad"}
        bad_vm = engine.call("POST", "/vms", json=bad, expect=201)
        assert _decisions(engine, bad_vm["id"], host["id"])[field_path]["outcome"] == "refused"
        task = engine.wait_task(engine.call("POST", f"/vms/{bad_vm['id']}/start", expect=202,
                                            json={"host": host["id"]}))
        assert task["state"] == "failed", task
        assert field_path in repr(task["error"]), task["error"]
        engine.call("DELETE", f"/vms/{bad_vm['id']}", expect=204)
    assert b.sh(f"{b.virsh} list --all --name") == before


def test_xen_hvm_device_model_lost(engine: Engine, backend: Backend) -> None:
    """Kill an HVM domain's qemu in dom0: libvirt stays silent, Corral reports device_model_lost and
    applies the VM's policy (destroy -> crashed)."""
    b = backend
    if b.kind != "xen":
        pytest.skip("the device-model watchdog is a Xen feature")
    name = f"hvm-{uuid.uuid4().hex[:6]}"
    b.cleanup.append(lambda: _undefine(b, name))
    host = _add_host(engine, b)
    disk = f"/var/lib/corral-lab/{name}.img"
    b.sh(f"cp {b.media} {disk}")
    spec = {"name": name, "memory_mib": 64, "guest_type": "hvm", "boot": ["hd"],
            "disks": [{"source": disk, "bus": "ide"}], "consoles": [{"kind": "serial"}], "balloon": None,
            "on_device_model_lost": "destroy"}
    vm = engine.call("POST", "/vms", json=spec, expect=201)
    engine.run("POST", f"/vms/{vm['id']}/start", json={"host": host["id"]})
    _wait(lambda: "CORRAL-XEN-MBR-UP" in _console(engine, vm["id"]), 300, "the MBR marker", every=3)
    domid = b.sh(f"{b.virsh} domid {name}").strip()
    pid = b.sh(f"xenstore-read /local/domain/{domid}/image/device-model-pid").strip()
    assert pid.isdigit(), pid
    b.sh(f"kill -9 {pid}")
    _wait(lambda: engine.call("GET", f"/vms/{vm['id']}")["state"] == "crashed", 120, "state crashed")
    events = engine.call("GET", "/events", params={"object_id": vm["id"], "limit": 200})["items"]
    assert any("device_model_lost" in repr(e) for e in events), events
    assert name not in b.sh("xl list")  # the policy destroyed it
    engine.call("DELETE", f"/vms/{vm['id']}", expect=204)


@pytest.mark.parametrize("policy,end", [("destroy", "crashed"), ("restart", "up"),
                                        ("coredump-destroy", "crashed"), ("coredump-restart", "up")])
def test_xen_on_crash_policies(engine: Engine, backend: Backend, policy: str, end: str) -> None:
    """A guest kernel crash with each on_crash policy Corral offers ends in the state Corral reports."""
    b = backend
    if b.kind != "xen":
        pytest.skip("on_crash is measured on Xen")
    name = f"crash-{policy}-{uuid.uuid4().hex[:4]}"
    b.cleanup.append(lambda: _undefine(b, name))
    host = _add_host(engine, b)
    spec = {"name": name, "memory_mib": 128, "guest_type": "pv", "kernel": b.kernel, "initrd": b.initrd,
            "cmdline": "console=hvc0 corral_crash=5", "consoles": [{"kind": "pv"}], "on_crash": policy}
    vm = engine.call("POST", "/vms", json=spec, expect=201)
    engine.run("POST", f"/vms/{vm['id']}/start", json={"host": host["id"]})
    first_id = b.sh(f"{b.virsh} domid {name}").strip()
    if end == "crashed":
        _wait(lambda: engine.call("GET", f"/vms/{vm['id']}")["state"] == "crashed", 400, "state crashed", 3)
        assert "shut off" in b.sh(f"{b.virsh} domstate {name}")
        # with a core dump, Xen keeps the crashed domain ('---sc-') until the dump is written
        _wait(lambda: name not in b.sh("xl list"), 300, "Xen to release the crashed domain", 5)
    else:
        _wait(lambda: b.sh(f"{b.virsh} domid {name}").strip() not in ("", first_id, "-"), 400, "a new domain", 3)
        _wait(lambda: engine.call("GET", f"/vms/{vm['id']}")["state"] == "up", 60, "state up")
        assert "running" in b.sh(f"{b.virsh} domstate {name}")
    if policy.startswith("coredump"):
        assert name in b.sh("ls /var/lib/libvirt/libxl/dump/ 2>/dev/null")
    engine.http.post(f"/vms/{vm['id']}/stop")
    _wait(lambda: engine.call("GET", f"/vms/{vm['id']}")["state"] in ("down", "crashed"), 120, "down")
    engine.call("DELETE", f"/vms/{vm['id']}", expect=(204, 409))


@pytest.fixture
def xen_backend() -> Iterator[Backend]:
    b = _xen_backend()
    try:
        yield b
    finally:
        for fn in b.cleanup:
            fn()


def _events_of(engine: Engine, vm_id: str) -> str:
    return repr(engine.call("GET", "/events", params={"object_id": vm_id, "limit": 500})["items"])


@pytest.mark.xenlab
def test_xen_a_shutdown_the_guest_ignores_fails_and_says_so(engine: Engine, xen_backend: Backend) -> None:
    """Issue 20 item 1: the lab's busybox PV guest ignores the shutdown request; the task used to succeed."""
    b = xen_backend
    name = f"shut-{uuid.uuid4().hex[:6]}"
    b.cleanup.append(lambda: _undefine(b, name))
    host = _add_host(engine, b)
    spec = {"name": name, "memory_mib": 128, "guest_type": "pv", "kernel": b.kernel, "initrd": b.initrd,
            "cmdline": b.cmdline, "consoles": [{"kind": "pv"}]}
    vm = engine.call("POST", "/vms", json=spec, expect=201)
    engine.run("POST", f"/vms/{vm['id']}/start", json={"host": host["id"]})
    _wait(lambda: b.marker in _console(engine, vm["id"]), 400, "the guest's console marker", every=3)
    task = engine.wait_task(engine.call("POST", f"/vms/{vm['id']}/shutdown", json={"timeout": 5}, expect=202))
    assert task["state"] == "failed", task
    assert "did not stop within 5 s" in repr(task["error"]), task["error"]
    assert engine.call("GET", f"/vms/{vm['id']}")["state"] == "up"
    assert "running" in b.sh(f"{b.virsh} domstate {name}")
    engine.run("POST", f"/vms/{vm['id']}/stop", json={"timeout": 3})
    assert engine.call("GET", f"/vms/{vm['id']}")["state"] == "down"
    engine.call("DELETE", f"/vms/{vm['id']}", expect=204)


@pytest.mark.xenlab
def test_xen_hvm_stop_ends_down_and_cdroms_work(engine: Engine, xen_backend: Backend) -> None:
    """Issue 20 items 2 and 3: stopping an HVM guest ended as `crashed` (the watchdog took the agent's own destroy
    for a lost device model); an empty HVM CD-ROM was rendered on the phy backend and the start failed."""
    b = xen_backend
    name = f"hvmcd-{uuid.uuid4().hex[:6]}"
    b.cleanup.append(lambda: _undefine(b, name))
    host = _add_host(engine, b)
    disk = f"/var/lib/corral-lab/{name}.img"
    media = f"/var/lib/corral-lab/{name}-media.iso"
    b.sh(f"cp {b.media} {disk}; cp {b.media} {media}")
    b.cleanup.append(lambda: b.sh(f"rm -f {disk} {media}"))
    spec = {"name": name, "memory_mib": 64, "guest_type": "hvm", "boot": ["hd"],
            # an empty CD-ROM of type block (as libvirt's own Xen test domains have it), and one for media
            "disks": [{"source": disk, "bus": "ide"}, {"device": "cdrom", "source_type": "block"}, {"device": "cdrom"}],
            "consoles": [{"kind": "serial"}], "balloon": None, "on_device_model_lost": "destroy"}
    vm = engine.call("POST", "/vms", json=spec, expect=201)
    vm_id = vm["id"]
    plan = _decisions(engine, vm_id, host["id"])
    assert plan["disks.1.driver"]["outcome"] == "translated" and "qdisk" in plan["disks.1.driver"]["detail"]
    assert not [d for d in plan.values() if d["outcome"] == "refused"], plan
    other = f"/var/lib/corral-lab/{name}-other.iso"
    b.sh(f"cp {b.media} {other}")
    b.cleanup.append(lambda: b.sh(f"rm -f {other}"))
    for round_ in range(2):
        engine.run("POST", f"/vms/{vm_id}/start", json={"host": host["id"]})
        _wait(lambda: "CORRAL-XEN-MBR-UP" in _console(engine, vm_id), 300, "the MBR marker", every=3)
        cd_id = engine.call("GET", f"/vms/{vm_id}")["spec"]["disks"][2]["id"]
        if round_ == 0:  # X4: media into a drive that started empty would crash qemu: refused, nothing changes
            resp = engine.http.patch(f"/vms/{vm_id}/devices/{cd_id}", json={"media": media})
            assert resp.status_code == 409 and resp.json()["code"] == "unsupported", resp.text
            assert "while the VM is down" in resp.json()["message"], resp.text
            assert media not in b.sh(f"{b.virsh} domblklist {name}")
        else:  # started with media: change, eject and insert live
            assert media in b.sh(f"{b.virsh} domblklist {name}")
            for now in (other, None, media):
                engine.call("PATCH", f"/vms/{vm_id}/devices/{cd_id}", json={"media": now})
                listed = b.sh(f"{b.virsh} domblklist {name}")
                assert (now or "-") in listed and (now == media or media not in listed), listed
        time.sleep(5)  # two watchdog cycles see the running device model before the stop
        assert engine.call("GET", f"/vms/{vm_id}")["state"] == "up"
        engine.run("POST", f"/vms/{vm_id}/stop")
        time.sleep(5)  # and two more after it: a late false loss would show now
        assert engine.call("GET", f"/vms/{vm_id}")["state"] == "down"
        assert "device_model_lost" not in _events_of(engine, vm_id)
        assert "crashed" not in _events_of(engine, vm_id)
        if round_ == 0:  # inserted while down (the engine changes a stopped VM's spec): in the drive at next start
            stopped = engine.call("GET", f"/vms/{vm_id}")["spec"]
            stopped["disks"][2]["source"] = media
            engine.call("PUT", f"/vms/{vm_id}", json=stopped)
    engine.call("DELETE", f"/vms/{vm_id}", expect=204)


@pytest.mark.xenlab
def test_xen_host_identity_and_domain0(engine: Engine, xen_backend: Backend) -> None:
    """Issue 20 item 8 on a real dom0: one identity per host (the same agent under another URL is refused),
    Domain-0 (all-zero UUID on every Xen host) is the host's control domain, not a VM row, and the agent's
    backlog from before the add is not recorded as new."""
    b = xen_backend
    host = _add_host(engine, b)
    assert host["host_uuid"] and host["host_uuid"] != "00000000-0000-0000-0000-000000000000"
    again = engine.http.post("/hosts", json={"name": "xen-host-again", "token": b.agent_token,
                                             "url": b.agent_url.replace("127.0.0.1", "localhost")})
    assert again.status_code == 409, again.text
    assert again.json()["field"] == "url" and "xen-host" in again.json()["message"]
    _wait(lambda: (engine.call("GET", f"/hosts/{host['id']}").get("control_domain") or {}).get("name"), 60,
          "the control domain in the host record")
    dom0 = engine.call("GET", f"/hosts/{host['id']}")["control_domain"]
    assert dom0["name"] == "Domain-0" and dom0["state"] == "up"
    vms = engine.call("GET", "/vms", params={"limit": 500})["items"]
    assert not [v for v in vms if v["id"] == "00000000-0000-0000-0000-000000000000" or v["name"] == "Domain-0"]
    added = engine.call("GET", "/events", params={"limit": 500})["items"]
    assert not [e for e in added if "device_model_lost" in repr(e)], "the agent's backlog was replayed"
