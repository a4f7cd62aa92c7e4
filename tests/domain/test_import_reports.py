"""The importer reports each setting it drops, with its XML path: nothing is dropped silently."""

from __future__ import annotations

import pytest

from corral.domain.importer import import_domain

DOMAIN = """<domain type='kvm'>
  <name>imported</name>
  <uuid>9f5b6a1e-2c1d-4e8a-9b7c-3d2e1f0a4b5c</uuid>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><source file='/var/lib/a.raw'/><target dev='vda' bus='virtio'/></disk>
    {extra}
  </devices>
</domain>"""


def warnings_of(extra: str) -> dict[str, str]:
    return {w.path: w.message for w in import_domain(DOMAIN.format(extra=extra)).warnings}


@pytest.mark.parametrize(("extra", "path", "words"), [
    ("<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/>"
     "<model type='virtio'/><driver name='vhost' queues='4'/></interface>", "devices/interface[1]/driver",
     ("backend", "queues")),
    ("<interface type='bridge'><mac address='00:16:3e:00:00:01'/><source bridge='br0'/>"
     "<backenddomain name='netdom'/></interface>", "devices/interface[1]/backenddomain", ("driver domain",)),
    ("<graphics type='vnc' port='5901' autoport='no'/>", "devices/graphics[1]/@port", ("fixed port",)),
    ("<graphics type='vnc' autoport='yes' keymap='de'/>", "devices/graphics[1]/@keymap", ("not represented",)),
    ("<graphics type='spice' autoport='yes'><mouse mode='client'/><clipboard copypaste='no'/></graphics>",
     "devices/graphics[1]/clipboard", ("not represented",)),
    ("<controller type='usb' index='0' model='qusb2' ports='6'/>", "devices/controller[1]", ("qusb2",)),
    ("<controller type='usb' index='0' model='none'/>", "devices/controller[1]", ("'none'",)),
    ("<controller type='ccid' index='0'/>", "devices/controller[1]", ("ccid",)),
    ("<video><model type='virtio' heads='1'/></video>", "devices/video[1]", ("virtio",)),
])
def test_dropped_setting_is_reported(extra: str, path: str, words: tuple[str, ...]) -> None:
    found = warnings_of(extra)
    assert path in found, found
    assert all(word in found[path] for word in words), found[path]


@pytest.mark.parametrize("extra", [
    "<controller type='usb' index='0' model='piix3-uhci'/>",  # libvirt writes the machine's default itself
    "<controller type='pci' index='0' model='pci-root'/>",
    "<controller type='virtio-serial' index='0'/>",
    "<graphics type='vnc' autoport='yes'/><video><model type='vga' vram='16384' heads='1' primary='yes'/></video>",
    "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'><listen type='address' "
    "address='127.0.0.1'/></graphics>",
    "<interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/>"
    "<script path='vif-bridge'/></interface>",
])
def test_what_the_flavor_derives_is_not_reported(extra: str) -> None:
    assert warnings_of(extra) == {}


def test_a_floppy_without_a_bus_attribute_imports() -> None:
    """`<target dev='fda'/>` (no bus): the prefix says fdc, a floppy's only bus, which the spec calls 'auto'."""
    from corral.domain.importer import import_domain

    xml = ("<domain type='kvm'><name>f</name><memory>131072</memory><os><type>hvm</type></os><devices>"
           "<disk type='file' device='floppy'><source file='/var/lib/corral/boot.img'/><target dev='fda'/></disk>"
           "</devices></domain>")
    spec = import_domain(xml).spec
    assert [(d.device.value, d.bus.value) for d in spec.disks] == [("floppy", "auto")]
