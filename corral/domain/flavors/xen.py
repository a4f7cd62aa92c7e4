"""The Xen driver (libxl, ``xen:///system``): PV, PVH and HVM guests.

Every row follows a measured behaviour of libvirt 9.0 + Xen 4.17 (``docs/xen-gaps.md``, rows in brackets):
what libxl accepts at define time but fails at start, or accepts and silently ignores, is translated or
refused here so that nothing reaches libvirt that would not work.
"""

from __future__ import annotations

from corral.domain.flavors.base import Flavor, Rule, Table, native, refused, translated
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
from corral.domain.flavors.hostcheck import XEN_CHECKS
from corral.domain.spec import GuestType

PV, PVH, HVM = GuestType.PV, GuestType.PVH, GuestType.HVM
_PVS = (PV, PVH)


def _pv_hvm(pv: Rule, hvm: Rule) -> dict[GuestType, Rule]:
    return {PV: pv, PVH: pv, HVM: hvm}


_FLOPPY = "libxl has no floppy drive: libvirt accepts the definition but the start fails " \
          "('unsupported virtual disk identifier fda') [L9]"
_VIRTIO_DISK = "libxl has no virtio-blk; the start would fail ('unsupported virtual disk identifier vdX') [D4]"
# measured on the Xen lab (libvirt 9.0, Xen 4.17), for a running and for a stopped domain alike
NO_SNAPSHOT_API = "this function is not supported by the connection driver: virDomainSnapshotCreateXML"
# measured on the Xen lab (libvirt 9.0, Xen 4.17) during a migration [L15]
NO_ABORT_JOB = "this function is not supported by the connection driver: virDomainAbortJob"
NO_BLOCK_RESIZE = "this function is not supported by the connection driver: virDomainBlockResize"
# measured on the Xen lab (Xen 4.17.7, libvirt 9.0, qemu 7.2 as qdisk): docs/xen-readonly.md [X6]
_RO_QDISK = ("a read-only disk on a file takes Xen's qdisk backend, which refuses it: qemu-dm logs 'failed to "
             "create 'qdisk' device '51712': realization of device xen-disk failed: Block node is read-only' and "
             "libxl starts the guest without the disk, saying nothing (measured on Xen 4.17) [X6]. Make the disk "
             "writable, give the image as a CD-ROM (device: cdrom; a PV guest sees a read-only xvdX with its "
             "bytes), or use a block device")
_RO_IDE = ("an HVM guest's disk is also an emulated IDE disk, and libxl fails the start of a read-only one "
           "('qemu-xen doesn't support read-only IDE disk drivers', measured on Xen 4.17) [X6]. Make the disk "
           "writable, or give the image as a CD-ROM (device: cdrom)")
_PV_MEDIA_LIVE = ("libxl cannot change or eject the media of a running PV guest's CD-ROM (measured on Xen 4.17: "
                  "'libxenlight failed to change media for disk xvdX'; unplugging it: 'device type cdrom cannot "
                  "hot unplugged'); change the media while the VM is down: the next start has it [X6]")
_VIRTIO_NIC = "libxl has no virtio-net; PV guests take netfront only, HVM qemu refuses 'virtio' [D4]"

