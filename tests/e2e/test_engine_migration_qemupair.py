"""Live migration through the engine and the CLI on the QEMU pair (labs/qemu-pair, issue 13).

``corral engine serve`` and two ``corral agent serve --allow-tcg`` (one per libvirtd of the pair, /dev/kvm
hidden from them as in test_engine_qemulab.py, an empty bridge for the KVM hardware check) run as processes. A
lab guest started on A is migrated with ``corral vm migrate`` without a host: the scheduler picks B, the
progress line is printed, the engine shows the VM on B with the same spec (device ids, console), and the guest
ticks on B with its uptime continuing (read through the engine's console route, from B's agent). Then a
migration back to A limited to 1 MiB/s is cancelled with ``corral task cancel``: the task fails as cancelled,
the VM is up on B still, with an event saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.cli.support import CORRAL, Cli, eventually, free_port
from tests.e2e.test_engine_qemulab import HIDE_KVM, start, stop
from tests.qemupair import pair_unavailable_reason, qemu_pair
from tests.require import unavailable

pytestmark = pytest.mark.qemulab

UPTIME = re.compile(r"CORRAL-GUEST-(?:TICK|UP).*? uptime=([0-9.]+)")


def test_engine_migrates_a_running_guest_and_cancels_one(tmp_path: Path) -> None:
    pair = qemu_pair()
    if pair is None:
        unavailable(f"QEMU pair lab unavailable: {pair_unavailable_reason()}")
    assert pair is not None
    import libvirt

    bridge = "corralmg" + uuid.uuid4().hex[:4]
    ip = shutil.which("ip") or "/sbin/ip"
    if subprocess.run([ip, "link", "add", "name", bridge, "type", "bridge"], capture_output=True,
                      check=False).returncode != 0:
        unavailable("cannot add a bridge on this host: the KVM host's hardware check would fail for want of one")
    procs: list[subprocess.Popen[bytes]] = []
    vm_id: str | None = None
    cli = Cli(tmp_path / "config", tmp_path)
    tmp_path.chmod(0o755)
    try:
        db = f"sqlite:///{tmp_path / 'engine.db'}"
        token = cli.run("engine", "create-token", "--db", db).stdout.strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(start([*CORRAL, "engine", "serve", "--db", db, "--listen", f"127.0.0.1:{port}",
                            "--data-dir", str(tmp_path / "engine"), "--no-tls"], tmp_path / "engine.log",
                           f"{url}/api/health", "the engine"))
        cli.run("login", url, "--token", token)
        agent_token = tmp_path / "agent-token"
        agent_token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
        (tmp_path / "no-kvm").write_text("")
        with httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            for side, uri in (("a", pair.a_uri), ("b", pair.b_uri)):
                agent_port = free_port()
                cmd = [*CORRAL, "agent", "serve", "--libvirt", uri, "--allow-tcg", "--listen",
                       f"127.0.0.1:{agent_port}", "--token-file", str(agent_token), "--state-dir",
                       str(tmp_path / f"agent-{side}")]
                if Path("/dev/kvm").exists():
                    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE_KVM,
                           str(tmp_path / "no-kvm"), *cmd]
                procs.append(start(cmd, tmp_path / f"agent-{side}.log", f"http://127.0.0.1:{agent_port}/v1/health",
                                   f"agent {side}"))
                resp = api.post("/hosts", json={"name": f"pair-{side}", "url": f"http://127.0.0.1:{agent_port}",
                                                "token": agent_token.read_text()})
                assert resp.status_code == 202, resp.text
                task = eventually(lambda r=resp: (t := api.get(f"/tasks/{r.json()['id']}").json())["state"] in (
                    "succeeded", "failed") and t, timeout=60, what="the host added")
                assert task["state"] == "succeeded", task

            name = f"corral-e2e-emig-{uuid.uuid4().hex[:8]}"
            created = cli.json("vm", "create", name, "--memory", "128", "--vcpus", "1", "--kernel", str(pair.kernel),
                               "--initrd", str(pair.initrd), "--cmdline", "console=ttyS0 panic=-1")
            vm_id = created["id"]
            assert cli.json("vm", "start", name, "--host", "pair-a")["host_name"] == "pair-a"

            def uptimes() -> list[float]:
                r = api.get(f"/vms/{vm_id}/console")
                return [float(u) for u in UPTIME.findall(r.json()["log"])] if r.status_code == 200 else []
            eventually(lambda: [u for u in uptimes() if u >= 10], timeout=90, what="a tick at 10 s", interval=0.5)
            before = max(uptimes())
            shown_before = cli.json("vm", "show", name)

            # ---- no host named: the scheduler's choice is the other host; progress on stderr
            moved = cli.run("vm", "migrate", name, "--bandwidth", "32", timeout=300)
            assert f"{name}: on pair-b (from pair-a" in moved.stdout, moved.stdout
            assert re.search(r"\.\.\. migrating to pair-b: \d+% \(\d+/\d+ MiB\)", moved.stderr), moved.stderr
            shown = cli.json("vm", "show", name)
            assert (shown["state"], shown["host_name"]) == ("up", "pair-b"), shown
            assert shown["spec"] == shown_before["spec"]  # device ids, console: the same VM
            assert {d["id"] for d in shown["devices"]} == {d["id"] for d in shown_before["devices"]}
            conn_b = libvirt.open(pair.b_uri)
            assert conn_b.lookupByUUIDString(vm_id).isActive()
            conn_b.close()
            after = eventually(lambda: [u for u in uptimes() if u > before + 5], timeout=60, what="a tick on B",
                               interval=0.5)
            assert min(after) > before  # the guest's clock ran on: the same guest, not a new boot

            # ---- back to A at 1 MiB/s, cancelled: the VM stays up on B
            task = cli.json("vm", "migrate", name, "--host", "pair-a", "--bandwidth", "1", "--no-wait")
            eventually(lambda: "%" in api.get(f"/tasks/{task['id']}").json()["message"], timeout=90,
                       what="progress of the slow migration", interval=0.3)
            cancelled = cli.json("task", "cancel", task["id"])
            assert cancelled["id"] == task["id"]
            done = eventually(lambda: (t := api.get(f"/tasks/{task['id']}").json())["state"] == "failed" and t,
                              timeout=60, what="the cancelled task's end")
            assert done["error"]["code"] == "cancelled", done
            shown = cli.json("vm", "show", name)
            assert (shown["state"], shown["host_name"]) == ("up", "pair-b"), shown
            types = [e["type"] for e in api.get("/events", params={"object_id": vm_id, "limit": 200}).json()["items"]]
            assert "vm_migrated" in types and "vm_migration_cancelled" in types, types
            assert "failed already" in cli.error("task", "cancel", task["id"])  # finished: nothing to cancel
    finally:
        for proc in reversed(procs):
            stop(proc)
        for uri in (pair.a_uri, pair.b_uri):
            conn = libvirt.open(uri)
            dom = next((d for d in conn.listAllDomains(0) if d.UUIDString() == vm_id), None) if vm_id else None
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            conn.close()
        subprocess.run([ip, "link", "del", bridge], capture_output=True, check=False)
