"""No element or attribute of an imported domain disappears without a warning (issue 20, item 6).

Over libvirt's 39 Xen test domains (../shared/libvirt-xen-xml) and Corral's own import fixtures: every element and
attribute of the input is used by the spec, recognised as what the host re-creates (``derived``), or lies under a
warning's path. The paths of the input are listed here with lxml's own ``getpath``, not with the importer's
naming, and every path the importer names must exist in the input. A second test proves that "used" is not a
label stuck on things the importer ignores: changing any used value changes the spec, a warning or an error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from corral.domain.importer import ImportResult, import_domain

from .support import SHARED_XEN_XML, parse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FILES = sorted(FIXTURES.glob("*.xml")) + (sorted(SHARED_XEN_XML.glob("*.xml")) if SHARED_XEN_XML.is_dir() else [])
PARAMS = [pytest.param(p, id=p.name.split("__")[-1]) for p in FILES]


def _path(elem: etree._Element) -> str:
    """lxml's XPath of an element, relative to <domain>, devices always numbered (the importer's one liberty)."""
    path = elem.getroottree().getpath(elem).removeprefix("/domain").lstrip("/")
    return re.sub(r"^(devices/[^/\[]+)(?=/|$)", r"\1[1]", path)


def input_paths(root: etree._Element) -> list[str]:
    """Every element and attribute of a domain, as paths."""
    out = []
    for elem in root.iter():
        if not isinstance(elem.tag, str):
            continue  # comments
        path = _path(elem)
        out.append(path)
        out += [f"{path}/@{name}".lstrip("/") for name in elem.attrib]
    return out


def unaccounted(root: etree._Element, result: ImportResult) -> list[str]:
    """The paths of the input neither used, nor derived, nor under a warning."""
    cut = result.derived | {w.path for w in result.warnings}

    def covered(path: str) -> bool:
        parts = path.split("/")
        return any("/".join(parts[:n]) in cut for n in range(len(parts) + 1))

    return [p for p in input_paths(root) if p and p not in result.used and not covered(p)]


def test_all_inputs_are_there() -> None:
    assert len([p for p in FILES if p.parent == FIXTURES]) == 2
    if not SHARED_XEN_XML.is_dir():
        pytest.skip(f"{SHARED_XEN_XML} is absent")
    assert len(FILES) == 41


@pytest.mark.parametrize("path", PARAMS)
def test_every_element_and_attribute_is_used_derived_or_warned(path: Path) -> None:
    xml = path.read_text()
    root = parse(xml)
    result = import_domain(xml)
    assert unaccounted(root, result) == []
    named = set(input_paths(root)) | {""}
    bogus = [p for p in (*result.used, *result.derived, *(w.path for w in result.warnings)) if p not in named]
    assert bogus == [], "the importer names paths the input does not have"
    for warning in result.warnings:
        assert len(warning.message) > 20, warning  # says what is dropped and what Corral does instead


def _outcome(xml: str) -> Any:
    """What an import gives, device ids aside (new random ones each time): spec and warnings, or the error."""
    try:
        result = import_domain(xml)
    except ValueError as exc:
        return type(exc).__name__, str(exc)

    def strip_ids(value: Any, top: bool) -> Any:
        if isinstance(value, dict):
            return {k: strip_ids(v, False) for k, v in value.items() if top or k != "id"}
        if isinstance(value, list):
            return [strip_ids(v, False) for v in value]
        return value

    spec = strip_ids(result.spec.model_dump(mode="json"), True)
    return json.dumps(spec, sort_keys=True), [str(w) for w in result.warnings]


@pytest.mark.parametrize("path", PARAMS)
def test_a_used_value_that_changes_changes_the_import(path: Path) -> None:
    """'used' is true: any used attribute or text, changed, shows in the spec, a warning or an error."""
    xml = path.read_text()
    root = parse(xml)
    result = import_domain(xml)
    before = _outcome(xml)
    checked = 0
    for elem in root.iter():
        if not isinstance(elem.tag, str):
            continue
        base = _path(elem)
        targets: list[tuple[str, str | None]] = [(f"{base}/@{name}".lstrip("/"), name) for name in elem.attrib]
        if (elem.text or "").strip() and not len(elem):
            targets.append((base, None))
        for where, attr in targets:
            if where not in result.used:
                continue
            copy = parse(xml)
            node = copy.getroottree().xpath(elem.getroottree().getpath(elem))[0]
            if attr is None:
                node.text = (node.text or "").strip() + "x"
            else:
                node.set(attr, node.get(attr) + "x")
            assert _outcome(etree.tostring(copy, encoding="unicode")) != before, f"{where} is used but ignored"
            checked += 1
    assert checked >= 8


DOMAIN = """<domain type='xen'>
  <name>guest</name>
  <uuid>9f5b6a1e-2c1d-4e8a-9b7c-3d2e1f0a4b5c</uuid>
  <memory unit='MiB'>512</memory>
  {top}
  <os><type arch='x86_64' machine='xenfv'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><source file='/var/lib/a.raw'/><target dev='hda' bus='ide'/></disk>
    {devices}
  </devices>