TABLE: Table = {
    F.GUEST_TYPE_HVM: native("hvm"),
    F.GUEST_TYPE_PV: native("pv"),
    F.GUEST_TYPE_PVH: native("pvh"),
    F.DISK_BUS_AUTO: _pv_hvm(native("xen", "Xen PV block device xvdX"), native("ide", "emulated IDE hdX")),
    F.DISK_BUS_VIRTIO: _pv_hvm(translated("xen", f"{_VIRTIO_DISK}; PV block xvdX instead"),
                               translated("ide", f"{_VIRTIO_DISK}; emulated IDE hdX instead")),
    F.DISK_BUS_XEN: native("xen"),
    F.DISK_BUS_IDE: _pv_hvm(translated("xen", "PV guests have no emulated IDE; PV block xvdX"), native("ide")),
    F.DISK_BUS_SATA: _pv_hvm(translated("xen", "PV guests have no emulated SATA; PV block xvdX"),
                             translated("ide", "libxl's HVM device model offers IDE, not SATA")),
    F.DISK_BUS_SCSI: _pv_hvm(translated("xen", "PV guests have no emulated SCSI; PV block xvdX"),
                             translated("ide", "libxl's HVM device model offers IDE, not SCSI")),
    F.CDROM_BUS_AUTO: _pv_hvm(native("xen", "PV CD-ROM xvdX"), native("ide", "emulated IDE CD-ROM")),
    F.CDROM_BUS_VIRTIO: _pv_hvm(translated("xen", "PV CD-ROM xvdX"), translated("ide", "emulated IDE CD-ROM")),
    F.CDROM_BUS_XEN: native("xen"),
    F.CDROM_BUS_IDE: _pv_hvm(translated("xen", "PV CD-ROM xvdX"), native("ide")),
    F.CDROM_BUS_SATA: _pv_hvm(translated("xen", "PV CD-ROM xvdX"), translated("ide", "emulated IDE CD-ROM")),
    F.CDROM_BUS_SCSI: _pv_hvm(translated("xen", "PV CD-ROM xvdX"), translated("ide", "emulated IDE CD-ROM")),
    F.CDROM_DEVICE: _pv_hvm(
        native(CdromDevice.REMOVABLE, "a PV CD-ROM xvdX (device='cdrom'): the guest sees the media it has at start "
                                      "(measured on Xen 4.17); never a read-only PV disk, which qdisk drops "
                                      "[X6]"),
        native(CdromDevice.REMOVABLE, "emulated IDE CD-ROM; media changes live")),
    F.CDROM_EMPTY: _pv_hvm(
        translated(None, "no drive while there is no media: media cannot go into a running PV CD-ROM [X6], so "
                         "it is rendered with its media at the next start, under the same name"),
        native(None, "an empty drive, rendered without <source> (never file='') [L4, L5]; media for it goes in "
                     "while the VM is down (a live insert into a drive that started empty crashes Xen's device "
                     "model [X4])")),
    F.CDROM_INSERT_LIVE: _pv_hvm(
        refused(_PV_MEDIA_LIVE),
        refused("Debian's Xen device model (qemu 7.2) segfaults when media goes into an HVM CD-ROM that was empty "
                "when the domain started (measured on Xen 4.17); changing or ejecting media of a drive started with "
                "media works [X4]. Insert the media while the VM is down, or start it with media")),
    F.CDROM_CHANGE_LIVE: _pv_hvm(
        refused(_PV_MEDIA_LIVE),
        native(None, "the emulated drive's media changes or is ejected live (measured on Xen 4.17) [X4]")),
    F.CDROM_DRIVER: _pv_hvm(
        native(None, "the disk's own driver (qdisk for an image file)"),
        translated("qemu", "libxl takes HVM CD-ROMs on the qdisk backend only ('Backend for CD devices on HVM "
                           "guests must be Qdisk', measured), empty or not, file or block device")),
    F.FLOPPY: refused(_FLOPPY),
    F.CLOUD_INIT_SEED: _pv_hvm(
        native(SeedDevice.CDROM, "a PV CD-ROM xvdX whose media is the NoCloud seed (ISO 9660 volume 'cidata'), "
                                 "read-only; never a read-only PV disk, which qdisk drops [X6]"),
        native(SeedDevice.CDROM, "an emulated IDE CD-ROM whose media is the NoCloud seed (ISO 9660 volume "
                                 "'cidata')")),
    F.DISK_FORMAT_RAW_FILE: native("qemu", "<driver name='qemu' type='raw'/> (qdisk backend)"),
    F.DISK_FORMAT_RAW_BLOCK: native("phy", "<driver name='phy' type='raw'/> (blkback)"),
    F.DISK_FORMAT_QCOW2: native("qemu", "<driver name='qemu' type='qcow2'/> (qdisk); without the driver "
                                        "name libxl would read the file as raw [L1]"),
    F.DISK_READONLY_FILE: _pv_hvm(refused(_RO_QDISK), refused(_RO_IDE)),
    F.DISK_READONLY_BLOCK: _pv_hvm(
        native(None, "<readonly/> on blkback (phy, mode 'r'). Not proven on the lab: there every phy disk on a "
                     "loop device fails to start, writable too (hotplug script timeout under TCG), loudly [X6]"),
        refused(_RO_IDE)),
    F.NIC_MODEL_AUTO: _pv_hvm(native("netfront"), native("e1000")),
    F.NIC_MODEL_VIRTIO: _pv_hvm(translated("netfront", f"{_VIRTIO_NIC}; Xen PV NIC instead"),
                                translated("e1000", f"{_VIRTIO_NIC}; emulated e1000 instead")),
    F.NIC_MODEL_E1000: _pv_hvm(translated("netfront", "PV guests take netfront only"), native("e1000")),
    F.NIC_MODEL_RTL8139: _pv_hvm(translated("netfront", "PV guests take netfront only"), native("rtl8139")),
    F.NIC_MODEL_NETFRONT: native("netfront"),
    F.NIC_SOURCE_BRIDGE: native(),
    F.NIC_SOURCE_NETWORK: native(),
    F.NIC_LINK_DOWN: translated(LinkControl.AGENT, "libxl ignores <link state> [L11]; the agent sets vifD.N down "
                                                   "in dom0 after every start and reports the real state"),
    F.NIC_FILTER: refused("libxl keeps <filterref> but never applies it: the guest would run unfiltered [L10]"),
    F.GRAPHICS_VNC: native(),
    F.GRAPHICS_SPICE: _pv_hvm(refused("SPICE needs an emulated display: HVM guests only [D5]"),
                              native(None, "QXL video RAM comes out of guest memory [D5]")),
    F.GRAPHICS_PASSWORD: translated(
        GraphicsPassword.RELAY, "not rendered: Debian's Xen device model fails to start with any VNC password "
                                "('Cipher backend does not support DES') [L12]; not needed either: the console "
                                "listens on dom0's loopback only and is reached through the agent's authenticated "
                                "relay with a one-time ticket"),
    F.GRAPHICS_LISTEN: native(None, "explicit loopback listen (libxl would pick 127.0.0.1 too) [L13]; reached "
                                    "through the agent's console relay"),
    F.GRAPHICS_LISTEN_PUBLIC: refused("no VNC password can be rendered on Xen [L12]: a console on a network "
                                      "address would be open to anyone who reaches dom0; it listens on dom0's "
                                      "loopback and the agent relays it"),
    F.CONSOLE_SERIAL: _pv_hvm(translated("xen", "PV guests have no UART; the Xen PV console hvc0 instead"),
                              native("serial", "emulated UART ttyS0")),
    F.CONSOLE_PV: native("xen", "Xen PV console hvc0"),
    F.CONSOLE_LOG: _pv_hvm(
        translated(ConsoleLog.DAEMON, "libxl has no <log> on consoles; xenconsoled logs "
                                  "/var/log/xen/console/guest-NAME.log"),
        translated(ConsoleLog.FILE, "xenconsoled never sees an HVM serial port (measured); the serial port writes "
                                    "to a file the agent reads, and the PV console stays interactive")),
    F.GUEST_AGENT: translated(AgentChannel.UNIX_SOCKET, "libxl has no virtio-serial (start fails: 'channel target "
                                                        "type not supported') [D2]; a Xen channel on a unix socket "
                                                        "instead"),
    F.BALLOON: translated("xen", "Xen's own balloon (model='xen') [D3]"),
    F.BOOT_ORDER: _pv_hvm(translated(None, "PV guests boot their kernel or bootloader; no boot order is used"),
                          native(BootOrder.OS, "<os><boot dev>; libxl ignores per-device boot order [L4]")),
    F.BOOT_KERNEL: native(),
    F.BOOT_BOOTLOADER: _pv_hvm(native(), refused("HVM guests boot from their disks; a host-side bootloader "
                                                 "is for PV guests")),
    F.CPU_HOST_MODEL: _pv_hvm(translated(None, "PV guests see the host CPU through Xen's PV CPUID policy"),
                              translated("host-passthrough", "libxl has no host-model; Xen passes the host "
                                                             "CPU with its default CPUID policy [L2]")),
    F.CPU_HOST_PASSTHROUGH: _pv_hvm(translated(None, "PV guests see the host CPU through Xen's PV CPUID policy"),
                                    native("host-passthrough")),
    F.CPU_CUSTOM: refused("libxl has no named CPU models [L2]; use host-passthrough with features"),
    F.CPU_FEATURES: _pv_hvm(refused("CPUID features are applied to HVM guests only"),
                            native(None, "applied as a Xen CPUID policy")),
    F.MEMORY_BALLOON_HEADROOM: _pv_hvm(
        native(MemoryAtStart.AS_ASKED, "PV guests start at memory and balloon up to max [D3]"),
        translated(MemoryAtStart.AT_MAX_THEN_BALLOON,
                   "an HVM guest below its max would run populate-on-demand; it starts with max memory and the "
                   "agent sets the balloon target to memory right after the start [D3]")),
    F.VCPUS_HOTPLUG: native(None, "<vcpu current>, setVcpus within max; the guest onlines the CPUs [X2]"),
    F.ON_CRASH_DESTROY: native(),
    F.ON_CRASH_RESTART: native(),
    F.ON_CRASH_PRESERVE: refused("libvirt reports a preserved crashed Xen domain as shut off while Xen keeps "
                                 "it [L8]; use coredump-destroy to keep a dump"),
    F.ON_CRASH_RENAME_RESTART: native(),
    F.ON_CRASH_COREDUMP_DESTROY: native(None, "dump in /var/lib/libvirt/libxl/dump"),
    F.ON_CRASH_COREDUMP_RESTART: native(None, "dump in /var/lib/libvirt/libxl/dump, then a new domain [L8]"),
    F.LIFECYCLE_DESTROY: native(),
    F.LIFECYCLE_RESTART: native(),
    F.LIFECYCLE_PRESERVE: native(),
    F.LIFECYCLE_RENAME_RESTART: native(),
    F.SNAPSHOT: translated(SnapshotMechanism.OFFLINE_QCOW2,
                           f"libxl has no snapshot API (measured: '{NO_SNAPSHOT_API}', VIR_ERR_NO_SUPPORT; "
                           "listing too); the agent takes internal qcow2 snapshots of the stopped VM's "
                           "writable disks with qemu-img (paths unchanged); every such disk must be qcow2"),
    F.SNAPSHOT_LIVE: refused(f"live snapshots: libxl has no snapshot API (measured: '{NO_SNAPSHOT_API}'), and "
                             "qemu-img cannot touch a disk Xen's device model has open; stop the VM first"),
    F.DISK_RESIZE_LIVE: refused(f"online resize: libxl has no block resize (measured on Xen 4.17, libvirt 9.0: "
                                f"'{NO_BLOCK_RESIZE}'), and growing the file under the running backend would not "
                                "tell the guest; stop the VM to grow its disk"),
    F.MIGRATION: native(MigrationMechanism.PEER2PEER_DIRECT,
                        "managed peer-to-peer (virDomainMigrateToURI3 with PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE, "
                        "LIVE unless the request turns it off), the data over libxl's own migration stream, never "
                        "tunnelled: measured on the Xen pair, a tunnelled live migration that libxl failed ('Failed "
                        "to enable logdirty' on a Xen built without shadow paging) hung for 14 min holding the "
                        "domain's job lock, while the same failure untunnelled ends at once with 'Failed to send "
                        "migration data to destination host'; non-live p2p works there. Progress: elapsed time only "
                        "(jobInfo has no bytes); the same Xen version on both hosts [L14]"),
    F.MIGRATION_ABORT: refused(f"libxl has no job abort (measured: '{NO_ABORT_JOB}') [L15]: a started "
                               "migration runs to its end or fails by itself"),
    F.MIGRATION_BANDWIDTH: refused("libxl has no migration tuning (migrateSetMaxSpeed unsupported; the legacy "
                                   "API fails on the bandwidth parameter) [L14, L15]"),
}

XEN = Flavor(
    name="xen",
    domain_type="xen",
    title="Xen (libxl)",
    guest_types=(PV, PVH, HVM),
    table=TABLE,
    default_uri="xen:///system",
    single_console_targets=frozenset({"xen"}),
    device_model_watchdog=True,
    graceful_destroy=False,
    node_cpu_stats=False,
    console_daemon_log="guest-{name}.log",
    driver_logs=("/var/log/libvirt/libxl/libxl-driver.log", "/var/log/xen/qemu-dm-{name}.log"),
    host_tools=("ip", "qemu-img", "xenstore-read"),
    host_checks=XEN_CHECKS,
    os_type={PV: ("linux", "xenpv"), PVH: ("xenpvh", "xenpvh"), HVM: ("hvm", "xenfv")},
    mac_prefix="00:16:3e",
    min_memory_mib={PV: 32, PVH: 32, HVM: 32},
    max_vcpus={PV: 512, PVH: 128, HVM: 128},
    video={"vnc": ("vga", 16), "spice": ("qxl", 64)},
)
