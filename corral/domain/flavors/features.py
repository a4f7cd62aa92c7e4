"""The keys of a flavor's table, declared once, and the typed answers that code branches on.

Every setting a VmSpec can ask for is one ``Feature``; every flavor answers every feature (a test walks them).
Parameterised families (a disk bus, a NIC model, a lifecycle action) are reached through the typed maps below,
indexed by the spec's own enums, so that a misspelt key is a ``KeyError`` at import time or a mypy error, never a
silent "no rule".

Where a rule's value is a *policy* that code outside the flavors acts on (who sets a NIC's link, where a console
is logged, how memory is given at start), the value is a member of a small enum here: ``POLICY_TYPES`` says which,
and a test checks that every flavor's value for such a feature has the declared type. Values that are libvirt XML
vocabulary (a bus, a NIC model, a driver name, a CPU mode) stay plain strings: they are rendered, not branched on.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from corral.domain.spec import (
    ConsoleKind,
    CpuMode,
    DiskBus,
    DiskSource,
    GraphicsType,
    GuestType,
    LifecycleAction,
    NicModel,
    NicSource,
)


class Feature(StrEnum):
    GUEST_TYPE_HVM = "guest_type.hvm"
    GUEST_TYPE_PV = "guest_type.pv"
    GUEST_TYPE_PVH = "guest_type.pvh"
    DISK_BUS_AUTO = "disk.bus.auto"
    DISK_BUS_VIRTIO = "disk.bus.virtio"
    DISK_BUS_XEN = "disk.bus.xen"
    DISK_BUS_IDE = "disk.bus.ide"
    DISK_BUS_SATA = "disk.bus.sata"
    DISK_BUS_SCSI = "disk.bus.scsi"
    CDROM_BUS_AUTO = "cdrom.bus.auto"
    CDROM_BUS_VIRTIO = "cdrom.bus.virtio"
    CDROM_BUS_XEN = "cdrom.bus.xen"
    CDROM_BUS_IDE = "cdrom.bus.ide"
    CDROM_BUS_SATA = "cdrom.bus.sata"
    CDROM_BUS_SCSI = "cdrom.bus.scsi"
    CDROM_DEVICE = "cdrom.device"
    CDROM_EMPTY = "cdrom.empty"
    CDROM_INSERT_LIVE = "cdrom.insert_live"  # media into a drive that was empty when the domain started
    CDROM_CHANGE_LIVE = "cdrom.change_live"  # media changed or ejected in a running drive that has media
    CDROM_DRIVER = "cdrom.driver"
    CLOUD_INIT_SEED = "cloud_init.seed"  # the NoCloud seed the agent builds for VmSpec.cloud_init
    FLOPPY = "floppy"
    DISK_FORMAT_RAW_FILE = "disk.format.raw.file"
    DISK_FORMAT_RAW_BLOCK = "disk.format.raw.block"
    DISK_FORMAT_QCOW2 = "disk.format.qcow2"
    DISK_READONLY_FILE = "disk.readonly.file"  # a read-only disk (not a CD-ROM) backed by a file
    DISK_READONLY_BLOCK = "disk.readonly.block"  # a read-only disk (not a CD-ROM) backed by a block device
    NIC_MODEL_AUTO = "nic.model.auto"
    NIC_MODEL_VIRTIO = "nic.model.virtio"
    NIC_MODEL_E1000 = "nic.model.e1000"
    NIC_MODEL_RTL8139 = "nic.model.rtl8139"
    NIC_MODEL_NETFRONT = "nic.model.netfront"
    NIC_SOURCE_BRIDGE = "nic.source.bridge"
    NIC_SOURCE_NETWORK = "nic.source.network"
    NIC_LINK_DOWN = "nic.link_down"
    NIC_FILTER = "nic.filter"
    GRAPHICS_VNC = "graphics.vnc"
    GRAPHICS_SPICE = "graphics.spice"
    GRAPHICS_PASSWORD = "graphics.password"
    GRAPHICS_LISTEN = "graphics.listen"  # on the host's loopback, relayed by the agent (issue 14)
    GRAPHICS_LISTEN_PUBLIC = "graphics.listen.public"  # on a network address (a cluster must allow it)
    CONSOLE_SERIAL = "console.serial"
    CONSOLE_PV = "console.pv"
    CONSOLE_LOG = "console.log"
    GUEST_AGENT = "guest_agent"
    BALLOON = "balloon"
    BOOT_ORDER = "boot.order"
    BOOT_KERNEL = "boot.kernel"
    BOOT_BOOTLOADER = "boot.bootloader"
    CPU_HOST_MODEL = "cpu.host-model"
    CPU_HOST_PASSTHROUGH = "cpu.host-passthrough"
    CPU_CUSTOM = "cpu.custom"
    CPU_FEATURES = "cpu.features"
    MEMORY_BALLOON_HEADROOM = "memory.balloon_headroom"
    VCPUS_HOTPLUG = "vcpus.hotplug"
    ON_CRASH_DESTROY = "on_crash.destroy"
    ON_CRASH_RESTART = "on_crash.restart"
    ON_CRASH_PRESERVE = "on_crash.preserve"
    ON_CRASH_RENAME_RESTART = "on_crash.rename-restart"
    ON_CRASH_COREDUMP_DESTROY = "on_crash.coredump-destroy"
    ON_CRASH_COREDUMP_RESTART = "on_crash.coredump-restart"
    LIFECYCLE_DESTROY = "lifecycle.destroy"
    LIFECYCLE_RESTART = "lifecycle.restart"
    LIFECYCLE_PRESERVE = "lifecycle.preserve"
    LIFECYCLE_RENAME_RESTART = "lifecycle.rename-restart"
    SNAPSHOT = "snapshot"  # how a VM's snapshots are taken (SnapshotMechanism); not a spec field: an operation
    SNAPSHOT_LIVE = "snapshot.live"  # a snapshot of a running VM (with its memory)
    DISK_RESIZE_LIVE = "disk.resize_live"  # a running VM's disk grown in place (an operation, not a spec field)
    MIGRATION = "migration"  # how a running VM moves to another host (MigrationMechanism); an operation
    MIGRATION_ABORT = "migration.abort"  # a running migration cancelled, the VM left running on the source
    MIGRATION_BANDWIDTH = "migration.bandwidth"  # a migration's bandwidth limited (MiB/s)


class Check(StrEnum):
    """Decisions that are not table rules but limits every flavor applies (shown in plans like the rules)."""

    MEMORY_MINIMUM = "memory.minimum"
    VCPUS_MAXIMUM = "vcpus.maximum"
    NIC_MAC = "nic.mac"
    BUS_SLOTS = "disk.bus.slots"
    SINGLE_CONSOLE = "console.single"
    NEEDS_BOOT = "boot.needed"
    # what the host itself lacks (checked by the agent on the host: corral.agent.hostfacts)
    HOST_BRIDGE = "host.bridge"
    HOST_NETWORK = "host.network"
    HOST_FILE = "host.file"
    HOST_BLOCK = "host.block_device"
    HOST_BOOTLOADER = "host.bootloader"
    HOST_FORMAT = "host.format"  # the image's bytes say another format than the one declared [L1]


F = Feature

GUEST_TYPE: Mapping[GuestType, Feature] = {
    GuestType.HVM: F.GUEST_TYPE_HVM, GuestType.PV: F.GUEST_TYPE_PV, GuestType.PVH: F.GUEST_TYPE_PVH}
DISK_BUS: Mapping[DiskBus, Feature] = {
    DiskBus.AUTO: F.DISK_BUS_AUTO, DiskBus.VIRTIO: F.DISK_BUS_VIRTIO, DiskBus.XEN: F.DISK_BUS_XEN,
    DiskBus.IDE: F.DISK_BUS_IDE, DiskBus.SATA: F.DISK_BUS_SATA, DiskBus.SCSI: F.DISK_BUS_SCSI}
CDROM_BUS: Mapping[DiskBus, Feature] = {
    DiskBus.AUTO: F.CDROM_BUS_AUTO, DiskBus.VIRTIO: F.CDROM_BUS_VIRTIO, DiskBus.XEN: F.CDROM_BUS_XEN,
    DiskBus.IDE: F.CDROM_BUS_IDE, DiskBus.SATA: F.CDROM_BUS_SATA, DiskBus.SCSI: F.CDROM_BUS_SCSI}
RAW_SOURCE: Mapping[DiskSource, Feature] = {
    DiskSource.FILE: F.DISK_FORMAT_RAW_FILE, DiskSource.BLOCK: F.DISK_FORMAT_RAW_BLOCK}
READONLY_SOURCE: Mapping[DiskSource, Feature] = {
    DiskSource.FILE: F.DISK_READONLY_FILE, DiskSource.BLOCK: F.DISK_READONLY_BLOCK}
NIC_MODEL: Mapping[NicModel, Feature] = {
    NicModel.AUTO: F.NIC_MODEL_AUTO, NicModel.VIRTIO: F.NIC_MODEL_VIRTIO, NicModel.E1000: F.NIC_MODEL_E1000,
    NicModel.RTL8139: F.NIC_MODEL_RTL8139, NicModel.NETFRONT: F.NIC_MODEL_NETFRONT}
NIC_SOURCE: Mapping[NicSource, Feature] = {
    NicSource.BRIDGE: F.NIC_SOURCE_BRIDGE, NicSource.NETWORK: F.NIC_SOURCE_NETWORK}
GRAPHICS: Mapping[GraphicsType, Feature] = {GraphicsType.VNC: F.GRAPHICS_VNC, GraphicsType.SPICE: F.GRAPHICS_SPICE}
CONSOLE: Mapping[ConsoleKind, Feature] = {ConsoleKind.SERIAL: F.CONSOLE_SERIAL, ConsoleKind.PV: F.CONSOLE_PV}
CPU_MODE: Mapping[CpuMode, Feature] = {
    CpuMode.HOST_MODEL: F.CPU_HOST_MODEL, CpuMode.HOST_PASSTHROUGH: F.CPU_HOST_PASSTHROUGH,
    CpuMode.CUSTOM: F.CPU_CUSTOM}
ON_CRASH: Mapping[LifecycleAction, Feature] = {
    LifecycleAction.DESTROY: F.ON_CRASH_DESTROY, LifecycleAction.RESTART: F.ON_CRASH_RESTART,
    LifecycleAction.PRESERVE: F.ON_CRASH_PRESERVE, LifecycleAction.RENAME_RESTART: F.ON_CRASH_RENAME_RESTART,
    LifecycleAction.COREDUMP_DESTROY: F.ON_CRASH_COREDUMP_DESTROY,
    LifecycleAction.COREDUMP_RESTART: F.ON_CRASH_COREDUMP_RESTART}
# on_poweroff / on_reboot: libvirt takes the four plain actions only (the spec refuses coredump-* there)
LIFECYCLE: Mapping[LifecycleAction, Feature] = {
    LifecycleAction.DESTROY: F.LIFECYCLE_DESTROY, LifecycleAction.RESTART: F.LIFECYCLE_RESTART,
    LifecycleAction.PRESERVE: F.LIFECYCLE_PRESERVE, LifecycleAction.RENAME_RESTART: F.LIFECYCLE_RENAME_RESTART}


# ---- typed policy answers ---------------------------------------------------------------------------------


class LinkControl(StrEnum):
    """Who makes a NIC's link state real."""

    XML = "libvirt-xml"  # <link state='down'/>, applied by libvirt
    AGENT = "agent"  # libvirt ignores it: the agent sets the host side of the NIC down itself, after every start


