"""The QEMU/KVM driver (``qemu:///system``): virtio everywhere, HVM only.

Under TCG (no ``/dev/kvm``) the domain type becomes ``qemu`` and the host CPU cannot be passed through, so
the ``tcg`` variant overrides the CPU rows only.
"""

from __future__ import annotations

from corral.domain.flavors.base import Flavor, Table, native, refused, translated
from corral.domain.flavors.features import (
    AgentChannel,
    BootOrder,
    CdromDevice,
    ConsoleLog,
    GraphicsPassword,
    LinkControl,
    MemoryAtStart,
    MigrationMechanism,
    SeedDevice,
    SnapshotMechanism,
)
from corral.domain.flavors.features import Feature as F
from corral.domain.flavors.hostcheck import KVM_CHECKS
from corral.domain.spec import GuestType

_AS_HVM = "QEMU runs every guest fully virtualised; the PV kernel is booted directly as an HVM guest"

TABLE: Table = {
    F.GUEST_TYPE_HVM: native("hvm"),
    F.GUEST_TYPE_PV: translated("hvm", _AS_HVM),
    F.GUEST_TYPE_PVH: translated("hvm", _AS_HVM),
    F.DISK_BUS_AUTO: native("virtio", "virtio-blk is the fast paravirtual bus"),
    F.DISK_BUS_VIRTIO: native("virtio"),
    F.DISK_BUS_XEN: translated("virtio", "Xen's PV block bus is virtio-blk under QEMU"),
    F.DISK_BUS_IDE: native("ide"),
    F.DISK_BUS_SATA: native("sata"),
    F.DISK_BUS_SCSI: native("scsi", "on a virtio-scsi controller"),
    F.CDROM_BUS_AUTO: native("ide", "the pc machine's IDE channel"),
    F.CDROM_BUS_VIRTIO: translated("ide", "virtio-blk cannot carry removable media"),
    F.CDROM_BUS_XEN: translated("ide", "the pc machine's IDE channel"),
    F.CDROM_BUS_IDE: native("ide"),
    F.CDROM_BUS_SATA: native("sata"),
    F.CDROM_BUS_SCSI: native("scsi", "on a virtio-scsi controller"),
    F.CDROM_DEVICE: native(CdromDevice.REMOVABLE, "media changes live"),
    F.CDROM_EMPTY: native(None, "an empty drive, no <source>"),
    F.CDROM_INSERT_LIVE: native(None, "media goes into the running drive"),
    F.CDROM_CHANGE_LIVE: native(None, "media changes or is ejected in the running drive"),
    F.CDROM_DRIVER: native(None, "the disk's own driver"),
    F.CLOUD_INIT_SEED: native(SeedDevice.CDROM, "a CD-ROM whose media is the NoCloud seed (ISO 9660 "
                                                "volume 'cidata')"),
    F.FLOPPY: native("fdc"),
    F.DISK_FORMAT_RAW_FILE: native("qemu"),
    F.DISK_FORMAT_RAW_BLOCK: native("qemu"),
    F.DISK_FORMAT_QCOW2: native("qemu"),
    F.DISK_READONLY_FILE: native(None, "<readonly/>: QEMU opens the image read-only"),
    F.DISK_READONLY_BLOCK: native(None, "<readonly/>: QEMU opens the device read-only"),
    F.NIC_MODEL_AUTO: native("virtio"),
    F.NIC_MODEL_VIRTIO: native("virtio"),
    F.NIC_MODEL_E1000: native("e1000"),
    F.NIC_MODEL_RTL8139: native("rtl8139"),
    F.NIC_MODEL_NETFRONT: translated("virtio", "Xen's PV NIC is virtio-net under QEMU"),
    F.NIC_SOURCE_BRIDGE: native(),
    F.NIC_SOURCE_NETWORK: native(),
    F.NIC_LINK_DOWN: native(LinkControl.XML, "<link state='down'/>"),
    F.NIC_FILTER: native(None, "libvirt nwfilter"),
    F.GRAPHICS_VNC: native(),
    F.GRAPHICS_SPICE: native(),
    F.GRAPHICS_PASSWORD: native(GraphicsPassword.XML),
    F.GRAPHICS_LISTEN: native(None, "the host's loopback; reached through the agent's console relay"),
    F.GRAPHICS_LISTEN_PUBLIC: native(None, "a network address: only with a password (defence in depth; VNC's "
                                           "is 8 characters of DES) and where the cluster allows public consoles"),
    F.CONSOLE_SERIAL: native("serial", "16550 UART, ttyS0"),
    F.CONSOLE_PV: translated("virtio", "virtio console, hvc0"),
    F.CONSOLE_LOG: native(ConsoleLog.VIRTLOGD, "logged by virtlogd"),
    F.GUEST_AGENT: native(AgentChannel.VIRTIO_SERIAL, "virtio-serial channel"),
    F.BALLOON: native("virtio"),
    F.BOOT_ORDER: native(BootOrder.OS, "<os><boot dev>"),
    F.BOOT_KERNEL: native(),
    F.BOOT_BOOTLOADER: refused("QEMU has no host-side bootloader; boot the guest's disk or give a kernel"),
    F.CPU_HOST_MODEL: native("host-model"),
    F.CPU_HOST_PASSTHROUGH: native("host-passthrough"),
    F.CPU_CUSTOM: native("custom"),
    F.CPU_FEATURES: native(),
    F.MEMORY_BALLOON_HEADROOM: native(MemoryAtStart.AS_ASKED, "currentMemory below memory, balloon up to max"),
    F.VCPUS_HOTPLUG: native(None, "<vcpu current>, setVcpus within max"),
    F.ON_CRASH_DESTROY: native(),
    F.ON_CRASH_RESTART: native(),
    F.ON_CRASH_PRESERVE: native(),
    F.ON_CRASH_RENAME_RESTART: native(),
    F.ON_CRASH_COREDUMP_DESTROY: native(),
    F.ON_CRASH_COREDUMP_RESTART: native(),
    F.LIFECYCLE_DESTROY: native(),
    F.LIFECYCLE_RESTART: native(),
    F.LIFECYCLE_PRESERVE: native(),
    F.LIFECYCLE_RENAME_RESTART: native(),
    F.SNAPSHOT: native(SnapshotMechanism.LIBVIRT, "libvirt snapshots (virDomainSnapshotCreateXML): internal "
                                                  "qcow2 snapshots of every disk; every writable disk must be "
                                                  "qcow2"),
    F.SNAPSHOT_LIVE: native(None, "a running VM's snapshot holds its memory too; a revert resumes it running"),
    F.DISK_RESIZE_LIVE: native(None, "virDomainBlockResize: QEMU grows the image and tells the guest the new size"),
    F.MIGRATION: native(MigrationMechanism.PEER2PEER,
                        "managed peer-to-peer (virDomainMigrateToURI3 with PEER2PEER|LIVE|PERSIST_DEST|"
                        "UNDEFINE_SOURCE): the source libvirtd drives it, progress from the job stats; the data "
                        "is tunnelled through the authenticated libvirt connection, or goes QEMU to QEMU over a "
                        "migration network the request names"),
    F.MIGRATION_ABORT: native(None, "virDomainAbortJob: the VM keeps running on the source"),
    F.MIGRATION_BANDWIDTH: native(None, "VIR_MIGRATE_PARAM_BANDWIDTH (MiB/s)"),
}

