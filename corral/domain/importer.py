"""Any libvirt domain XML (qemu, kvm, xen, test) -> VmSpec, and a list of what it could not represent.

Importing is how existing domains come under Corral. Whatever the XML holds that a VmSpec cannot say is
reported as a warning with its XML path; nothing is dropped silently.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from pydantic import ValidationError

from corral.domain import config as cfg
from corral.domain.read import read_metadata
from corral.domain.resolve import AGENT_CHANNEL
from corral.domain.spec import SpecError, VmSpec

_OS_GUEST = {"hvm": "hvm", "linux": "pv", "xen": "pv", "xenpvh": "pvh"}
_PREFIX_BUS = (("xvd", "xen"), ("vd", "virtio"), ("hd", "ide"), ("sd", "scsi"), ("fd", "fdc"))
_NIC_MODELS = {"virtio": "virtio", "virtio-net-pci": "virtio", "e1000": "e1000", "rtl8139": "rtl8139",
               "netfront": "netfront"}
_CPU_POLICY = {"require": "require", "force": "require", "disable": "disable", "forbid": "disable"}
_SILENT_DEVICES = {"emulator"}  # the flavor's own
# controllers every flavor adds as its devices need them; others (a USB controller of a chosen model, a
# smart-card reader...) are settings a VmSpec cannot hold, and are reported
_DERIVED_CONTROLLERS = {"pci", "ide", "sata", "scsi", "virtio-serial", "xenbus", "fdc"}
# the USB controllers libvirt writes into a QEMU domain by itself (the machine type's default)
_DEFAULT_USB = {"piix3-uhci", "qemu-xhci", "ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3"}
_VIDEO_MODELS = {"vga", "cirrus", "qxl", "xen"}  # each flavor picks one of these for the graphics type
_NIC_CHILDREN = {
    "driver": "the NIC's backend and queues are the flavor's",
    "backenddomain": "Corral's NICs are served by dom0, not by a driver domain",
}
_GRAPHICS_PARTS = {
    "@port": "a fixed port is not represented; Corral's consoles take a free port",
    "@tlsPort": "a fixed TLS port is not represented",
}
_DEFAULT_FEATURES = {"acpi", "apic", "pae"}


@dataclass
class ImportWarning:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class ImportResult:
    spec: VmSpec
    warnings: list[ImportWarning] = field(default_factory=list)


class _Importer:
    def __init__(self, root: etree._Element) -> None:
        self.root = root
        self.dom = cfg.Domain.from_element(root)
        self.warnings: list[ImportWarning] = []

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ImportWarning(path, message))

    def run(self) -> ImportResult:
        meta = read_metadata(self.dom)
        if meta is not None:
            return ImportResult(meta.spec)
        dom = self.dom
        data: dict[str, Any] = {"name": self._name(), "id": self._uuid(),
                                "description": (dom.description or "")[:4096]}
        self._memory(data)
        self._os(data)
        self._cpu(data)
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            value = getattr(dom, event)
            if value:
                data[event] = value
        self._top_level()
        self._devices(data)
        try:
            return ImportResult(VmSpec.model_validate(data), self.warnings)
        except ValidationError as exc:
            raise SpecError.from_validation(exc) from None

    def _name(self) -> str:
        name = self.dom.name
        clean = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:64]
        if clean != name:
            self.warn("name", f"{name!r} renamed {clean!r} (letters, digits, '.', '_', '-', at most 64)")
        return clean

    def _uuid(self) -> str:
        try:
            return str(uuidlib.UUID(self.dom.uuid))
        except ValueError:
            new = str(uuidlib.uuid4())
            self.warn("uuid", f"missing or invalid ({self.dom.uuid!r}); a new one was given: {new}")
            return new

    def _memory(self, data: dict[str, Any]) -> None:
        dom = self.dom
        max_mib = max(1, dom.memory_kib // 1024)
        cur_mib = max(1, (dom.current_memory_kib or dom.memory_kib) // 1024)
        data["memory_mib"] = min(cur_mib, max_mib)
        if max_mib > data["memory_mib"]:
            data["max_memory_mib"] = max_mib
        current = dom.current_vcpus or dom.vcpus
        data["vcpus"] = min(current, dom.vcpus)
        if dom.vcpus > data["vcpus"]:
            data["max_vcpus"] = dom.vcpus

    def _os(self, data: dict[str, Any]) -> None:
        os = self.dom.os
        guest = _OS_GUEST.get(os.type)
        if guest is None:
            self.warn("os/type", f"guest type {os.type!r} is not represented; imported as hvm")
            guest = "hvm"
        data["guest_type"] = guest
        boot = []
        for dev in os.boot:
            if dev in ("hd", "cdrom", "network") and dev not in boot:
                boot.append(dev)
            else:
                self.warn("os/boot", f"boot device {dev!r} is not represented")
        if boot:
            data["boot"] = boot
        for key in ("kernel", "initrd", "cmdline"):
            value = getattr(os, key)
            if value:
                data[key] = value
        if self.dom.bootloader:
            data["bootloader"] = self.dom.bootloader
        for tag in ("loader", "nvram", "bootmenu", "smbios", "bios", "acpi", "initarg", "dtb"):
            if self.root.find(f"os/{tag}") is not None:
                self.warn(f"os/{tag}", "not represented; the host's flavor chooses the firmware")

    def _cpu(self, data: dict[str, Any]) -> None:
        cpu = self.dom.cpu
        if cpu is None:
            return
        mode = cpu.mode
        if mode == "maximum":
            self.warn("cpu", "mode 'maximum' imported as 'host-passthrough'")
            mode = "host-passthrough"
        if mode not in ("host-model", "host-passthrough", "custom"):
            self.warn("cpu", f"mode {mode!r} is not represented")
            return
        features = []
        for feat in cpu.features:
            policy = _CPU_POLICY.get(feat.policy)
            if policy is None:
                self.warn(f"cpu/feature[@name='{feat.name}']", f"policy {feat.policy!r} is not represented")
                continue
            features.append({"name": feat.name, "policy": policy})
        data["cpu"] = {"mode": mode, "model": cpu.model if mode == "custom" else None, "features": features}
        for tag in ("topology", "numa", "cache", "vendor"):
            if self.root.find(f"cpu/{tag}") is not None:
                self.warn(f"cpu/{tag}", "not represented")

    def _top_level(self) -> None:
        for tag in self.dom.unknown:
            self.warn(tag, "not represented")
        extra = [f for f in self.dom.features if f not in _DEFAULT_FEATURES]
        for feat in extra:
            self.warn(f"features/{feat}", "not represented; the flavor sets the guest's features")
        clock = self.root.find("clock")
        if clock is not None and (clock.get("offset", "utc") != "utc" or len(clock)):
            self.warn("clock", "not represented; guests get a UTC clock with the driver's default timers")

    def _devices(self, data: dict[str, Any]) -> None:
        disks: list[dict[str, Any]] = []
        nics: list[dict[str, Any]] = []
        consoles: list[dict[str, Any]] = []
        serial_count = 0
        for index, dev in enumerate(self.dom.devices):
            where = f"devices/{_tag(dev)}[{index}]"
            if isinstance(dev, cfg.Disk):
                disk = self._disk(dev, where)
                if disk:
                    disks.append(disk)
            elif isinstance(dev, cfg.Interface):
                nic = self._nic(dev, where)
                if nic:
                    nics.append(nic)
            elif isinstance(dev, cfg.Graphics):
                if dev.type not in ("vnc", "spice"):
                    self.warn(where, f"graphics type {dev.type!r} is not represented")
                elif "graphics" in data:
                    self.warn(where, "a second graphics device is not represented")
                else:
                    gfx: dict[str, Any] = {"type": dev.type, "password": dev.passwd or None}
                    if dev.listen:
                        gfx["listen"] = dev.listen
                    data["graphics"] = gfx
                    for part in dev.unknown:
                        self.warn(f"{where}/{part}", _GRAPHICS_PARTS.get(part, "not represented"))
            elif isinstance(dev, cfg.CharDevice):
                self._char(dev, where, data, consoles, serial_count)
                serial_count += dev.element == "serial"
            elif isinstance(dev, cfg.Memballoon):
                if dev.model != "none":
                    data["balloon"] = {}
            elif isinstance(dev, cfg.OtherDevice) and dev.element == "input":
                if dev.type not in ("mouse", "keyboard"):
                    self.warn(where, f"input {dev.type!r} is not represented")
            elif isinstance(dev, cfg.Controller):
                if dev.type == "usb" and dev.model is not None and dev.model not in _DEFAULT_USB:
                    self.warn(where, f"USB controller model {dev.model!r} is not represented; the hypervisor's "
                                     "default USB controller is used")
                elif dev.type not in _DERIVED_CONTROLLERS and dev.type != "usb":
                    self.warn(where, f"controller {dev.type!r} is not represented")
            elif isinstance(dev, cfg.Video):
                if dev.model not in _VIDEO_MODELS:
                    self.warn(where, f"video model {dev.model!r} is not represented; the flavor picks the "
                                     "graphics type's video model")
            elif _tag(dev) not in _SILENT_DEVICES:
                self.warn(where, "device not represented")
        if "balloon" not in data:
            data["balloon"] = None
        data["disks"], data["nics"], data["consoles"] = disks, nics, consoles

    def _disk(self, dev: cfg.Disk, where: str) -> dict[str, Any] | None:
        if dev.type not in ("file", "block"):
            self.warn(where, f"disk of type {dev.type!r} (source {dev.source or dev.unknown}) is not represented")
            return None
        if dev.device not in ("disk", "cdrom", "floppy"):
            self.warn(where, f"device {dev.device!r} is not represented")
            return None
        fmt = dev.driver_type or "raw"
        if fmt == "aio":  # old Xen spelling of a raw file through blktap
            fmt = "raw"
        if fmt not in ("raw", "qcow2"):
            self.warn(where, f"disk format {fmt!r} is not represented (raw or qcow2)")
            return None
        bus = dev.target_bus
        if bus is None:
            bus = next((b for p, b in _PREFIX_BUS if dev.target_dev.startswith(p)), "auto")
        if bus == "fdc" or bus == "usb":
            bus = "auto"
        if bus not in ("virtio", "xen", "ide", "sata", "scsi", "auto"):
            self.warn(where, f"bus {bus!r} imported as 'auto'")
            bus = "auto"
        for tag in dev.unknown:
            self.warn(f"{where}/{tag}", "not represented")
        if dev.source is None and dev.device != "cdrom":
            self.warn(where, f"{dev.device} without a source is not represented")
            return None
        return {"device": dev.device, "source_type": dev.type, "source": dev.source, "format": fmt, "bus": bus,
                "readonly": dev.readonly}

    def _nic(self, dev: cfg.Interface, where: str) -> dict[str, Any] | None:
        if dev.type not in ("bridge", "network") or not dev.source:
            self.warn(where, f"interface of type {dev.type!r} without a bridge or network is not represented")
            return None
        model = "auto"
        if dev.model:
            model = _NIC_MODELS.get(dev.model, "")
            if not model:
                self.warn(f"{where}/model", f"model {dev.model!r} imported as 'auto'")
                model = "auto"
        for tag in dev.unknown:
            self.warn(f"{where}/{tag}", _NIC_CHILDREN.get(tag, "not represented"))
        nic_elem = self.root.findall("devices/interface")
        for elem in nic_elem:
            script = elem.find("script")
            mac = elem.find("mac")
            if script is not None and mac is not None and mac.get("address", "").lower() == dev.mac:
                if not script.get("path", "").endswith("vif-bridge"):
                    self.warn(f"{where}/script", f"script {script.get('path')!r} is not represented")
        return {"mac": dev.mac, "source_type": dev.type, "source": dev.source, "model": model,
                "link": dev.link_state or "up", "filter": dev.filterref}

    def _char(self, dev: cfg.CharDevice, where: str, data: dict[str, Any], consoles: list[dict[str, Any]],
              serial_count: int) -> None:
        if dev.element == "channel":
            if dev.target_name == AGENT_CHANNEL and "guest_agent" not in data:
                data["guest_agent"] = {}
            else:
                self.warn(where, f"channel {dev.target_name or dev.target_type!r} is not represented")
            return
        if dev.element == "serial":
            if dev.type != "pty":
                self.warn(where, f"serial of type {dev.type!r} imported as a pty console")
            consoles.append({"kind": "serial"})
            return
        target = dev.target_type
        has_serial = serial_count or any(isinstance(d, cfg.CharDevice) and d.element == "serial"
                                         for d in self.dom.devices)
        if target in (None, "serial") and has_serial:
            return  # the console view of the first serial port, which libvirt adds itself
        if target == "serial" or (target is None and self.dom.os.type == "hvm"):
            consoles.append({"kind": "serial"})
        elif target in ("xen", "virtio", None):
            consoles.append({"kind": "pv"})
        else:
            self.warn(where, f"console target {target!r} is not represented")


def _tag(dev: cfg.Device) -> str:
    if isinstance(dev, cfg.CharDevice | cfg.OtherDevice):
        return dev.element
    return dev.tag


def import_domain(xml: str | bytes) -> ImportResult:
    """Import a libvirt domain; raises ``config.XmlError`` or ``SpecError`` for what cannot be read."""
    return _Importer(cfg.parse_xml(xml)).run()
