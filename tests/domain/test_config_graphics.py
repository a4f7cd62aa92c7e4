"""Graphics in domain XML (issue 15): ``port`` and ``autoport`` round-trip, the listen address is written once.

Before the element classes declared each field once, ``Graphics`` wrote its listen address twice (the
``listen`` attribute and a ``<listen>`` child) and never its port, so a running domain's graphics, parsed and
formatted again (a device update, the simulator's live XML), lost the port. libvirt documents the
``<listen type='address'>`` element as where the address goes and repeats it as the attribute itself for older
readers (formatdomain, "Graphical framebuffers"); libxl reads the address of the first ``<listen>`` [L13].
"""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from corral.domain import config as cfg
from corral.domain.flavors import get_flavor
from corral.domain.render import render_resolution
from corral.domain.spec import VmSpec

from .support import define_and_read_back, parse


def xml_of(obj: cfg.Device) -> str:
    return etree.tostring(obj.to_element(), encoding="unicode")


def reparse(gfx: cfg.Graphics) -> cfg.Graphics:
    return cfg.Graphics.from_element(etree.fromstring(xml_of(gfx)))


def test_graphics_port_and_listen_are_written_once_and_read_back() -> None:
    """Before: ``port`` was never written and the listen address twice (attribute and <listen> child)."""
    gfx = cfg.Graphics(type="vnc", listen="192.0.2.7", passwd="s3cret", port=5907)
    elem = gfx.to_element()
    assert elem.get("port") == "5907"
    assert elem.get("autoport") == "yes"
    assert etree.tostring(elem, encoding="unicode").count("192.0.2.7") == 1
    assert [e.attrib for e in elem.findall("listen")] == [{"type": "address", "address": "192.0.2.7"}]
    assert reparse(gfx) == gfx


def test_graphics_fixed_port_round_trips() -> None:
    gfx = cfg.Graphics(type="vnc", port=5911, autoport=False, listen="::1")
    elem = gfx.to_element()
    assert (elem.get("port"), elem.get("autoport")) == ("5911", "no")
    back = reparse(gfx)
    assert (back.port, back.autoport, back.listen) == (5911, False, "::1")


@pytest.mark.parametrize("live", [
    # what libvirt writes for a running VNC: the legacy attribute and the element, equal
    "<graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'>"
    "<listen type='address' address='127.0.0.1'/></graphics>",
    # the attribute alone (libvirt's own Xen test files)
    "<graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'/>",
])
def test_graphics_of_a_running_domain_keeps_port_autoport_and_listen(live: str) -> None:
    gfx = cfg.Graphics.from_element(etree.fromstring(live))
    assert (gfx.port, gfx.autoport, gfx.listen) == (5901, True, "127.0.0.1")
    out = gfx.to_element()
    assert (out.get("port"), out.get("autoport")) == ("5901", "yes")
    assert out.find("listen").get("address") == "127.0.0.1" and out.get("listen") is None


def test_graphics_legacy_any_port_is_autoport() -> None:
    """libvirt's ``port='-1'`` is "allocate one" (formatdomain): read as no port, written as autoport."""
    gfx = cfg.Graphics.from_element(etree.fromstring("<graphics type='vnc' port='-1' autoport='yes'/>"))
    assert (gfx.port, gfx.autoport) == (None, True)
    assert gfx.to_element().attrib == {"type": "vnc", "autoport": "yes"}


def test_graphics_listen_of_another_type_is_not_an_address() -> None:
    gfx = cfg.Graphics.from_element(etree.fromstring(
        "<graphics type='spice' autoport='yes'><listen type='network' network='rednet'/></graphics>"))
    assert gfx.listen is None


def _domain_with(graphics: str) -> str:
    return ("<domain type='test'><name>corral-gfx-roundtrip</name><memory unit='KiB'>131072</memory>"
            "<os><type arch='x86_64'>hvm</type></os><devices>" + graphics + "</devices></domain>")


@pytest.mark.parametrize("fields", [
    {"type": "vnc", "listen": "192.0.2.7", "port": 5907, "autoport": False},
    {"type": "vnc", "listen": "127.0.0.1"},
    {"type": "spice", "listen": "::1", "passwd": "pw"},
])
def test_libvirt_holds_the_graphics_as_formatted(fields: dict[str, Any]) -> None:
    """libvirt (its test driver) accepts the one <listen> and keeps listen, port and autoport as written."""
    gfx = cfg.Graphics(**fields)
    held = define_and_read_back(_domain_with(xml_of(gfx)))
    back = cfg.Domain.from_xml(held)
    found = [d for d in back.devices if isinstance(d, cfg.Graphics)]
    assert len(found) == 1
    assert (found[0].type, found[0].listen, found[0].autoport) == (gfx.type, gfx.listen, gfx.autoport)
    if gfx.autoport is False:
        assert found[0].port == gfx.port
    graphics = parse(held).find("devices/graphics")
    assert graphics.get("listen") == gfx.listen  # libvirt repeats it itself, for older readers


def test_rendered_vnc_for_xen_says_its_listen_once() -> None:
    """[L13]: an explicit listen for libxl, which reads the address of the first <listen>."""
    spec = VmSpec.model_validate({"name": "gfx", "memory_mib": 512, "guest_type": "hvm",
                                  "graphics": {"type": "vnc", "listen": "::1"}})
    xml, _ = render_resolution(spec, get_flavor("xen"))
    graphics = parse(xml).find("devices/graphics")
    assert graphics.get("listen") is None
    assert [e.attrib for e in graphics.findall("listen")] == [{"type": "address", "address": "::1"}]
    assert graphics.get("autoport") == "yes"
