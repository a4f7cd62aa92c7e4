"""Deploy to the real Xen lab's dom0 over SSH: detected as a Xen dom0, passes its hardware check without
/dev/kvm, agent installed and reached over mutual TLS.

The lab forwards only dom0's ports 22, 8470 (its own token agent) and 16509, so this deploy installs under a
prefix in dom0 (``install_root``), runs its agent on port 8471, and the engine reaches it through an SSH tunnel
(``agent_url``), as it would a host behind NAT.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import Api

try:
    from tests.require import unavailable
    from tests.xenlab import SSH_OPTIONS, XenLab, lab_unavailable_reason, xen_lab
except ImportError:  # run as a plain file
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.require import unavailable
    from tests.xenlab import SSH_OPTIONS, XenLab, lab_unavailable_reason, xen_lab

pytestmark = pytest.mark.xenlab

ROOT = "/var/tmp/corral-deploy-test"
DOM0_PORT = 8471


@pytest.fixture(scope="module")
def lab() -> XenLab:
    lab = xen_lab()
    if lab is None:
        unavailable(f"Xen lab unavailable: {lab_unavailable_reason()}")
    return lab


@pytest.fixture
def tunnel(lab: XenLab) -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(["ssh", "-i", str(lab.ssh_key), "-p", str(lab.ssh_port), *SSH_OPTIONS, "-N",
                             "-o", "ExitOnForwardFailure=yes",
                             "-L", f"127.0.0.1:{port}:127.0.0.1:{DOM0_PORT}", "root@127.0.0.1"],
                            stdin=subprocess.DEVNULL)
    try:
        time.sleep(2)
        assert proc.poll() is None, "the SSH tunnel to dom0 did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        lab.ssh(f"{ROOT}/etc/init.d/corral-agent stop; rm -rf {ROOT}", timeout=300)


def test_deploy_xen_dom0(api: Api, lab: XenLab, tunnel: int) -> None:
    body = {"name": "xen-dom0",
            "ssh": {"address": "127.0.0.1", "port": lab.ssh_port, "private_key": lab.ssh_key.read_text(),
                    "connect_timeout": 60},
            "options": {"install_root": ROOT, "agent_port": DOM0_PORT, "agent_url": f"https://127.0.0.1:{tunnel}",
                        "health_timeout": 600, "command_timeout": 3600}}
    task = api.wait(api.post("/hosts", body), timeout=3600)
    assert task["state"] == "succeeded", (task["error"], task["message"])
    result = task["result"]
    print("xen lab deploy timings", result["timings"])
    assert result["hypervisor"] == "xen"
    h = api.host("xen-dom0")
    check = {i["name"]: i for i in h["deploy"]["check"]["items"]}
    assert h["deploy"]["check"]["ok"], check
    for name in ("xen dom0", "xen version", "libxl", "xenstored", "xenconsoled", "libvirt libxl driver", "bridge"):
        assert check[name]["ok"], check[name]
    assert "4.17" in check["xen version"]["detail"]
    assert check["/dev/kvm"]["ok"] and "not needed" in check["/dev/kvm"]["detail"]
    assert h["state"] == "up", h["state_reason"]
    assert h["hypervisor"] == "xen" and h["flavor"] == "xen"
