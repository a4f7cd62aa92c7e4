"""The QEMU/KVM driver (``qemu:///system``): virtio everywhere, HVM only.

Under TCG (no ``/dev/kvm``) the domain type becomes ``qemu`` and the host CPU cannot be passed through, so
the ``tcg`` variant overrides the CPU rows only.
"""

from __future__ import annotations

from corral.domain.flavors.base import Flavor, native, refused, translated
from corral.domain.spec import GuestType

_AS_HVM = "QEMU runs every guest fully virtualised; the PV kernel is booted directly as an HVM guest"

TABLE = {
    "guest_type.hvm": native("hvm"),
    "guest_type.pv": translated("hvm", _AS_HVM),
    "guest_type.pvh": translated("hvm", _AS_HVM),
    "disk.bus.auto": native("virtio", "virtio-blk is the fast paravirtual bus"),
    "disk.bus.virtio": native("virtio"),
    "disk.bus.xen": translated("virtio", "Xen's PV block bus is virtio-blk under QEMU"),
    "disk.bus.ide": native("ide"),
    "disk.bus.sata": native("sata"),
    "disk.bus.scsi": native("scsi", "on a virtio-scsi controller"),
    "cdrom.bus.auto": native("ide", "the pc machine's IDE channel"),
    "cdrom.bus.virtio": translated("ide", "virtio-blk cannot carry removable media"),
    "cdrom.bus.xen": translated("ide", "the pc machine's IDE channel"),
    "cdrom.bus.ide": native("ide"),
    "cdrom.bus.sata": native("sata"),
    "cdrom.bus.scsi": native("scsi", "on a virtio-scsi controller"),
    "cdrom.device": native("cdrom", "media changes live"),
    "cdrom.empty": native(None, "an empty drive, no <source>"),
    "floppy": native("fdc"),
    "disk.format.raw.file": native("qemu"),
    "disk.format.raw.block": native("qemu"),
    "disk.format.qcow2": native("qemu"),
    "nic.model.auto": native("virtio"),
    "nic.model.virtio": native("virtio"),
    "nic.model.e1000": native("e1000"),
    "nic.model.rtl8139": native("rtl8139"),
    "nic.model.netfront": translated("virtio", "Xen's PV NIC is virtio-net under QEMU"),
    "nic.source.bridge": native(),
    "nic.source.network": native(),
    "nic.link_down": native("xml", "<link state='down'/>"),
    "nic.filter": native("xml", "libvirt nwfilter"),
    "graphics.vnc": native(),
    "graphics.spice": native(),
    "graphics.password": native("xml"),
    "graphics.listen": native(),
    "console.serial": native("serial", "16550 UART, ttyS0"),
    "console.pv": translated("virtio", "virtio console, hvc0"),
    "console.log": native("xml", "logged by virtlogd"),
    "guest_agent": native("virtio", "virtio-serial channel"),
    "balloon": native("virtio"),
    "boot.order": native("os", "<os><boot dev>"),
    "boot.kernel": native(),
    "boot.bootloader": refused("QEMU has no host-side bootloader; boot the guest's disk or give a kernel"),
    "cpu.host-model": native("host-model"),
    "cpu.host-passthrough": native("host-passthrough"),
    "cpu.custom": native("custom"),
    "cpu.features": native(),
    "memory.balloon_headroom": native(None, "currentMemory below memory, balloon up to max"),
    "vcpus.hotplug": native(None, "<vcpu current>, setVcpus within max"),
    "on_crash.destroy": native(),
    "on_crash.restart": native(),
    "on_crash.preserve": native(),
    "on_crash.rename-restart": native(),
    "on_crash.coredump-destroy": native(),
    "on_crash.coredump-restart": native(),
    "lifecycle.destroy": native(),
    "lifecycle.restart": native(),
    "lifecycle.preserve": native(),
    "lifecycle.rename-restart": native(),
}

_TCG_CPU = "TCG (no /dev/kvm) cannot pass the host CPU through; 'maximum' offers every feature QEMU emulates"

TCG_TABLE = {
    **TABLE,
    "cpu.host-model": translated("maximum", _TCG_CPU),
    "cpu.host-passthrough": translated("maximum", _TCG_CPU),
}

_COMMON = dict(
    guest_types=(GuestType.HVM,),
    os_type={GuestType.HVM: ("hvm", "pc")},
    mac_prefix="52:54:00",
    min_memory_mib={GuestType.HVM: 32},
    max_vcpus={GuestType.HVM: 255},
    video={"vnc": ("vga", 16), "spice": ("qxl", 64)},
)

KVM = Flavor(name="kvm", domain_type="kvm", title="QEMU/KVM", table=TABLE, **_COMMON)  # type: ignore[arg-type]
KVM_TCG = Flavor(name="kvm", domain_type="qemu", title="QEMU (TCG)", table=TCG_TABLE, **_COMMON)  # type: ignore[arg-type]
