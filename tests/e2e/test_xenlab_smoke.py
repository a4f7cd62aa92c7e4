"""Smoke test of the Xen lab itself: real Xen 4.17 + libvirt's libxl driver in dom0, and a PV guest
started from the build host through libvirt-python over xen+tcp."""

from __future__ import annotations

import re
import shlex
import sys
import time
import uuid
from pathlib import Path

import pytest
from lxml import etree

try:
    from tests.require import unavailable
    from tests.xenlab import XenLab, lab_unavailable_reason, xen_lab
except ImportError:  # run as a plain file (rootdir not on sys.path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.require import unavailable
    from tests.xenlab import XenLab, lab_unavailable_reason, xen_lab

pytestmark = pytest.mark.xenlab

MARKER = "CORRAL-XEN-GUEST-UP"
GUEST_TIMEOUT_S = 180  # 10-15 s on an idle host; 50 s seen with load 6 on 2 cores


@pytest.fixture(scope="module")
def lab() -> XenLab:
    lab = xen_lab()
    if lab is None:
        unavailable(f"Xen lab unavailable: {lab_unavailable_reason()}")
    return lab


def test_dom0_runs_xen_417_and_libvirt(lab: XenLab) -> None:
    info = lab.ssh("xl info", timeout=120)
    assert info.returncode == 0, info.stderr
    version = re.search(r"^xen_version\s*:\s*(\S+)", info.stdout, re.M)
    assert version is not None, info.stdout
    assert version.group(1).startswith("4.17"), version.group(1)
    virsh = lab.ssh("virsh -c xen:///system version", timeout=120)
    assert virsh.returncode == 0, virsh.stderr
    assert "Running hypervisor: Xen" in virsh.stdout, virsh.stdout


def _pv_domain_xml(lab: XenLab, name: str) -> str:
    dom = etree.Element("domain", type="xen")
    etree.SubElement(dom, "name").text = name
    etree.SubElement(dom, "uuid").text = str(uuid.uuid4())
    etree.SubElement(dom, "memory", unit="MiB").text = "128"
    etree.SubElement(dom, "vcpu").text = "1"
    os_el = etree.SubElement(dom, "os")
    etree.SubElement(os_el, "type", arch="x86_64", machine="xenpv").text = "linux"
    etree.SubElement(os_el, "kernel").text = str(lab.guest_kernel)
    etree.SubElement(os_el, "initrd").text = str(lab.guest_initrd)
    etree.SubElement(os_el, "cmdline").text = "console=hvc0 panic=-1"
    etree.SubElement(dom, "on_poweroff").text = "destroy"
    etree.SubElement(dom, "on_reboot").text = "destroy"
    etree.SubElement(dom, "on_crash").text = "destroy"
    devices = etree.SubElement(dom, "devices")
    console = etree.SubElement(devices, "console", type="pty")
    etree.SubElement(console, "target", type="xen", port="0")
    return etree.tostring(dom, encoding="unicode")


def test_pv_guest_boots_through_libvirt(lab: XenLab) -> None:
    import libvirt

    name = f"corral-xenlab-smoke-{uuid.uuid4().hex[:8]}"
    log = f"/var/log/xen/console/guest-{name}.log"
    # xenconsoled appends to the log across runs of a same-named guest: start from nothing
    assert lab.ssh(f"rm -f {shlex.quote(log)}").returncode == 0
    conn = libvirt.open(lab.libvirt_uri)
    dom = None
    try:
        assert conn.getType() == "Xen"
        dom = conn.defineXML(_pv_domain_xml(lab, name))
        t0 = time.monotonic()
        dom.create()
        created = time.monotonic() - t0
        text = ""
        while time.monotonic() - t0 < GUEST_TIMEOUT_S:
            text = lab.ssh(f"cat {shlex.quote(log)} 2>/dev/null", timeout=60).stdout
            if MARKER in text:
                break
            time.sleep(1)
        elapsed = time.monotonic() - t0
        assert MARKER in text, f"no {MARKER} within {GUEST_TIMEOUT_S} s; console log tail:\n{text[-2000:]}"
        line = next(x for x in text.splitlines() if MARKER in x).strip()
        print(f"create() {created:.1f} s; {MARKER} {elapsed:.1f} s after create: {line}")
        assert "guest_type=PV" in line, line
        assert dom.isActive()
    finally:
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
            finally:
                dom.undefine()
        conn.close()
