"""The Xen driver (libxl, ``xen:///system``): PV, PVH and HVM guests.

Every row follows a measured behaviour of libvirt 9.0 + Xen 4.17 (``docs/xen-gaps.md``, rows in brackets):
what libxl accepts at define time but fails at start, or accepts and silently ignores, is translated or
refused here so that nothing reaches libvirt that would not work.
"""

from __future__ import annotations

from corral.domain.flavors.base import Flavor, native, refused, translated
from corral.domain.spec import GuestType

PV, PVH, HVM = GuestType.PV, GuestType.PVH, GuestType.HVM
_PVS = (PV, PVH)


def _pv_hvm(pv: object, hvm: object) -> dict[GuestType, object]:
    return {PV: pv, PVH: pv, HVM: hvm}


_FLOPPY = "libxl has no floppy drive: libvirt accepts the definition but the start fails " \
          "('unsupported virtual disk identifier fda') [L9]"
_VIRTIO_DISK = "libxl has no virtio-blk; the start would fail ('unsupported virtual disk identifier vdX') [D4]"
_VIRTIO_NIC = "libxl has no virtio-net; PV guests take netfront only, HVM qemu refuses 'virtio' [D4]"

TABLE = {
    "guest_type.hvm": native("hvm"),
    "guest_type.pv": native("pv"),
    "guest_type.pvh": native("pvh"),
    "disk.bus.auto": _pv_hvm(native("xen", "Xen PV block device xvdX"), native("ide", "emulated IDE hdX")),
    "disk.bus.virtio": _pv_hvm(translated("xen", f"{_VIRTIO_DISK}; PV block xvdX instead"),
                               translated("ide", f"{_VIRTIO_DISK}; emulated IDE hdX instead")),
    "disk.bus.xen": native("xen"),
    "disk.bus.ide": _pv_hvm(translated("xen", "PV guests have no emulated IDE; PV block xvdX"), native("ide")),
    "disk.bus.sata": _pv_hvm(translated("xen", "PV guests have no emulated SATA; PV block xvdX"),
                             translated("ide", "libxl's HVM device model offers IDE, not SATA")),
    "disk.bus.scsi": _pv_hvm(translated("xen", "PV guests have no emulated SCSI; PV block xvdX"),
                             translated("ide", "libxl's HVM device model offers IDE, not SCSI")),
    "cdrom.bus.auto": _pv_hvm(native("xen", "PV CD-ROM xvdX"), native("ide", "emulated IDE CD-ROM")),
    "cdrom.bus.virtio": _pv_hvm(translated("xen", "PV CD-ROM xvdX"), translated("ide", "emulated IDE CD-ROM")),
    "cdrom.bus.xen": native("xen"),
    "cdrom.bus.ide": _pv_hvm(translated("xen", "PV CD-ROM xvdX"), native("ide")),
    "cdrom.bus.sata": _pv_hvm(translated("xen", "PV CD-ROM xvdX"), translated("ide", "emulated IDE CD-ROM")),
    "cdrom.bus.scsi": _pv_hvm(translated("xen", "PV CD-ROM xvdX"), translated("ide", "emulated IDE CD-ROM")),
    "cdrom.device": _pv_hvm(
        translated("disk", "libxl gives PV guests no removable media: media change and CD-ROM unplug are refused "
                           "(measured); the CD-ROM is a read-only PV disk, unplugged and plugged again when the "
                           "media changes"),
        native("cdrom", "emulated IDE CD-ROM; media changes live")),
    "cdrom.empty": _pv_hvm(
        translated(None, "no drive while there is no media (a PV disk needs a source); it is plugged in when "
                         "media is inserted, under the same name"),
        native(None, "an empty drive, rendered without <source> (never file='') [L4, L5]")),
    "floppy": refused(_FLOPPY),
    "disk.format.raw.file": native("qemu", "<driver name='qemu' type='raw'/> (qdisk backend)"),
    "disk.format.raw.block": native("phy", "<driver name='phy' type='raw'/> (blkback)"),
    "disk.format.qcow2": native("qemu", "<driver name='qemu' type='qcow2'/> (qdisk); without the driver "
                                        "name libxl would read the file as raw [L1]"),
    "nic.model.auto": _pv_hvm(native("netfront"), native("e1000")),
    "nic.model.virtio": _pv_hvm(translated("netfront", f"{_VIRTIO_NIC}; Xen PV NIC instead"),
                                translated("e1000", f"{_VIRTIO_NIC}; emulated e1000 instead")),
    "nic.model.e1000": _pv_hvm(translated("netfront", "PV guests take netfront only"), native("e1000")),
    "nic.model.rtl8139": _pv_hvm(translated("netfront", "PV guests take netfront only"), native("rtl8139")),
    "nic.model.netfront": native("netfront"),
    "nic.source.bridge": native(),
    "nic.source.network": native(),
    "nic.link_down": translated("agent", "libxl ignores <link state> [L11]; the agent sets vifD.N down in dom0 "
                                         "after start and reports the real state"),
    "nic.filter": refused("libxl keeps <filterref> but never applies it: the guest would run unfiltered [L10]"),
    "graphics.vnc": native(),
    "graphics.spice": _pv_hvm(refused("SPICE needs an emulated display: HVM guests only [D5]"),
                              native(None, "QXL video RAM comes out of guest memory [D5]")),
    "graphics.password": translated(
        "proxy", "Debian's Xen device model fails to start with any VNC password ('Cipher backend does not "
                 "support DES') [L12]; the password is not rendered: the console listens on a non-public "
                 "address and is reached only through the engine's console proxy with per-session tokens"),
    "graphics.listen": native(None, "explicit listen address; libxl would otherwise pick 127.0.0.1 [L13]"),
    "console.serial": _pv_hvm(translated("xen", "PV guests have no UART; the Xen PV console hvc0 instead"),
                              native("serial", "emulated UART ttyS0")),
    "console.pv": native("xen", "Xen PV console hvc0"),
    "console.log": _pv_hvm(
        translated("xenconsoled", "libxl has no <log> on consoles; xenconsoled logs "
                                  "/var/log/xen/console/guest-NAME.log"),
        translated("file", "xenconsoled never sees an HVM serial port (measured); the serial port writes to a "
                           "file the agent reads, and the PV console stays interactive")),
    "guest_agent": translated("xen", "libxl has no virtio-serial (start fails: 'channel target type not "
                                     "supported') [D2]; a Xen channel on a unix socket instead"),
    "balloon": translated("xen", "Xen's own balloon (model='xen') [D3]"),
    "boot.order": _pv_hvm(translated(None, "PV guests boot their kernel or bootloader; no boot order is used"),
                          native("os", "<os><boot dev>; libxl ignores per-device boot order [L4]")),
    "boot.kernel": native(),
    "boot.bootloader": _pv_hvm(native(), refused("HVM guests boot from their disks; a host-side bootloader "
                                                 "is for PV guests")),
    "cpu.host-model": _pv_hvm(translated(None, "PV guests see the host CPU through Xen's PV CPUID policy"),
                              translated("host-passthrough", "libxl has no host-model; Xen passes the host "
                                                             "CPU with its default CPUID policy [L2]")),
    "cpu.host-passthrough": _pv_hvm(translated(None, "PV guests see the host CPU through Xen's PV CPUID policy"),
                                    native("host-passthrough")),
    "cpu.custom": refused("libxl has no named CPU models [L2]; use host-passthrough with features"),
    "cpu.features": _pv_hvm(refused("CPUID features are applied to HVM guests only"),
                            native(None, "applied as a Xen CPUID policy")),
    "memory.balloon_headroom": _pv_hvm(
        native(None, "PV guests start at memory and balloon up to max [D3]"),
        translated("max", "an HVM guest below its max would run populate-on-demand; it starts with max "
                          "memory and the balloon lowers it afterwards [D3]")),
    "vcpus.hotplug": native(None, "<vcpu current>, setVcpus within max; the guest onlines the CPUs [X2]"),
    "on_crash.destroy": native(),
    "on_crash.restart": native(),
    "on_crash.preserve": refused("libvirt reports a preserved crashed Xen domain as shut off while Xen keeps "
                                 "it [L8]; use coredump-destroy to keep a dump"),
    "on_crash.rename-restart": native(),
    "on_crash.coredump-destroy": native(None, "dump in /var/lib/libvirt/libxl/dump"),
    "on_crash.coredump-restart": native(None, "dump in /var/lib/libvirt/libxl/dump, then a new domain [L8]"),
    "lifecycle.destroy": native(),
    "lifecycle.restart": native(),
    "lifecycle.preserve": native(),
    "lifecycle.rename-restart": native(),
}

XEN = Flavor(
    name="xen",
    domain_type="xen",
    title="Xen (libxl)",
    guest_types=(PV, PVH, HVM),
    table=TABLE,  # type: ignore[arg-type]
    os_type={PV: ("linux", "xenpv"), PVH: ("xenpvh", "xenpvh"), HVM: ("hvm", "xenfv")},
    mac_prefix="00:16:3e",
    min_memory_mib={PV: 32, PVH: 32, HVM: 32},
    max_vcpus={PV: 512, PVH: 128, HVM: 128},
    video={"vnc": ("vga", 16), "spice": ("qxl", 64)},
)
