"""Access to the QEMU lab (labs/qemu) from pytest.

The lab is the host's own libvirtd with the QEMU driver (``qemu:///system``, TCG) plus a tiny guest: a
Debian cloud kernel and a busybox initramfs whose /init prints ``CORRAL-GUEST-UP`` on the serial console
(use ``console=ttyS0``) and then ``CORRAL-GUEST-TICK ...`` every 5 s, forever. An ACPI power-button press
makes it print ``CORRAL-GUEST-POWERBUTTON`` and power off.

Usage in a test::

    from tests.qemulab import lab_unavailable_reason, qemu_lab
    from tests.require import unavailable

    @pytest.mark.qemulab
    def test_something() -> None:
        lab = qemu_lab()
        if lab is None:
            unavailable(f"QEMU lab unavailable: {lab_unavailable_reason()}")
        ...  # libvirt.open(lab.uri); boot lab.kernel + lab.initrd; attach lab.disk (copy it first if
             # the guest should write to it)

``qemu_lab()`` runs ``labs/qemu/start`` at most once per process; later calls return the same answer.
Set ``CORRAL_QEMULAB=0`` to make it return None without trying. ``unavailable`` (tests/require.py) skips
with the reason, or fails the test when ``CORRAL_REQUIRE_LABS=1`` (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["QemuLab", "lab_unavailable_reason", "qemu_lab"]

REPO = Path(__file__).resolve().parent.parent
START = REPO / "labs" / "qemu" / "start"
START_TIMEOUT_S = 900  # a cold start may apt-get install packages and download the kernel


@dataclass(frozen=True)
class QemuLab:
    uri: str
    kernel: Path
    initrd: Path
    disk: Path
    state_dir: Path


_checked = False
_lab: QemuLab | None = None
_reason: str | None = None


def lab_unavailable_reason() -> str | None:
    """Why the last ``qemu_lab()`` returned None (None if it did not, or was not called)."""
    return _reason


def qemu_lab() -> QemuLab | None:
    """Start the lab (once per process) and describe it, or return None if it cannot run here."""
    global _checked, _lab, _reason
    if not _checked:
        _checked = True
        _lab, _reason = _start()
    return _lab


def _start() -> tuple[QemuLab | None, str | None]:
    if os.environ.get("CORRAL_QEMULAB", "") == "0":
        return None, "disabled by CORRAL_QEMULAB=0"
    if os.geteuid() != 0:
        return None, "needs root (run labs/qemu/start as root, then the tests as root)"
    for tool in ("qemu-system-x86_64", "libvirtd", "virtlogd"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return None, f"{tool} not installed (labs/qemu/setup installs it)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return None, "libvirt-python is not installed"
    try:
        proc = subprocess.run(
            ["bash", str(START)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"labs/qemu/start failed: {exc}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return None, f"labs/qemu/start exited {proc.returncode}: " + " | ".join(tail)
    values: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CORRAL_QEMULAB_"):
            values[key.removeprefix("CORRAL_QEMULAB_")] = value
    try:
        lab = QemuLab(
            uri=values["URI"],
            kernel=Path(values["KERNEL"]),
            initrd=Path(values["INITRD"]),
            disk=Path(values["DISK"]),
            state_dir=Path(values["DIR"]),
        )
    except KeyError as exc:
        return None, f"labs/qemu/start did not report {exc}"
    return lab, None
