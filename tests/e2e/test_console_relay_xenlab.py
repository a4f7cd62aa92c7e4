"""The console relay on real Xen (labs/xen, issue 14): an HVM guest's VNC server (Xen's device model) listens on
dom0's loopback only -- ``ss -ltn`` in dom0 shows it on 127.0.0.1, and a connection to dom0's own network
address at that port fails -- and is reached through the agent's WebSocket, which answers QEMU's RFB banner;
its serial port is not interactive on Xen (the flavor logs it to a file: xenconsoled never sees an HVM UART) and
the relay says so (4409); a PV guest's console (hvc0, where the lab initramfs prints ``CORRAL-XEN-GUEST-TICK``
every 5 s) comes through the serial relay (libvirt's console stream on libxl). A public listen is refused by name
in the plan [L12].

No password is rendered (Debian's Xen device model cannot take one): the relay's authentication is the agent's.
To run it against an agent with this tree's relay without rebooting the lab, start a development agent in dom0
and point ``CORRAL_XENLAB_AGENT_URL`` at it (docs/labs.md).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.require import unavailable
from tests.xenlab import XenLab, lab_unavailable_reason, xen_lab

pytestmark = pytest.mark.xenlab

BOOT_TIMEOUT_S = 400


def _lab() -> XenLab:
    lab = xen_lab()
    if lab is None:
        unavailable(f"Xen lab unavailable: {lab_unavailable_reason()}")
    return lab


def read_until(ws: ClientConnection, marker: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} not read in {timeout} s; read {got[-500:]!r}"
        try:
            msg = ws.recv(timeout=min(left, 30))
        except TimeoutError:
            continue
        got += msg if isinstance(msg, bytes) else msg.encode()
    return got


def test_hvm_vnc_on_dom0_loopback_through_the_relay() -> None:
    lab = _lab()
    auth = {"Authorization": f"Bearer {lab.agent_token}"}
    http = httpx.Client(base_url=lab.agent_url, headers=auth, timeout=300)
    tag = uuid.uuid4().hex[:8]
    hvm: dict[str, Any] = {
        "id": str(uuid.uuid4()), "name": f"corral-xcon-{tag}", "memory_mib": 128, "guest_type": "hvm",
        "kernel": str(lab.guest_kernel), "initrd": str(lab.guest_initrd), "cmdline": "console=ttyS0 panic=-1",
        "consoles": [{"kind": "serial"}], "balloon": None, "graphics": {"type": "vnc"}}
    pv: dict[str, Any] = {
        "id": str(uuid.uuid4()), "name": f"corral-xconpv-{tag}", "memory_mib": 128, "guest_type": "pv",
        "kernel": str(lab.guest_kernel), "initrd": str(lab.guest_initrd), "cmdline": "console=hvc0 panic=-1",
        "consoles": [{"kind": "pv"}], "balloon": None}
    made: list[str] = []
    try:
        # a public listen is refused by name, with or without a password
        for graphics in ({"type": "vnc", "listen": "0.0.0.0"}, {"type": "vnc", "listen": "0.0.0.0",
                                                                "password": "s3cret12"}):
            plan = http.post("/v1/vms/plan", json={**hvm, "graphics": graphics}).json()
            listen = next(d for d in plan["decisions"] if d["path"] == "graphics.listen")
            assert plan["ok"] is False and listen["outcome"] == "refused" and "[L12]" in listen["detail"], plan

        resp = http.post("/v1/vms?start=true", json=hvm)
        assert resp.status_code == 201, resp.text
        made.append(hvm["id"])
        gfx = next(d for d in http.get(f"/v1/vms/{hvm['id']}").json()["devices"] if d["kind"] == "graphics")
        port = gfx["port"]
        assert gfx["listen"] == "127.0.0.1" and isinstance(port, int) and port > 0, gfx
        assert gfx["password_set"] is False

        # dom0: listening on the loopback only; dom0's own addresses at that port answer nothing
        listening = lab.ssh(f"ss -ltnH 'sport = :{port}'", timeout=300).stdout.split("\n")
        local = [line.split()[3] for line in listening if line.strip()]
        assert local == [f"127.0.0.1:{port}"], local
        addresses = lab.ssh("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1",
                            timeout=300).stdout.split()
        assert addresses, "dom0 has no global address to try"
        for address in addresses:
            tried = lab.ssh(f"timeout 5 bash -c '</dev/tcp/{address}/{port}' && echo OPEN || echo REFUSED",
                            timeout=300)
            assert tried.stdout.strip().endswith("REFUSED"), (address, tried.stdout, tried.stderr)
        print(f"dom0 VNC of {hvm['name']}: {local}; refused on {addresses}")

        # the relay: the agent's credentials, then QEMU's RFB banner
        base = lab.agent_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
        url = f"{base}/v1/vms/{hvm['id']}/console"
        with pytest.raises(InvalidStatus):
            connect(f"{url}/vnc", open_timeout=30)
        with connect(f"{url}/vnc", additional_headers=auth, subprotocols=["binary"],  # type: ignore[list-item]
                     open_timeout=30) as ws:
            assert read_until(ws, b"\n", 60).startswith(b"RFB 003.008")
        # an HVM guest's serial port writes to a file on Xen (the flavor's console log: xenconsoled never sees
        # it), and libxl opens only that one: refused by name, not a hang or a 500
        with connect(f"{url}/serial", additional_headers=auth, open_timeout=30) as ws, \
                pytest.raises(ConnectionClosed):
            ws.recv(timeout=60)
        assert ws.close_code == 4409 and "not interactive" in (ws.close_reason or ""), (ws.close_code,
                                                                                        ws.close_reason)
        http.post(f"/v1/vms/{hvm['id']}/destroy")
        http.delete(f"/v1/vms/{hvm['id']}")
        made.remove(hvm["id"])

        # a PV guest's console (hvc0, xenconsoled's pty) is interactive through the relay. libvirt locks a pty it
        # opens in /var/lock (UUCP style); the lab's dom0 runs without systemd, which would have made /run/lock
        lab.ssh("mkdir -p \"$(readlink -f /var/lock)\"", timeout=300)
        resp = http.post("/v1/vms?start=true", json=pv)
        assert resp.status_code == 201, resp.text
        made.append(pv["id"])
        t0 = time.monotonic()
        with connect(f"{url.replace(hvm['id'], pv['id'])}/serial", additional_headers=auth, open_timeout=30) as ws:
            read_until(ws, b"CORRAL-XEN-GUEST-TICK", BOOT_TIMEOUT_S)
        print(f"PV console TICK through the relay after {time.monotonic() - t0:.0f} s")
    finally:
        for vm_id in made:
            http.post(f"/v1/vms/{vm_id}/destroy")
            http.delete(f"/v1/vms/{vm_id}")
        http.close()