</domain>"""


def test_anything_the_importer_never_heard_of_is_reported() -> None:
    """Elements and attributes no code in the importer reads are warned about, by path, automatically."""
    xml = DOMAIN.format(
        top="<title>Old guest</title><vcpu placement='static' cpuset='0-1'>2</vcpu><memoryBacking><hugepages/>"
            "</memoryBacking><genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90d</genid>",
        devices="<disk type='file' device='disk' snapshot='no'><source file='/var/lib/b.raw'/>"
                "<target dev='hdb' bus='ide'/><iotune><total_bytes_sec>1000</total_bytes_sec></iotune></disk>"
                "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>")
    result = import_domain(xml)
    warned = {w.path: w.message for w in result.warnings}
    for path in ("title", "vcpu/@cpuset", "memoryBacking", "genid", "devices/disk[2]/@snapshot",
                 "devices/disk[2]/iotune", "devices/rng[1]"):
        assert path in warned, warned
    assert "<title>Old guest</title>" in warned["title"] and "dropped" in warned["title"]
    assert "cpuset='0-1'" in warned["vcpu/@cpuset"]
    assert unaccounted(parse(xml), result) == []
    assert [w.path for w in result.warnings] == [
        "title", "vcpu/@cpuset", "memoryBacking", "genid", "devices/disk[2]/@snapshot", "devices/disk[2]/iotune",
        "devices/rng[1]"], "in document order"


def _warnings(top: str = "", devices: str = "") -> dict[str, str]:
    return {w.path: w.message for w in import_domain(DOMAIN.format(top=top, devices=devices)).warnings}


def test_bootloader_args_are_reported() -> None:
    found = _warnings(top="<bootloader>/usr/bin/pygrub</bootloader><bootloader_args>-q --entry=2</bootloader_args>")
    assert "'-q --entry=2'" in found["bootloader_args"] and "without arguments" in found["bootloader_args"]


@pytest.mark.parametrize(("name", "reported"), [("net0", True), ("vif3.0", False), ("vif3.0-emu", False),
                                                ("vnet7", False)])
def test_a_chosen_vif_name_is_reported_a_host_given_one_is_not(name: str, reported: bool) -> None:
    found = _warnings(devices=f"<interface type='bridge'><mac address='00:16:3e:00:00:01'/>"
                              f"<source bridge='xenbr0'/><target dev='{name}'/></interface>")
    path = "devices/interface[1]/target/@dev"
    assert (path in found) is reported, found
    if reported:
        assert found[path] == "host-side NIC name (vif/tap) 'net0' is not represented; the host names it"


@pytest.mark.parametrize(("graphics", "model", "reported"), [
    ("vnc", "cirrus", "the flavor renders 'vga' for vnc graphics"),
    ("spice", "vga", "the flavor renders 'qxl' for spice graphics"),
    ("vnc", "vga", None),
    ("spice", "qxl", None),
])
def test_a_video_model_the_flavor_would_not_render_is_reported(graphics: str, model: str,
                                                                reported: str | None) -> None:
    found = _warnings(devices=f"<graphics type='{graphics}' autoport='yes'/><video><model type='{model}' "
                              "vram='8192' heads='1' primary='yes'/></video>")
    if reported is None:
        assert found == {}
    else:
        assert found["devices/video[1]"] == f"video model {model!r} is not represented; {reported}"


def test_a_video_device_without_graphics_is_reported() -> None:
    found = _warnings(devices="<video><model type='vga'/></video>")
    assert "without graphics" in found["devices/video[1]"]


def test_a_cdrom_slot_that_moves_is_reported_with_the_slot_it_gets() -> None:
    """libvirt's Xen HVM domains put the CD-ROM on hdc; Corral numbers a bus's disks in order: hdb."""
    found = _warnings(devices="<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
                              "<source file='/iso/d.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>")
    assert found == {"devices/disk[2]/target/@dev": "slot 'hdc' is not represented; Corral names the disks of a "
                                                    "bus in order, so this cdrom becomes 'hdb'"}
    assert _warnings(devices="<disk type='file' device='cdrom'><source file='/iso/d.iso'/>"
                             "<target dev='hdb' bus='ide'/></disk>") == {}


def test_per_bus_slots_count_each_bus_apart() -> None:
    assert _warnings(devices="<disk type='file' device='disk'><source file='/b'/><target dev='xvda' bus='xen'/>"
                             "</disk><disk type='file' device='disk'><source file='/c'/>"
                             "<target dev='xvdb' bus='xen'/></disk>") == {}
    found = _warnings(devices="<disk type='file' device='disk'><source file='/b'/><target dev='xvdc' bus='xen'/>"
                              "</disk>")
    assert "becomes 'xvda'" in found["devices/disk[2]/target/@dev"]


def test_a_listen_address_that_disagrees_is_reported() -> None:
    found = _warnings(devices="<graphics type='vnc' autoport='yes' listen='127.0.0.1'>"
                              "<listen type='address' address='0.0.0.0'/></graphics>")
    assert "'127.0.0.1' is kept" in found["devices/graphics[1]/listen/@address"]


def test_what_a_running_domain_adds_by_itself_is_not_reported() -> None:
    """libvirt's additions to a running guest's XML (labels, cgroup partition, pty paths...) are nobody's choice."""
    xml = DOMAIN.format(
        top="<resource><partition>/machine</partition></resource>",
        devices="<serial type='pty'><source path='/dev/pts/3'/><target port='0'/><alias name='serial0'/></serial>"
                "<console type='pty' tty='/dev/pts/3'><source path='/dev/pts/3'/><target type='serial' port='0'/>"
                "</console><graphics type='vnc' port='5900' autoport='yes'/><audio id='1' type='none'/>"
                "<video><model type='vga' vram='16384' heads='1' primary='yes'/></video>"
                "<interface type='bridge'><mac address='00:16:3e:00:00:01'/><source bridge='xenbr0'/>"
                "<target dev='vif3.0'/><alias name='net0'/></interface>"
    ).replace("</devices>", "</devices><seclabel type='dynamic' model='apparmor' relabel='yes'><label>x</label>"
                            "</seclabel><seclabel type='dynamic' model='dac' relabel='yes'/>")
    result = import_domain(xml)
    assert result.warnings == []
    assert unaccounted(parse(xml), result) == []


def test_a_corral_domain_accounts_for_itself() -> None:
    """A domain Corral rendered carries its spec; nothing of it is a foreign setting."""
    from corral.domain.flavors import get_flavor
    from corral.domain.render import render

    spec = import_domain(DOMAIN.format(top="", devices="")).spec
    xml = render(spec, get_flavor("xen"))
    result = import_domain(xml)
    assert result.warnings == [] and unaccounted(parse(xml), result) == []
