"""The console relay on the QEMU lab (issue 14): a real VM with VNC on the host's loopback and a serial console,
reached through the agent's WebSockets and through the engine's (which the agent relays), never by dialling the
VNC port from outside.

Engine and agent run as subprocesses as in ``test_engine_qemulab.py`` (whose helpers this reuses): the agent on
the lab's libvirtd with /dev/kvm hidden, an empty bridge for the NIC. Read through each hop: the RFB version
banner ``RFB 003.008`` of QEMU's VNC server, and a ``CORRAL-GUEST-TICK`` line the lab guest prints on ttyS0
every 5 s; ``corral vm console VM --interactive`` reads the same line and ends on Ctrl-].
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.cli.support import CORRAL, Cli, clean_env, eventually, free_port
from tests.e2e.test_engine_qemulab import HIDE_KVM, start, stop
from tests.qemulab import lab_unavailable_reason, qemu_lab
from tests.require import unavailable

pytestmark = pytest.mark.qemulab

RFB = b"RFB 003.008\n"
TICK = b"CORRAL-GUEST-TICK"
BOOT_TIMEOUT_S = 90


def read_until(ws: ClientConnection, marker: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} not read in {timeout} s; read {got[-500:]!r}"
        try:
            msg = ws.recv(timeout=left)
        except TimeoutError:
            continue
        got += msg if isinstance(msg, bytes) else msg.encode()
    return got


def outside_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (where a VNC server listening on all addresses would answer)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    return [a for a in out if "." in a and not a.startswith("127.")]


def test_console_relay_on_real_qemu(tmp_path: Path) -> None:
    lab = qemu_lab()
    if lab is None:
        unavailable(f"QEMU lab unavailable: {lab_unavailable_reason()}")
    import libvirt

    bridge = "corralcr" + uuid.uuid4().hex[:4]
    ip = shutil.which("ip") or "/sbin/ip"
    if subprocess.run([ip, "link", "add", "name", bridge, "type", "bridge"], capture_output=True,
                      check=False).returncode != 0:
        unavailable("cannot add a bridge on this host")
    conn = libvirt.open(lab.uri)
    procs: list[subprocess.Popen[bytes]] = []
    vm_id: str | None = None
    cli = Cli(tmp_path / "config", tmp_path)
    try:
        db = f"sqlite:///{tmp_path / 'engine.db'}"
        token = cli.run("engine", "create-token", "--db", db).stdout.strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        plain = ["--no-tls"] if "--no-tls" in cli.run("engine", "serve", "--help").stdout else []
        # the lab's kernel and initrd are host paths the engine must allow (CORRAL_HOST_PATHS, issue 14's roles)
        paths = f"CORRAL_HOST_PATHS={Path(lab.kernel).parent}:{Path(lab.initrd).parent}"
        procs.append(start(["env", paths, *CORRAL, "engine", "serve", "--db", db, "--listen", f"127.0.0.1:{port}",
                            *plain, "--data-dir", str(tmp_path / "engine")], tmp_path / "engine.log",
                           f"{url}/api/health", "the engine"))
        cli.run("login", url, "--token", token)
        agent_token = uuid.uuid4().hex + uuid.uuid4().hex
        (tmp_path / "agent-token").write_text(agent_token)
        agent_port = free_port()
        cmd = [*CORRAL, "agent", "serve", "--libvirt", lab.uri, "--allow-tcg", "--listen", f"127.0.0.1:{agent_port}",
               "--token-file", str(tmp_path / "agent-token"), "--state-dir", str(tmp_path / "agent-state")]
        if Path("/dev/kvm").exists():
            (tmp_path / "no-kvm").write_text("")
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE_KVM, str(tmp_path / "no-kvm"),
                   *cmd]
        procs.append(start(cmd, tmp_path / "agent.log", f"http://127.0.0.1:{agent_port}/v1/health", "the agent"))
        bearer = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{url}/api/v1", headers=bearer, timeout=30) as api:
            resp = api.post("/hosts", json={"name": "qemu-lab", "url": f"http://127.0.0.1:{agent_port}",
                                            "token": agent_token})
            assert resp.status_code == 202, resp.text
            task = eventually(lambda: (t := api.get(f"/tasks/{resp.json()['id']}").json())["state"] in (
                "succeeded", "failed") and t, timeout=60, what="the host added")
            assert task["state"] == "succeeded", task

            name = f"corral-e2e-console-{uuid.uuid4().hex[:8]}"
            spec: dict[str, Any] = {
                "name": name, "memory_mib": 192, "vcpus": 1, "kernel": str(lab.kernel), "initrd": str(lab.initrd),
                "cmdline": "console=ttyS0 panic=-1", "consoles": [{"kind": "serial"}],
                "nics": [{"source": bridge}], "graphics": {"type": "vnc"}, "on_reboot": "destroy"}
            created = api.post("/vms", json=spec)
            assert created.status_code == 201, created.text
            vm_id = created.json()["id"]
            started = cli.json("vm", "start", name)
            assert started["state"] == "up", started

            # ---- the VNC server listens on the host's loopback only
            dom = conn.lookupByUUIDString(vm_id)
            xml = dom.XMLDesc(0)
            assert "listen='127.0.0.1'" in xml or 'listen="127.0.0.1"' in xml, xml
            vnc_port = int(xml.split("<graphics type='vnc' port='", 1)[1].split("'", 1)[0])
            with socket.create_connection(("127.0.0.1", vnc_port), timeout=5) as s:
                assert s.recv(12) == RFB  # it is there, on the loopback
            for address in outside_addresses():
                with pytest.raises(OSError), socket.create_connection((address, vnc_port), timeout=3):
                    pass

            # ---- through the agent: its credentials are required
            agent_ws = f"ws://127.0.0.1:{agent_port}/v1/vms/{vm_id}/console"
            with pytest.raises(InvalidStatus) as refused:
                connect(f"{agent_ws}/vnc", open_timeout=10)
            assert refused.value.response.status_code == 403
            agent_auth = {"Authorization": f"Bearer {agent_token}"}
            with connect(f"{agent_ws}/vnc", additional_headers=agent_auth, subprotocols=["binary"],  # type: ignore[list-item]
                         open_timeout=10) as ws:
                assert read_until(ws, b"\n", 10).startswith(RFB)
            with connect(f"{agent_ws}/serial", additional_headers=agent_auth, open_timeout=10) as ws:
                read_until(ws, TICK, BOOT_TIMEOUT_S)

            # ---- through the engine (REST API WebSocket, the API token), relayed by the agent
            engine_ws = f"ws://127.0.0.1:{port}/api/v1/vms/{vm_id}/console"
            with pytest.raises(InvalidStatus):
                connect(f"{engine_ws}/vnc", open_timeout=10)
            with connect(f"{engine_ws}/vnc", additional_headers=bearer, subprotocols=["binary"],  # type: ignore[list-item]
                         open_timeout=10) as ws:
                assert read_until(ws, b"\n", 10).startswith(RFB)
                ws.send(RFB)  # the client's version: the server answers its security types
                assert len(ws.recv(timeout=10)) >= 2
            with connect(f"{engine_ws}/serial", additional_headers=bearer, open_timeout=10) as ws:
                read_until(ws, TICK, 30)

            # ---- corral vm console, interactive without a terminal; Ctrl-] ends it with status 0
            proc = subprocess.Popen([*CORRAL, "vm", "console", name, "--interactive"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                                    env=clean_env(XDG_CONFIG_HOME=str(cli.config_home)))
            assert proc.stdin is not None and proc.stdout is not None
            got = b""
            deadline = time.monotonic() + 30
            while TICK not in got:
                assert time.monotonic() < deadline and proc.poll() is None, (got[-300:], proc.poll())
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                if ready:
                    got += os.read(proc.stdout.fileno(), 4096)
            proc.stdin.write(b"\x1d")
            proc.stdin.flush()
            assert proc.wait(15) == 0, proc.stderr.read() if proc.stderr else ""

            # ---- a stopped VM has no console: refused by name, exit 2
            assert cli.json("vm", "stop", name)["state"] == "down"
            with connect(f"{engine_ws}/serial", additional_headers=bearer, open_timeout=10) as ws, \
                    pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            assert ws.close_code == 4409 and "while it runs" in (ws.close_reason or "")
            done = cli.run("vm", "console", name, "--interactive", expect=2)
            assert "while it runs" in done.stderr
    finally:
        for proc_ in reversed(procs):
            stop(proc_)
        dom_ = next((d for d in conn.listAllDomains(0) if d.UUIDString() == vm_id), None) if vm_id else None
        if dom_ is not None:
            if dom_.isActive():
                dom_.destroy()
            dom_.undefine()
        conn.close()
        subprocess.run([ip, "link", "del", bridge], capture_output=True, check=False)
