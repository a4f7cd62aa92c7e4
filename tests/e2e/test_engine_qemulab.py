"""The engine with a real agent on the QEMU lab (real libvirtd, QEMU TCG): a VM through the engine and the CLI.

``corral engine serve`` and ``corral agent serve --libvirt qemu:///system --allow-tcg`` run as subprocesses;
the host is added through the REST API, the VM is created, started, stopped and deleted with the ``corral``
command, and the guest's ``CORRAL-GUEST-UP`` marker is read from its serial console through the engine
(``GET /api/v1/vms/{id}/console``, which asks the agent).

As in ``test_agent_qemulab.py``, two things of this host are arranged for the agent and undone afterwards:
it runs in a private mount namespace where ``/dev/kvm`` is an empty read-only file (guests hang under this
host's KVM; without it the agent detects QEMU/TCG, which ``--allow-tcg`` accepts), and an empty Linux bridge
with no uplink gives the KVM host the bridge its hardware check wants and the VM its NIC.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

try:
    from tests.cli.support import CORRAL, Cli, clean_env, eventually, free_port
    from tests.qemulab import lab_unavailable_reason, qemu_lab
    from tests.require import unavailable
except ImportError:  # run as a plain file (rootdir not on sys.path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.cli.support import CORRAL, Cli, clean_env, eventually, free_port
    from tests.qemulab import lab_unavailable_reason, qemu_lab
    from tests.require import unavailable

pytestmark = pytest.mark.qemulab

MARKER = "CORRAL-GUEST-UP"
BOOT_TIMEOUT_S = 60
HIDE_KVM = 'mount --bind "$0" /dev/kvm && mount -o remount,bind,ro /dev/kvm && exec "$@"'


def start(cmd: list[str], log: Path, health: str, what: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), cwd=log.parent)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"{what} did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_engine_runs_a_vm_on_real_qemu(tmp_path: Path) -> None:
    lab = qemu_lab()
    if lab is None:
        unavailable(f"QEMU lab unavailable: {lab_unavailable_reason()}")
    import libvirt

    bridge = "corralen" + uuid.uuid4().hex[:4]
    ip = shutil.which("ip") or "/sbin/ip"
    if subprocess.run([ip, "link", "add", "name", bridge, "type", "bridge"], capture_output=True,
                      check=False).returncode != 0:
        unavailable("cannot add a bridge on this host: the KVM host's hardware check would fail for want of one")
    conn = libvirt.open(lab.uri)
    procs: list[subprocess.Popen[bytes]] = []
    vm_id: str | None = None
    cli = Cli(tmp_path / "config", tmp_path)
    try:
        # ---- the engine, an API token, and the CLI logged in with it
        db = f"sqlite:///{tmp_path / 'engine.db'}"
        token = cli.run("engine", "create-token", "--db", db).stdout.strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(start([*CORRAL, "engine", "serve", "--db", db, "--listen", f"127.0.0.1:{port}", "--no-tls",
                            "--data-dir", str(tmp_path / "engine")], tmp_path / "engine.log",
                           f"{url}/api/health", "the engine"))
        cli.run("login", url, "--token", token)

        # ---- the agent on the real libvirtd, /dev/kvm hidden from it
        agent_token = tmp_path / "agent-token"
        agent_token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
        agent_port = free_port()
        cmd = [*CORRAL, "agent", "serve", "--libvirt", lab.uri, "--allow-tcg", "--listen", f"127.0.0.1:{agent_port}",
               "--token-file", str(agent_token), "--state-dir", str(tmp_path / "agent-state")]
        if Path("/dev/kvm").exists():
            (tmp_path / "no-kvm").write_text("")
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE_KVM, str(tmp_path / "no-kvm"),
                   *cmd]
        procs.append(start(cmd, tmp_path / "agent.log", f"http://127.0.0.1:{agent_port}/v1/health", "the agent"))

        # ---- add the host through the API; it is up: QEMU under TCG, allowed
        with httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            resp = api.post("/hosts", json={"name": "qemu-lab", "url": f"http://127.0.0.1:{agent_port}",
                                            "token": agent_token.read_text()})
            assert resp.status_code == 202, resp.text
            task = eventually(lambda: (t := api.get(f"/tasks/{resp.json()['id']}").json())["state"] in (
                "succeeded", "failed") and t, timeout=60, what="the host added")
            assert task["state"] == "succeeded", task
            host = cli.json("host", "show", "qemu-lab")
            assert (host["state"], host["flavor"], host["hypervisor"], host["accel"]) == ("up", "kvm", "qemu", "tcg"), \
                host
            assert host["emulated"] is False and bridge in host["bridges"]

            # ---- create and start through the CLI; the guest's marker comes through the engine
            disk = tmp_path / "boot.raw"
            shutil.copyfile(lab.disk, disk)
            name = f"corral-e2e-engine-{uuid.uuid4().hex[:8]}"
            created = cli.json("vm", "create", name, "--memory", "192", "--vcpus", "1", "--kernel", str(lab.kernel),
                               "--initrd", str(lab.initrd), "--cmdline", "console=ttyS0 panic=-1",
                               "--disk", f"{disk},format=raw", "--nic", f"bridge={bridge}")
            vm_id = created["id"]
            assert [c["kind"] for c in created["spec"]["consoles"]] == ["serial"], created["spec"]
            plan = cli.json("vm", "plan", name, "--host", "qemu-lab")
            assert (plan["flavor"], plan["ok"]) == ("kvm", True), plan
            t0 = time.monotonic()
            started = cli.json("vm", "start", name)
            assert (started["state"], started["host_name"]) == ("up", "qemu-lab"), started
            dom = conn.lookupByUUIDString(vm_id)
            assert dom.isActive() and dom.name() == name

            def console() -> str:
                r = api.get(f"/vms/{vm_id}/console")
                assert r.status_code == 200, r.text
                return str(r.json()["log"])
            log = eventually(lambda: MARKER in (text := console()) and text, timeout=BOOT_TIMEOUT_S,
                             what=f"{MARKER} on the console", interval=0.5)
            print(f"{MARKER} {time.monotonic() - t0:.1f} s after vm start")
            assert "disks=vda" in log and "cmdline=console=ttyS0 panic=-1" in log.replace("'", "")
            assert MARKER in cli.run("vm", "console", name).stdout
            assert MARKER in cli.json("vm", "console", name)["log"]
            shown = cli.json("vm", "show", name)
            assert shown["devices_source"] == "live" and shown["live"]["state"] == "up"
            assert {d["id"] for d in created["spec"]["disks"]} <= {d["id"] for d in shown["devices"]}
            assert eventually(lambda: api.get(f"/vms/{vm_id}").json()["state"] == "up", timeout=10)

            # ---- stop and delete
            stopped = cli.json("vm", "stop", name)
            assert stopped["state"] == "down" and not dom.isActive()
            assert cli.json("vm", "delete", name)["deleted"] is True
            assert name not in [d.name() for d in conn.listAllDomains(0)]
            assert api.get(f"/vms/{vm_id}").status_code == 404
            events = [e["type"] for e in api.get("/events", params={"object_id": vm_id, "limit": 100}).json()["items"]]
            assert events[0] == "vm_created" and events[-1] == "vm_deleted" and "vm_placed" in events, events
    finally:
        for proc in reversed(procs):
            stop(proc)
        dom = next((d for d in conn.listAllDomains(0) if d.UUIDString() == vm_id), None) if vm_id else None
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()
        subprocess.run([ip, "link", "del", bridge], capture_output=True, check=False)