class GraphicsPassword(StrEnum):
    XML = "libvirt-xml"  # <graphics passwd=...>
    RELAY = "relay"  # not rendered, not needed: the console listens on loopback only and the agent relays it


class ConsoleLog(StrEnum):
    VIRTLOGD = "virtlogd"  # <log file=...> on the character device
    DAEMON = "daemon"  # the hypervisor's console daemon logs it (xenconsoled), where ``Flavor.console_daemon_log`` says
    FILE = "file"  # the serial port itself writes to a file the agent reads


class MemoryAtStart(StrEnum):
    AS_ASKED = "as-asked"  # currentMemory below memory, the balloon grows it up to max
    AT_MAX_THEN_BALLOON = "at-max-then-balloon"  # starts at max; the agent sets the balloon target after the start


class BootOrder(StrEnum):
    OS = "os"  # <os><boot dev=...>


class CdromDevice(StrEnum):
    """What a CD-ROM is rendered as. Only a removable drive today: a read-only disk in its place (tried for Xen
    PV) is dropped by Xen 4.17's qdisk backend at start ('Block node is read-only'), so the guest ran without
    it; whether its media may change while the VM runs is ``Feature.CDROM_CHANGE_LIVE``."""

    REMOVABLE = "cdrom"  # device='cdrom'


