"""Smoke test of the QEMU lab itself: boot the lab guest under qemu:///system and see its marker."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
from lxml import etree

try:
    from tests.qemulab import QemuLab, lab_unavailable_reason, qemu_lab
    from tests.require import unavailable
except ImportError:  # run as a plain file (rootdir not on sys.path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.qemulab import QemuLab, lab_unavailable_reason, qemu_lab
    from tests.require import unavailable

BOOT_TIMEOUT_S = 60
MARKER = "CORRAL-GUEST-UP"


def _domain_xml(lab: QemuLab, name: str, serial_log: Path) -> str:
    dom = etree.Element("domain", type="qemu")
    etree.SubElement(dom, "name").text = name
    etree.SubElement(dom, "uuid").text = str(uuid.uuid4())
    etree.SubElement(dom, "memory", unit="MiB").text = "192"
    etree.SubElement(dom, "vcpu").text = "1"
    os_el = etree.SubElement(dom, "os")
    etree.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    etree.SubElement(os_el, "kernel").text = str(lab.kernel)
    etree.SubElement(os_el, "initrd").text = str(lab.initrd)
    etree.SubElement(os_el, "cmdline").text = "console=ttyS0 panic=-1"
    # ACPI: needed for PCI hot-plug on machine 'pc' and for the guest's power-button handling
    etree.SubElement(etree.SubElement(dom, "features"), "acpi")
    etree.SubElement(dom, "on_poweroff").text = "destroy"
    etree.SubElement(dom, "on_reboot").text = "destroy"
    etree.SubElement(dom, "on_crash").text = "destroy"
    devices = etree.SubElement(dom, "devices")
    serial = etree.SubElement(devices, "serial", type="pty")
    etree.SubElement(serial, "log", file=str(serial_log), append="off")
    etree.SubElement(serial, "target", port="0")
    console = etree.SubElement(devices, "console", type="pty")
    etree.SubElement(console, "target", type="serial", port="0")
    etree.SubElement(devices, "memballoon", model="none")
    return etree.tostring(dom, encoding="unicode")


@pytest.mark.qemulab
def test_lab_guest_boots_and_prints_marker(tmp_path: Path) -> None:
    lab = qemu_lab()
    if lab is None:
        unavailable(f"QEMU lab unavailable: {lab_unavailable_reason()}")
    import libvirt

    name = f"corral-qemulab-smoke-{uuid.uuid4().hex[:8]}"
    serial_log = tmp_path / "serial.log"
    conn = libvirt.open(lab.uri)
    dom = None
    try:
        dom = conn.defineXML(_domain_xml(lab, name, serial_log))
        t0 = time.monotonic()
        dom.create()
        text = ""
        while time.monotonic() - t0 < BOOT_TIMEOUT_S:
            if serial_log.exists():
                text = serial_log.read_text(errors="replace")
                if MARKER in text:
                    break
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        assert MARKER in text, f"no {MARKER} within {BOOT_TIMEOUT_S} s; serial log tail:\n{text[-2000:]}"
        print(
            f"{MARKER} {elapsed:.1f} s after create: "
            + next(line for line in text.splitlines() if MARKER in line).strip()
        )
        assert dom.isActive()
    finally:
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
            finally:
                dom.undefine()
        conn.close()
