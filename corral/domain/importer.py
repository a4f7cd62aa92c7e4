"""Any libvirt domain XML (qemu, kvm, xen, test) -> VmSpec, and a list of what it could not represent.

Importing is how existing domains come under Corral. Whatever the XML holds that a VmSpec cannot say is
reported as a warning with its XML path; nothing is dropped silently.

How that is guaranteed rather than hoped for: the importer reads the XML only through ``Node``, which records
every element and attribute it reads (``used``: it went into the spec) or recognises as what the host's flavor
re-creates anyway (``derived``: addresses, aliases, the emulator, default controllers...). After the import, a
sweep walks the whole document and turns every element or attribute that was neither used, derived nor already
warned about into a warning of its own. A setting the importer has never heard of therefore still gets a
warning naming its path; only an explicit decision in this module can make something disappear quietly.

Paths are XPath-like, relative to ``<domain>``: ``devices/disk[2]/target/@dev`` is the ``dev`` attribute of
the target of the second ``<disk>``. Device elements always carry their position among the devices of the
same tag; other elements only when their parent holds more than one of that tag.
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from pydantic import ValidationError

from corral.domain import config as cfg
from corral.domain.flavors import all_flavors
from corral.domain.flavors.base import BUS_PREFIX
from corral.domain.read import read_metadata
from corral.domain.resolve import AGENT_CHANNEL
from corral.domain.spec import SpecError, VmSpec
from corral.domain.xmlledger import ImportWarning, Ledger, Node, elements, join_path, xml_path

_OS_GUEST = {"hvm": "hvm", "linux": "pv", "xen": "pv", "xenpvh": "pvh"}
_PREFIX_BUS = (("xvd", "xen"), ("vd", "virtio"), ("hd", "ide"), ("sd", "scsi"), ("fd", "fdc"))
_DISK_BUSES = ("virtio", "xen", "ide", "sata", "scsi")
_NIC_MODELS = {"virtio": "virtio", "virtio-net-pci": "virtio", "e1000": "e1000", "rtl8139": "rtl8139",
               "netfront": "netfront"}
_CPU_POLICY = {"require": "require", "force": "require", "disable": "disable", "forbid": "disable"}
# controllers every flavor adds as its devices need them; others (a USB controller of a chosen model, a
# smart-card reader...) are settings a VmSpec cannot hold, and are reported
_DERIVED_CONTROLLERS = {"pci", "ide", "sata", "scsi", "virtio-serial", "xenbus", "fdc"}
# the USB controllers libvirt writes into a QEMU domain by itself (the machine type's default)
_DEFAULT_USB = {"piix3-uhci", "qemu-xhci", "ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3"}
# the framebuffer of a paravirtual guest, which libxl reports as a video device of this model
_PV_FRAMEBUFFER_MODELS = {"xen"}
# names libvirt gives a NIC's host side by itself (QEMU's tap devices, libxl's vifs): nothing chosen
_HOST_NAMED_VIF = re.compile(r"^(vnet|macvtap|macvlan|tap)\d+$|^vif\d+\.\d+(-emu)?$")
_NIC_CHILDREN = {
    "driver": "the NIC's backend and queues are the flavor's",
    "backenddomain": "Corral's NICs are served by dom0, not by a driver domain",
    "ip": "a VmSpec has no addresses: the guest configures its own",
    "bandwidth": "a VmSpec has no rate limits: the NIC runs unlimited",
}
_DISK_CHILDREN = {
    "boot": "a per-device boot order is not represented; the VM's boot list (os/boot) orders by device kind",
    "shareable": "a shared disk is not represented; Corral opens each disk for one VM",
    "serial": "a disk serial number is not represented; the guest sees none",
}
_GRAPHICS_PARTS = {
    "@port": "a fixed port is not represented; Corral's consoles take a free port",
    "@tlsPort": "a fixed TLS port is not represented; Corral's consoles take a free port",
}
_FIRMWARE = ("loader", "nvram", "bootmenu", "smbios", "bios", "acpi", "initarg", "dtb")
_DEFAULT_FEATURES = {"acpi", "apic", "pae"}
_BALLOONS = {"virtio", "virtio-transitional", "virtio-non-transitional", "xen"}  # each flavor renders its own
_COMMON_DERIVED = ("address", "alias")  # a device's place on its bus and its name: the host assigns both



def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address == "localhost"

@dataclass
class ImportResult:
    """The spec, what could not go into it (``warnings``), and the accounting behind that promise.

    ``used`` holds the paths (elements and attributes) whose values went into the spec; ``derived`` the roots of
    the subtrees recognised as what the host re-creates by itself. Every element and attribute of the input is
    in ``used``, or lies under a path in ``derived`` or under a warning's path.
    """

    spec: VmSpec
    warnings: list[ImportWarning] = field(default_factory=list)
    used: frozenset[str] = frozenset()
    derived: frozenset[str] = frozenset()


class _Importer:
    def __init__(self, root: etree._Element) -> None:
        self.ledger = Ledger()
        self.root_elem = root
        self.root = Node(self.ledger, root, "")

    def run(self) -> ImportResult:
        if self.root_elem.find("metadata") is not None:
            meta = read_metadata(cfg.Domain.from_element(self.root_elem))
            if meta is not None:  # a domain Corral rendered: it carries its own spec
                return ImportResult(meta.spec, derived=frozenset({""}))
        root = self.root
        root.derive("@type", "@id")  # the hypervisor is the host's; the id is the running domain's
        data: dict[str, Any] = {"name": self._name(), "id": self._uuid()}
        self._description(data)
        self._memory(data)
        self._os(data)
        self._cpu(data)
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            node = root.child(event)
            if node is not None and node.text():
                data[event] = node.text()
        self._top_level()
        self._devices(data)
        try:
            spec = VmSpec.model_validate(data)
        except ValidationError as exc:
            raise SpecError.from_validation(exc) from None
        self._sweep(self.root_elem, "")
        # what was read and then derived or warned about after all is not "used": the spec does not hold it
        used = frozenset(p for p in self.ledger.used if not self.ledger.covered(p))
        return ImportResult(spec, self._in_document_order(), used, frozenset(self.ledger.derived))

    # -- what nothing above read --------------------------------------------------------------------------

    def _sweep(self, elem: etree._Element, path: str) -> None:
        """Warn about every element or attribute that was neither used, derived nor warned about."""
        ledger = self.ledger
        if ledger.covered(path):
            return
        if path not in ledger.used:
            ledger.warn(path, f"{_show(elem)} is not represented in a VmSpec and is dropped; the host's "
                              "default applies")
            return
        for key, value in elem.attrib.items():
            name = str(key)
            attr = join_path(path, f"@{name}")
            if attr not in ledger.used and not ledger.covered(attr):
                ledger.warn(attr, f"{name}={value!r} is not represented in a VmSpec and is dropped; the host's "
                                  "default applies")
        for child in elements(elem):
            self._sweep(child, xml_path(child))

    def _in_document_order(self) -> list[ImportWarning]:
        order: dict[str, int] = {}
        for elem in self.root_elem.iter():
            if isinstance(elem.tag, str):
                path = xml_path(elem)
                order.setdefault(path, len(order))
                for name in elem.attrib:
                    order.setdefault(join_path(path, f"@{name!s}"), len(order))
        return sorted(self.ledger.warnings, key=lambda w: order.get(w.path, len(order)))

    # -- the domain's own settings ------------------------------------------------------------------------

    def _name(self) -> str:
        node = self.root.child("name")
        name = node.text() if node is not None else None
        if not name:
            raise cfg.XmlError("name", "missing")
        clean = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:64]
        if clean != name:
            self.ledger.warn("name", f"{name!r} renamed {clean!r} (letters, digits, '.', '_', '-', at most 64)")
        return clean

    def _uuid(self) -> str:
        node = self.root.child("uuid")
        text = (node.text() if node is not None else None) or ""
        try:
            return str(uuidlib.UUID(text))
        except ValueError:
            new = str(uuidlib.uuid4())
            self.ledger.warn("uuid", f"missing or invalid ({text!r}); a new one was given: {new}")
            return new

    def _description(self, data: dict[str, Any]) -> None:
        node = self.root.child("description")
        text = (node.text() if node is not None else None) or ""
        if len(text) > 4096:
            self.ledger.warn("description", f"cut to its first 4096 of {len(text)} characters")
        data["description"] = text[:4096]

    def _kib(self, tag: str) -> int | None:
        node = self.root.child(tag)
        if node is None:
            return None
        node.attr("unit")
        return cfg.to_kib(node.elem, tag)

    def _memory(self, data: dict[str, Any]) -> None:
        memory_kib = self._kib("memory")
        if memory_kib is None:
            raise cfg.XmlError("memory", "missing")
        current_kib = self._kib("currentMemory")
        max_mib = max(1, memory_kib // 1024)
        cur_mib = max(1, (current_kib or memory_kib) // 1024)
        data["memory_mib"] = min(cur_mib, max_mib)
        if max_mib > data["memory_mib"]:
            data["max_memory_mib"] = max_mib
        vcpus, current = 1, None
        node = self.root.child("vcpu")
        if node is not None:
            try:
                vcpus = int(node.text() or "1")
                current_text = node.attr("current")
                current = int(current_text) if current_text else None
            except ValueError:
                raise cfg.XmlError("vcpu", f"not an integer: {node.elem.text!r}") from None
            if node.peek("placement") == "static":
                node.derive("@placement")  # libvirt's default: no pinning
        data["vcpus"] = min(current or vcpus, vcpus)
        if vcpus > data["vcpus"]:
            data["max_vcpus"] = vcpus

    def _os(self, data: dict[str, Any]) -> None:
        os = self.root.child("os")
        if os is None:
            raise cfg.XmlError("os", "missing <os>")
        typ = os.child("type")
        os_type = typ.text() if typ is not None else None
        if typ is None or os_type is None:
            raise cfg.XmlError("os/type", "missing")
        guest = _OS_GUEST.get(os_type)
        if guest is None:
            typ.warn(f"guest type {os_type!r} is not represented; imported as hvm")
            guest = "hvm"
        data["guest_type"] = guest
        self._machine(typ)
        boot: list[str] = []
        for node in os.children("boot"):
            dev = node.attr("dev", "")
            if dev in ("hd", "cdrom", "network") and dev not in boot:
                boot.append(dev)
            else:
                node.warn(f"boot device {dev!r} is not represented; the other boot devices are kept in order")
        if boot:
            data["boot"] = boot
        for key in ("kernel", "initrd", "cmdline"):
            part = os.child(key)
            if part is not None and part.text():
                data[key] = part.text()
        for tag in _FIRMWARE:
            for node in os.children(tag):
                node.warn(f"{_show(node.elem)} is not represented; the host's flavor chooses the firmware")
        loader = self.root.child("bootloader")
        if loader is not None and loader.text():
            data["bootloader"] = loader.text()
        args = self.root.child("bootloader_args")
        if args is not None:
            args.warn(f"{args.text() or ''!r} is not represented; Corral runs the bootloader without arguments")

    def _machine(self, typ: Node) -> None:
        arch = typ.peek("arch")
        if arch in (None, "x86_64"):
            typ.derive("@arch")
        else:
            typ.warn(f"architecture {arch!r} is not represented; Corral guests are x86_64", "@arch")
        machine = typ.peek("machine")
        known = {m for f in all_flavors() for _, m in f.os_type.values() if m}
        # "pc" is libvirt's alias of the newest pc-i440fx-X.Y, which it writes back expanded
        if machine is None or machine in known or machine.startswith("pc-i440fx-"):
            typ.derive("@machine")
        else:
            typ.warn(f"machine type {machine!r} is not represented; the host's flavor picks the machine type "
                     f"({', '.join(sorted(known))})", "@machine")

    def _cpu(self, data: dict[str, Any]) -> None:
        cpu = self.root.child("cpu")
        if cpu is None:
            return
        model = cpu.child("model") if cpu.has("model") else None
        mode = cpu.attr("mode") or ("custom" if model is not None else "host-model")
        if mode == "maximum":
            cpu.warn("mode 'maximum' imported as 'host-passthrough'", "@mode")
            mode = "host-passthrough"
        if mode not in ("host-model", "host-passthrough", "custom"):
            cpu.warn(f"mode {mode!r} is not represented; the host's flavor picks the CPU model")
            return
        cpu.derive("@check")  # how strictly libvirt compares: its own default
        if cpu.peek("match") in (None, "exact"):
            cpu.derive("@match")  # Corral renders a custom model with match='exact'
        if model is not None:
            if mode == "custom":
                model.derive("@fallback")
            else:
                model.derive()  # what libvirt resolved host-model/passthrough to on the host it last ran on
        features = []
        for feat in cpu.children("feature"):
            name, policy_text = feat.attr("name", ""), feat.attr("policy", "require")
            policy = _CPU_POLICY.get(policy_text or "require")
            if policy is None:
                feat.warn(f"policy {policy_text!r} of CPU feature {name!r} is not represented; the feature is left "
                          "to the CPU model")
                continue
            features.append({"name": name, "policy": policy})
        data["cpu"] = {"mode": mode, "model": model.text() if model is not None and mode == "custom" else None,
                       "features": features}

    def _top_level(self) -> None:
        feats = self.root.child("features")
        if feats is not None:
            for elem in elements(feats.elem):
                node = Node(self.ledger, elem, xml_path(elem))
                if node.tag in _DEFAULT_FEATURES:
                    if not node.elem.attrib and not len(node.elem):
                        node.derive()  # anything inside (apic's eoi...) is swept up as a warning
                else:
                    node.warn("not represented; the flavor sets the guest's features")
        clock = self.root.child("clock")
        if clock is not None:
            if clock.attr("offset", "utc") != "utc" or len(clock.elem) or len(clock.elem.attrib) > 1:
                clock.warn(f"{_show(clock.elem)} is not represented; guests get a UTC clock with the driver's "
                           "default timers")
        for label in self.root_elem.findall("seclabel"):
            if label.get("type") == "dynamic":
                self.ledger.derived.add(xml_path(label))  # the host's security drivers label every VM
        resource = self.root_elem.find("resource")
        if resource is not None and [(c.tag, c.text) for c in resource] == [("partition", "/machine")]:
            self.ledger.derived.add(xml_path(resource))  # libvirt's default cgroup partition
        meta = self.root.child("metadata")
        if meta is not None:
            meta.warn("other applications' metadata is not represented; Corral keeps its own")

    # -- devices ------------------------------------------------------------------------------------------

    def _devices(self, data: dict[str, Any]) -> None:
        disks: list[dict[str, Any]] = []
        nics: list[dict[str, Any]] = []
        consoles: list[dict[str, Any]] = []
        videos: list[Node] = []
        devices = self.root.child("devices")
        elems = list(elements(devices.elem)) if devices is not None else []
        has_serial = any(e.tag == "serial" for e in elems)
        slots: dict[str, int] = {}
        for elem in elems:
            dev = Node(self.ledger, elem, xml_path(elem))
            dev.derive(*_COMMON_DERIVED)
            tag = dev.tag
            if tag == "disk":
                disk = self._disk(dev, slots)
                if disk:
                    disks.append(disk)
            elif tag == "interface":
                nic = self._nic(dev)
                if nic:
                    nics.append(nic)
            elif tag == "graphics":
                self._graphics(dev, data)
            elif tag in ("serial", "console", "channel"):
                self._char(dev, data, consoles, has_serial)
            elif tag == "memballoon":
                model = dev.attr("model", "virtio")
                if model in _BALLOONS:
                    data["balloon"] = {}
                elif model != "none":
                    dev.warn(f"balloon model {model!r} is not represented; the flavor's balloon is used")
                    data["balloon"] = {}
            elif tag == "input":
                kind = dev.attr("type")
                if kind in ("mouse", "keyboard"):
                    dev.derive("@bus")  # the flavor's mouse and keyboard
                else:
                    dev.warn(f"input {kind!r} is not represented; the guest gets the flavor's mouse and keyboard")
            elif tag == "controller":
                self._controller(dev)
            elif tag == "video":
                videos.append(dev)
            elif tag == "emulator":
                dev.derive()  # the flavor's own
            elif tag == "audio" and dev.peek("type") == "none":
                dev.derive()  # what libvirt adds by itself for a VNC display: no sound
            else:
                dev.warn(f"device <{tag}> is not represented; the VM will not have it")
        self._videos(videos, data)
        if "balloon" not in data:
            data["balloon"] = None
        data["disks"], data["nics"], data["consoles"] = disks, nics, consoles

    def _disk(self, dev: Node, slots: dict[str, int]) -> dict[str, Any] | None:
        kind, device = dev.attr("type", "file") or "file", dev.attr("device", "disk") or "disk"
        if kind not in ("file", "block"):
            found = dev.elem.find("source")
            attrs = ", ".join(f"{k!s}={v!s}" for k, v in found.attrib.items()) if found is not None else "none"
            dev.warn(f"a disk of type {kind!r} (source {attrs}) is not represented; Corral's disks are files "
                     "or block devices")
            return None
        if device not in ("disk", "cdrom", "floppy"):
            dev.warn(f"device {device!r} is not represented; Corral's disks are disks, cdroms or floppies")
            return None
        fmt = "raw"
        driver = dev.child("driver")
        if driver is not None:
            driver.derive("@name")  # the backend (qemu, phy, tap...) is the flavor's choice
            fmt = driver.attr("type") or "raw"
            for name in driver.elem.attrib:
                if name not in ("name", "type"):
                    driver.warn("not represented; the flavor sets the disk's driver options (cache, I/O mode...)",
                                f"@{name!s}")
        if fmt == "aio":  # old Xen spelling of a raw file through blktap
            fmt = "raw"
        if fmt not in ("raw", "qcow2"):
            dev.warn(f"disk format {fmt!r} is not represented (raw or qcow2)")
            return None
        source = dev.child("source")
        path = None
        if source is not None:
            path = source.attr("file" if kind == "file" else "dev") or source.attr("file") or source.attr("dev")
            source.derive("@index")  # libvirt's number for the image in its backing chain
        if path is None and device != "cdrom":
            dev.warn(f"{device} without a source is not represented")
            return None
        target = dev.child("target")
        target_dev = (target.attr("dev") if target is not None else None) or ""
        bus = self._disk_bus(target, target_dev, device)
        if target is not None and target_dev:
            self._slot(target, target_dev, bus, device, slots)
        dev.derive("backingStore")  # the image's own header names its backing chain
        for tag, message in _DISK_CHILDREN.items():
            for node in dev.children(tag):
                node.warn(message)
        return {"device": device, "source_type": kind, "source": path, "format": fmt, "bus": bus,
                "readonly": dev.child("readonly") is not None}

    def _disk_bus(self, target: Node | None, target_dev: str, device: str) -> str:
        bus = target.attr("bus") if target is not None else None
        if bus is None:
            bus = next((b for p, b in _PREFIX_BUS if target_dev.startswith(p)), "auto")
        if bus == "fdc" and device == "floppy":
            return "auto"  # a floppy's only bus
        if bus not in _DISK_BUSES and target is not None:
            target.warn(f"bus {bus!r} is not represented; imported as 'auto' (the flavor picks the bus)", "@bus")
            return "auto"
        return bus

    def _slot(self, target: Node, target_dev: str, bus: str, device: str, slots: dict[str, int]) -> None:
        """Corral names a bus's disks in order (vda, vdb...); a disk elsewhere on its bus changes slot."""
        prefix = BUS_PREFIX.get("fdc" if device == "floppy" else bus)
        if prefix is None:  # 'auto': the flavor picks the bus; count it under the name it had
            prefix = next((p for p, _ in _PREFIX_BUS if target_dev.startswith(p)), target_dev.rstrip("abcdefgh"))
        index = slots.get(prefix, 0)
        slots[prefix] = index + 1
        becomes = prefix + _letters(index)
        if becomes != target_dev:
            target.warn(f"slot {target_dev!r} is not represented; Corral names the disks of a bus in order, so "
                        f"this {device} becomes {becomes!r}", "@dev")

    def _nic(self, dev: Node) -> dict[str, Any] | None:
        kind = dev.attr("type", "bridge")
        source = dev.child("source") if dev.has("source") else None
        name = None
        if source is not None and kind in ("bridge", "network"):
            name = source.attr(kind)
        if kind not in ("bridge", "network") or not name:
            dev.warn(f"interface of type {kind!r} without a bridge or network is not represented; the VM will not "
                     "have this NIC")
            return None
        mac = dev.child("mac")
        address = mac.attr("address") if mac is not None else None
        model = "auto"
        node = dev.child("model")
        given = node.attr("type") if node is not None else None
        if node is not None and given:
            model = _NIC_MODELS.get(given, "")
            if not model:
                node.warn(f"model {given!r} imported as 'auto' (the flavor picks the NIC model)")
                model = "auto"
        link = dev.child("link")
        filt = dev.child("filterref")
        target = dev.child("target")
        vif = target.peek("dev") if target is not None else None
        if target is not None and vif is not None:
            if _HOST_NAMED_VIF.match(vif):
                target.derive("@dev")
            else:
                target.warn(f"host-side NIC name (vif/tap) {vif!r} is not represented; the host names it", "@dev")
        for script in dev.children("script"):
            path = script.peek("path") or ""
            if path.endswith("vif-bridge"):
                script.derive()  # the flavor's own hotplug script for a bridge
            else:
                script.warn(f"script {path!r} is not represented; the host's default vif script runs")
        for tag, message in _NIC_CHILDREN.items():
            for part in dev.children(tag):
                part.warn(message)
        return {"mac": address.lower() if address else None, "source_type": kind, "source": name, "model": model,
                "link": (link.attr("state") if link is not None else None) or "up",
                "filter": filt.attr("filter") if filt is not None else None}

    def _graphics(self, dev: Node, data: dict[str, Any]) -> None:
        kind = dev.attr("type", "vnc")
        if kind not in ("vnc", "spice"):
            dev.warn(f"graphics type {kind!r} is not represented; the VM gets no display")
            return
        if "graphics" in data:
            dev.warn("a second graphics device is not represented; the first is kept")
            return
        gfx: dict[str, Any] = {"type": kind, "password": dev.attr("passwd") or None}
        listen = dev.attr("listen")
        node = dev.child("listen") if dev.has("listen") else None
        if node is not None:
            if node.attr("type", "address") == "address":
                address = node.attr("address")
                if listen and address and address != listen:
                    node.warn(f"{address!r} differs from the graphics' listen attribute; {listen!r} is kept",
                              "@address")
                listen = listen or address
            else:
                node.warn(f"a listen of type {node.peek('type')!r} is not represented; the console listens on the "
                          "host's loopback")
        if listen and not _loopback(listen):
            dev.warn(f"listen {listen!r} -> '127.0.0.1': Corral's consoles listen on the host's loopback and are "
                     "relayed by the agent; a network address needs graphics.password and a cluster that allows "
                     "public consoles", "@listen")
            listen = None
        if listen:
            gfx["listen"] = listen
        data["graphics"] = gfx
        dev.derive("@autoport")
        port = dev.peek("port") or ""
        if dev.peek("autoport") == "no" and port.isdigit() and int(port) > 0:
            dev.warn(_GRAPHICS_PARTS["@port"], "@port")
        else:
            dev.derive("@port")
        if dev.peek("tlsPort") is not None:
            dev.warn(_GRAPHICS_PARTS["@tlsPort"], "@tlsPort")

    def _videos(self, videos: list[Node], data: dict[str, Any]) -> None:
        """The flavor renders the video device of the graphics type; a different model is reported."""
        gfx = data.get("graphics")
        for i, dev in enumerate(videos):
            node = dev.child("model") if dev.has("model") else None
            model = (node.peek("type") if node is not None else None) or "vga"
            if i:
                dev.warn(f"a second video device ({model!r}) is not represented; the VM gets one")
            elif gfx is None:
                dev.warn(f"video model {model!r} is not represented; without graphics the VM gets no video device")
            elif data.get("guest_type") != "hvm" and model in _PV_FRAMEBUFFER_MODELS:
                dev.derive()
            else:
                rendered = {f.video[gfx["type"]][0] for f in all_flavors() if gfx["type"] in f.video}
                if rendered == {model}:
                    dev.derive()  # what every flavor renders anyway; its video RAM is the flavor's too
                else:
                    dev.warn(f"video model {model!r} is not represented; the flavor renders "
                             f"{' or '.join(sorted(map(repr, rendered)))} for {gfx['type']} graphics")

    def _controller(self, dev: Node) -> None:
        kind, model = dev.peek("type") or "", dev.peek("model")
        if kind == "usb" and model is not None and model not in _DEFAULT_USB:
            dev.warn(f"USB controller model {model!r} is not represented; the hypervisor's default USB controller "
                     "is used")
        elif kind in _DERIVED_CONTROLLERS or kind == "usb":
            dev.derive()
        else:
            dev.warn(f"controller {kind!r} is not represented; the VM will not have it")

    def _char(self, dev: Node, data: dict[str, Any], consoles: list[dict[str, Any]], has_serial: bool) -> None:
        tag = dev.tag
        target = dev.child("target") if dev.has("target") else None
        if tag == "channel":
            name = target.peek("name") if target is not None else None
            if name == AGENT_CHANNEL and "guest_agent" not in data and target is not None:
                target.attr("name")
                data["guest_agent"] = {}
                dev.derive("@type", "source")  # the flavor places the agent's socket
                target.derive("@type")  # virtio-serial or the Xen PV console: the flavor's
            else:
                what = name or (target.peek("type") if target is not None else None)
                dev.warn(f"channel {what!r} is not represented; the VM will not have it")
            return
        kind = dev.attr("type", "pty")
        dev.derive("@tty", "source", "log")  # a pty's live path; console logs are the flavor's
        if target is not None:
            target.derive("@port", "model")
        if kind != "pty":
            dev.warn(f"{tag} of type {kind!r} imported as a pty console")
        if tag == "serial":
            if target is not None:
                target.derive("@type")
            consoles.append({"kind": "serial"})
            return
        target_type = target.attr("type") if target is not None else None
        if target_type in (None, "serial") and has_serial:
            dev.derive()  # the console view of the first serial port, which libvirt adds itself
        elif target_type == "serial" or (target_type is None and data.get("guest_type") == "hvm"):
            consoles.append({"kind": "serial"})
        elif target_type in ("xen", "virtio", None):
            consoles.append({"kind": "pv"})
        else:
            dev.warn(f"console target {target_type!r} is not represented; the VM will not have this console")


def _letters(n: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: libvirt's disk naming, as Corral renders it."""
    out = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(ord("a") + rem) + out
    return out


def _show(elem: etree._Element) -> str:
    """An element as the operator wrote it, on one line and cut short."""
    text = etree.tostring(elem, encoding="unicode", with_tail=False)
    text = re.sub(r"\s+", " ", re.sub(r">\s+<", "><", text)).strip()
    return text if len(text) <= 100 else text[:97] + "..."


def import_domain(xml: str | bytes) -> ImportResult:
    """Import a libvirt domain; raises ``config.XmlError`` or ``SpecError`` for what cannot be read."""
    return _Importer(cfg.parse_xml(xml)).run()