class SeedDevice(StrEnum):
    """How the guest gets its cloud-init seed (an ISO 9660 volume labelled ``cidata``)."""

    CDROM = "cdrom"  # a CD-ROM drive with the seed as its media, on the flavor's CD-ROM bus
    # a read-only disk on the flavor's disk bus, for a guest with no CD-ROM drive (no flavor today: Xen PV
    # takes a PV CD-ROM, as its qdisk backend refuses read-only disks)
    READONLY_DISK = "disk"


class AgentChannel(StrEnum):
    """How the guest agent's channel reaches the host; the value is libvirt's channel target type."""

    VIRTIO_SERIAL = "virtio"
    UNIX_SOCKET = "xen"  # a channel on a unix socket the agent opens (no virtio-serial)


class SnapshotMechanism(StrEnum):
    """Who takes a VM's snapshots (corral.agent.snapshots)."""

    LIBVIRT = "libvirt"  # virDomainSnapshotCreateXML: internal qcow2 snapshots, with memory while running
    OFFLINE_QCOW2 = "offline-qcow2"  # the driver has no snapshot API: the agent runs qemu-img on the stopped VM


class MigrationMechanism(StrEnum):
    """How the agent migrates a running VM (corral.agent.migration)."""

    # managed peer-to-peer: the source libvirtd connects to the destination's and drives the whole migration,
    # so the source agent alone runs it, reads its progress and can abort it; the destination is defined
    # persistently and the source's definition removed. The data goes through the authenticated libvirt
    # connection (tunnelled), or QEMU to QEMU over a migration network when the request names one
    PEER2PEER = "peer2peer"
    # managed peer-to-peer whose data always goes over the hypervisor's own migration stream, never tunnelled
    # through libvirtd (libxl: a tunnelled live migration that libxl failed hung for 14 min, measured on the pair)
    PEER2PEER_DIRECT = "peer2peer-direct"


POLICY_TYPES: Mapping[Feature, type[StrEnum]] = {
    F.NIC_LINK_DOWN: LinkControl,
    F.GRAPHICS_PASSWORD: GraphicsPassword,
    F.CONSOLE_LOG: ConsoleLog,
    F.MEMORY_BALLOON_HEADROOM: MemoryAtStart,
    F.BOOT_ORDER: BootOrder,
    F.CDROM_DEVICE: CdromDevice,
    F.CLOUD_INIT_SEED: SeedDevice,
    F.GUEST_AGENT: AgentChannel,
    F.SNAPSHOT: SnapshotMechanism,
    F.MIGRATION: MigrationMechanism,
}