_TCG_CPU = "TCG (no /dev/kvm) cannot pass the host CPU through; 'maximum' offers every feature QEMU emulates"

TCG_TABLE: Table = {
    **TABLE,
    F.CPU_HOST_MODEL: translated("maximum", _TCG_CPU),
    F.CPU_HOST_PASSTHROUGH: translated("maximum", _TCG_CPU),
}


def _qemu(domain_type: str, title: str, table: Table, accel: str) -> Flavor:
    return Flavor(name="kvm", domain_type=domain_type, title=title, table=table, accel=accel,
                  needs_dev_kvm=accel == "kvm",
                  guest_types=(GuestType.HVM,), os_type={GuestType.HVM: ("hvm", "pc")}, mac_prefix="52:54:00",
                  min_memory_mib={GuestType.HVM: 32}, max_vcpus={GuestType.HVM: 255},
                  video={"vnc": ("vga", 16), "spice": ("qxl", 64)}, default_uri="qemu:///system",
                  driver_logs=("/var/log/libvirt/qemu/{name}.log",), host_checks=KVM_CHECKS)


KVM = _qemu("kvm", "QEMU/KVM", TABLE, "kvm")
KVM_TCG = _qemu("qemu", "QEMU (TCG)", TCG_TABLE, "tcg")
