"""Access to the Xen lab (labs/xen) from pytest.

The lab is Xen 4.17 with a Debian 12 PV dom0, booted inside QEMU/TCG on the build host. dom0 runs
libvirtd (libxl driver), the Corral agent (the project's own wheel, installed at every boot) and sshd.
From the host (all on 127.0.0.1):

* ``lab.libvirt_uri`` -- ``xen+tcp://127.0.0.1:16510/system`` (libvirtd in dom0, no auth, lab only);
* ``lab.agent_url`` + ``lab.agent_token`` -- the agent API (``Authorization: Bearer <token>``);
* ``lab.ssh("xl list")`` -- a command in dom0 as root (guest consoles are in dom0's
  ``/var/log/xen/console/guest-<name>.log``; xenconsoled appends across runs, so delete it first).

Guest artefacts are *dom0* paths (give them to libvirt as they are): ``lab.guest_kernel`` (Debian cloud
kernel), ``lab.guest_initrd`` (busybox initramfs: prints ``CORRAL-XEN-GUEST-UP`` on its console --
``console=hvc0`` for PV, ``console=ttyS0`` for HVM -- then ``CORRAL-XEN-GUEST-TICK`` with cpus and
MemTotal every 5 s; ``corral_crash=N`` on the cmdline crashes the kernel after N s) and ``lab.mbr_disk``
(1 MiB raw disk whose boot sector prints ``CORRAL-XEN-MBR-UP`` on COM1 and idles).

Usage in a test::

    from tests.require import unavailable
    from tests.xenlab import lab_unavailable_reason, xen_lab

    @pytest.mark.xenlab
    def test_something() -> None:
        lab = xen_lab()
        if lab is None:
            unavailable(f"Xen lab unavailable: {lab_unavailable_reason()}")
        ...

``unavailable`` skips with the reason, or fails the test when ``CORRAL_REQUIRE_LABS=1`` (CI): a lab that
does not boot, or an agent in dom0 that does not answer, must fail the run there, never hide as a skip.

``xen_lab()`` runs ``labs/xen/boot`` at most once per process (it builds the image on first use, boots
it, or just reports an already running lab) and later calls return the same answer. The lab is left
running; ``labs/xen/stop`` ends it. Set ``CORRAL_XENLAB=0`` to make it return None without trying (with
``CORRAL_REQUIRE_LABS=1`` the tests then fail). The lab counts as there only when its agent answers
``/v1/health`` through the forwarded port (``labs/xen/boot`` waits for that, issue 20 item 10).
``CORRAL_XENLAB_DIR`` selects the cache dir (default ``/var/tmp/corral-xenlab``), as for the scripts.

``xen_lab(instance=2)`` is a second lab from the same image (``labs/xen/boot --instance 2``: its own run dir,
ports, dom0 hostname ``xenlab2``), linked to instance 1 by a second NIC: ``lab.link_addr`` (``10.78.0.<N>``) is
where the *other* dom0 reaches this one's libvirtd (``xen+tcp://10.78.0.2/system``) and libxl's migration
ports. Each instance is booted at most once per process (docs/labs.md, "Xen pair").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["XenLab", "lab_unavailable_reason", "xen_lab"]

REPO = Path(__file__).resolve().parent.parent
BOOT = REPO / "labs" / "xen" / "boot"
BOOT_TIMEOUT_S = 1800  # cold: image build (~2 min) + boot under TCG (~1-2 min, more on a busy host)
SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=30",
)  # fmt: skip


@dataclass(frozen=True)
class XenLab:
    agent_url: str  # http://127.0.0.1:18470
    agent_token: str
    libvirt_uri: str  # xen+tcp://127.0.0.1:16510/system
    ssh_port: int
    ssh_key: Path  # host path of the private key for root@dom0
    guest_kernel: PurePosixPath  # dom0 path
    guest_initrd: PurePosixPath  # dom0 path
    mbr_disk: PurePosixPath  # dom0 path
    run_dir: Path  # host: qemu.pid, monitor.sock, serial.log (Xen + dom0 console), lab.json
    serial_log: Path
    instance: int = 1  # labs/xen/boot --instance N
    hostname: str = "xenlab1"  # dom0's hostname (resolves to link_addr in every instance's dom0)
    link_addr: str = "10.78.0.1"  # dom0's address on the link to its peer instance (1<->2)

    def ssh_argv(self, cmd: str) -> list[str]:
        """The ssh command line that runs ``cmd`` (a shell string) in dom0 as root."""
        return ["ssh", "-i", str(self.ssh_key), "-p", str(self.ssh_port), *SSH_OPTIONS, "root@127.0.0.1", cmd]

    def ssh(self, cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in dom0; never raises on a non-zero exit (check ``returncode``).

        Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds. Under TCG an ssh round trip
        takes ~1-10 s, depending on host load.
        """
        return subprocess.run(
            self.ssh_argv(cmd), capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )


_checked = False
_lab: XenLab | None = None
_reason: str | None = None
_others: dict[int, tuple[XenLab | None, str | None]] = {}  # instances other than 1


def lab_unavailable_reason(instance: int = 1) -> str | None:
    """Why the last ``xen_lab(instance)`` returned None (None if it did not, or was not called)."""
    if instance != 1:
        return _others.get(instance, (None, None))[1]
    return _reason


AGENT_RECHECK_S = 60


def xen_lab(instance: int = 1) -> XenLab | None:
    """Build/boot the lab (once per process and instance) and describe it, or return None if it cannot run here."""
    global _checked, _lab, _reason
    if instance != 1:
        if instance not in _others:
            _others[instance] = _boot(instance)
        return _others[instance][0]
    if not _checked:
        _checked = True
        _lab, _reason = _boot()
    return _lab


def _boot(instance: int = 1) -> tuple[XenLab | None, str | None]:
    if os.environ.get("CORRAL_XENLAB", "") == "0":
        return None, "disabled by CORRAL_XENLAB=0"
    if os.geteuid() != 0:
        return None, "needs root (labs/xen/build uses debootstrap and chroot)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if shutil.which("ssh", path=path) is None:
        return None, "ssh client not installed"
    if shutil.which("apt-get", path=path) is None and shutil.which("qemu-system-x86_64", path=path) is None:
        return None, "needs a Debian host (apt-get) to build the lab"
    try:
        argv = ["bash", str(BOOT)] + ([] if instance == 1 else ["--instance", str(instance)])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=BOOT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"labs/xen/boot failed: {exc}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return None, f"labs/xen/boot exited {proc.returncode}: " + " | ".join(tail)
    cache = Path(os.environ.get("CORRAL_XENLAB_DIR", "/var/tmp/corral-xenlab"))
    run = cache / ("run" if instance == 1 else f"run{instance}")  # labs/xen/instance.sh
    try:
        info = json.loads((run / "lab.json").read_text())
        lab = XenLab(
            # CORRAL_XENLAB_AGENT_URL: another agent in dom0 (e.g. a development one reached through ssh -L)
            agent_url=(instance == 1 and os.environ.get("CORRAL_XENLAB_AGENT_URL")) or info["agent_url"],
            agent_token=Path(info["agent_token_file"]).read_text().strip(),
            libvirt_uri=info["libvirt_uri"],
            ssh_port=int(info["ssh_port"]),
            ssh_key=Path(info["ssh_key"]),
            guest_kernel=PurePosixPath(info["dom0_guest_kernel"]),
            guest_initrd=PurePosixPath(info["dom0_guest_initrd"]),
            mbr_disk=PurePosixPath(info["dom0_mbr_disk"]),
            run_dir=Path(info["run_dir"]),
            serial_log=Path(info["serial_log"]),
            instance=instance,
            hostname=info.get("hostname", "dom0"),  # a lab booted before instances existed
            link_addr=info.get("link_addr", ""),
        )
    except (OSError, ValueError, KeyError) as exc:
        return None, f"labs/xen/boot succeeded but {run}/lab.json is unusable: {exc!r}"
    # labs/xen/boot exits 0 only once the agent answers /v1/health through the forwarded port (it waits
    # for that itself: labs/xen/wait-ready); a short re-check covers an agent that another test restarts.
    deadline = time.monotonic() + AGENT_RECHECK_S
    last = ""
    while True:
        try:
            with urllib.request.urlopen(f"{lab.agent_url}/v1/health", timeout=10) as resp:
                if resp.status == 200:
                    return lab, None
                last = f"HTTP {resp.status}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            return None, (f"labs/xen/boot said ready but the agent in dom0 does not answer {lab.agent_url}/v1/health "
                          f"({last}); see dom0 /var/log/corral-agent.log")
        time.sleep(2)
