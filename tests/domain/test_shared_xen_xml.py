"""The 39 real Xen domain XML files of libvirt's test suite (../shared/libvirt-xen-xml): read, import, render.

Every expectation here is derived from the file itself with lxml, not from what Corral happens to produce:
which devices it holds, which of them a VmSpec cannot say, which settings the xen flavor must refuse.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from corral.domain import config as cfg
from corral.domain.flavors import get_flavor
from corral.domain.importer import ImportResult, import_domain
from corral.domain.read import read_devices
from corral.domain.render import plan, render, render_resolution
from corral.domain.resolve import RefusedError
from corral.domain.spec import VmSpec, parse_spec

from .support import (
    SHARED_XEN_XML,
    assert_schema_valid,
    assert_unrendered_are_explained,
    define_and_read_back,
    needs_validator,
    parse,
    refused_paths,
)

XEN = get_flavor("xen")
FILES = sorted(SHARED_XEN_XML.glob("*.xml")) if SHARED_XEN_XML.is_dir() else []
ABSENT = pytest.mark.skip(reason=f"{SHARED_XEN_XML} is absent")
PARAMS = [pytest.param(p, id=p.name.split("__")[-1]) for p in FILES] or [pytest.param(None, marks=ABSENT)]
PV_OS_TYPES = ("linux", "xen", "xenpvh")


def _devices(root: etree._Element) -> list[etree._Element]:
    devices = root.find("devices")
    return [] if devices is None else [e for e in devices if isinstance(e.tag, str)]


def _source(disk: etree._Element) -> str | None:
    src = disk.find("source")
    return None if src is None else src.get("file") or src.get("dev")


def _mac(nic: etree._Element) -> str | None:
    mac = nic.find("mac")
    return None if mac is None else mac.get("address", "").lower()


def _warned(result: ImportResult, path: str) -> bool:
    return any(w.path == path for w in result.warnings)


def _where(dev: etree._Element) -> str:
    """A device's path as the importer names it: XPath's, its position among the devices of its tag."""
    return f"devices/{dev.tag}[{sum(1 for _ in dev.itersiblings(dev.tag, preceding=True)) + 1}]"


def _unrepresentable(root: etree._Element) -> list[str]:
    """Paths (as the importer names them) of what a VmSpec cannot say, found in the file by XPath."""
    out = []
    for dev in _devices(root):
        where = _where(dev)
        disk_format = dev.findtext("driver[@type]") is not None and dev.find("driver").get("type")
        whole = {
            "disk": dev.get("type") not in ("file", "block") or disk_format not in (False, "raw", "qcow2"),
            "interface": dev.get("type") not in ("bridge", "network"),
            "hostdev": True,
            "input": dev.get("type") not in ("mouse", "keyboard"),
        }
        usb_model = dev.get("model") if dev.tag == "controller" and dev.get("type") == "usb" else None
        if whole.get(str(dev.tag), False) or usb_model not in (None, "piix3-uhci", "qemu-xhci"):
            out.append(where)
        elif dev.tag == "interface":
            for tag in ("ip", "bandwidth", "driver", "backenddomain"):
                found = dev.findall(tag)
                numbered = len(found) > 1
                out += [f"{where}/{tag}[{n}]" if numbered else f"{where}/{tag}" for n in range(1, len(found) + 1)]
        elif dev.tag == "graphics" and dev.get("type") in ("vnc", "spice"):
            out += [f"{where}/{child.tag}" for child in dev if child.tag != "listen"]
            out += [f"{where}/@{name}" for name in dev.attrib
                    if name not in ("type", "port", "autoport", "listen", "passwd")]
            if dev.get("autoport") == "no" and int(dev.get("port", "-1")) > 0:
                out.append(f"{where}/@port")
    for tag in ("loader", "nvram"):
        if root.find(f"os/{tag}") is not None:
            out.append(f"os/{tag}")
    if root.find("cpu/numa") is not None:
        out.append("cpu/numa")
    out += [f"features/{f.tag}" for f in root.findall("features/*") if f.tag not in ("acpi", "apic", "pae")]
    clock = root.find("clock")
    if clock is not None and (clock.get("offset", "utc") != "utc" or len(clock)):
        out.append("clock")
    return out


def _expected_refusals(root: etree._Element) -> set[str]:
    """What xen-gaps.md says the xen flavor refuses, as found in the file."""
    refused = set()
    if (root.findtext("on_crash") or "").strip() == "preserve":
        refused.add("on_crash")  # [L8]
    os_type = (root.findtext("os/type") or "").strip()
    if os_type in PV_OS_TYPES and not root.findtext("os/kernel") and not root.findtext("bootloader"):
        refused.add("kernel")  # a PV guest boots a kernel or a bootloader
    return refused


def _render_fixing_refusals(spec: VmSpec, expected: set[str]) -> tuple[VmSpec, str]:
    try:
        xml = render(spec, XEN)
        refused: set[str] = set()
    except RefusedError as exc:
        refused = {d.path for d in exc.decisions}
        assert all(f"{p}: " in str(exc) for p in refused)
    assert refused == expected, f"xen refuses {refused}, the file calls for {expected}"
    assert refused_paths(plan(spec, XEN)) == expected
    if not refused:
        return spec, xml
    data = spec.model_dump(mode="json")
    if "on_crash" in refused:
        data["on_crash"] = "coredump-destroy"
    if "kernel" in refused:
        data["bootloader"] = "pygrub"
    fixed = parse_spec(data)
    return fixed, render(fixed, XEN)


def test_all_files_are_there() -> None:
    if not FILES:
        pytest.skip(f"{SHARED_XEN_XML} is absent")
    assert len(FILES) == 39


@pytest.mark.parametrize(("name", "tag", "words"), [
    ("xlconfigdata__test-rbd-multihost-noauth.xml", "disk", ("network", "rbd")),
    ("libxlxml2domconfigdata__moredevs-hvm.xml", "interface", ("hostdev",)),
    ("xlconfigdata__test-usb.xml", "hostdev", ()),
    ("xlconfigdata__test-disk-qed.xml", "disk", ("qed",)),
])
def test_network_disk_hostdev_and_foreign_formats_are_reported(name: str, tag: str, words: tuple[str, ...]) -> None:
    path = SHARED_XEN_XML / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    xml = path.read_text()
    where = next(_where(e) for e in _devices(parse(xml)) if e.tag == tag and (
        tag != "disk" or e.get("type") == "network" or e.find("driver[@type='qed']") is not None)
        and (tag != "interface" or e.get("type") == "hostdev"))
    warnings = [w for w in import_domain(xml).warnings if w.path == where]
    assert warnings, f"{where} dropped without a warning"
    assert all(word in warnings[0].message for word in words), warnings[0]


@pytest.mark.parametrize("path", PARAMS)
def test_read_finds_every_device_without_aliases(path: Path) -> None:
    xml = path.read_text()
    root = parse(xml)
    elems = _devices(root)
    assert root.find(".//alias") is None, "these files are libxl's: no aliases"
    live = read_devices(xml)
    assert len(live) == len(elems)
    for ld, elem in zip(live, elems, strict=True):
        if elem.tag == "disk":
            assert isinstance(ld.config, cfg.Disk) and ld.kind == elem.get("device", "disk")
            assert ld.key == f"target:{elem.find('target').get('dev')}"
            assert ld.config.source == _source(elem)
        elif elem.tag == "interface":
            assert ld.kind == "nic" and ld.key == f"mac:{_mac(elem)}"
        else:
            assert ld.kind in (elem.tag, {"memballoon": "balloon"}.get(elem.tag))


@pytest.mark.parametrize("path", PARAMS)
def test_import_represents_each_device_or_warns(path: Path) -> None:
    xml = path.read_text()
    root = parse(xml)
    result = import_domain(xml)
    spec = result.spec
    assert spec.name == root.findtext("name")
    assert spec.id == root.findtext("uuid")

    for where in _unrepresentable(root):
        assert _warned(result, where), f"{where} is not represented and not reported: {result.warnings}"

    disks, macs = [], []
    for elem in _devices(root):
        if elem.tag == "disk" and not _warned(result, _where(elem)):
            disks.append((_source(elem), elem.get("device", "disk")))
        if elem.tag == "interface" and not _warned(result, _where(elem)):
            macs.append(_mac(elem))
    assert [(d.source, d.device.value) for d in spec.disks] == disks
    assert [n.mac for n in spec.nics] == macs

    # The original XML, read against the imported spec, identifies every disk and NIC of it.
    live = read_devices(xml, spec)
    found = {ld.device_id for ld in live}
    assert {d.id for d in (*spec.disks, *spec.nics)} <= found


@needs_validator
@pytest.mark.parametrize("path", PARAMS)
def test_imported_spec_renders_for_xen_with_the_same_disks_and_nics(path: Path) -> None:
    root = parse(path.read_text())
    spec = import_domain(path.read_text()).spec
    spec, xml = _render_fixing_refusals(spec, _expected_refusals(root))
    assert_schema_valid(xml)

    out = parse(xml)
    sources = [_source(d) for d in out.findall("devices/disk")]
    assert [s for s in sources if s] == [d.source for d in spec.disks if d.source]
    rendered_macs = [_mac(n) for n in out.findall("devices/interface")]
    assert len(rendered_macs) == len(spec.nics)
    assert all(m == n.mac for m, n in zip(rendered_macs, spec.nics, strict=True) if n.mac)

    _, res = render_resolution(spec, XEN)
    want = assert_unrendered_are_explained(spec, res)
    live = define_and_read_back(xml)
    assert {ld.device_id for ld in read_devices(live)} >= want
