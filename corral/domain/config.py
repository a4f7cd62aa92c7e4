"""libvirt domain XML as small typed objects, one class per element, parse and format side by side.

These classes know libvirt's XML, not Corral's policy: the flavors decide what goes in them, ``render``
formats them and ``read``/``importer`` parse live or foreign XML back into them. Parsing never requires
``<alias>``, ``<address>`` or ``<driver>`` (libxl omits them), and what a class does not model is kept in
``unknown`` so the importer can report it instead of dropping it silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lxml import etree

CORRAL_NS = "https://corral.dev/xmlns/vm/1"
ALIAS_PREFIX = "ua-"

_MEMORY_UNITS = {
    "b": 1 / 1024, "bytes": 1 / 1024,
    "k": 1, "kib": 1, "kb": 1000 / 1024,
    "m": 1024, "mib": 1024, "mb": 1000**2 / 1024,
    "g": 1024**2, "gib": 1024**2, "gb": 1000**3 / 1024,
    "t": 1024**3, "tib": 1024**3, "tb": 1000**4 / 1024,
}


class XmlError(ValueError):
    """XML that is not a libvirt domain Corral can read; names the element at fault."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        super().__init__(f"{where}: {message}")


def parse_xml(text: str | bytes) -> etree._Element:
    """Parse untrusted XML without network access or entity expansion."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True, huge_tree=False)
    try:
        root = etree.fromstring(text.encode() if isinstance(text, str) else text, parser)
    except etree.XMLSyntaxError as exc:
        raise XmlError("xml", f"not well-formed: {exc}") from None
    if root.tag != "domain":
        raise XmlError("xml", f"root element is <{root.tag}>, expected <domain>")
    return root


def to_kib(elem: etree._Element | None, where: str) -> int | None:
    if elem is None or not (elem.text or "").strip():
        return None
    unit = (elem.get("unit") or "KiB").lower()
    if unit not in _MEMORY_UNITS:
        raise XmlError(where, f"unknown memory unit {elem.get('unit')!r}")
    try:
        value = int((elem.text or "").strip())
    except ValueError:
        raise XmlError(where, f"not an integer: {elem.text!r}") from None
    return int(value * _MEMORY_UNITS[unit])


_ATTR_NAMES: dict[str, str] = {}  # python keyword -> XML attribute name ("type_" -> "type", "a__b" -> "a-b")


def _attr_name(key: str) -> str:
    name = _ATTR_NAMES.get(key)
    if name is None:
        name = _ATTR_NAMES[key] = key.rstrip("_").replace("__", "-")
    return name


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str | None) -> etree._Element:
    child = etree.SubElement(parent, tag, {_attr_name(k): v for k, v in attrs.items() if v is not None})
    if text is not None:
        child.text = text
    return child


def _text(parent: etree._Element, tag: str, text: str, **attrs: str) -> etree._Element:
    """A child with text and attributes that are all set (``_sub`` without its checks)."""
    child = etree.SubElement(parent, tag, attrs)
    child.text = text
    return child


def _alias(elem: etree._Element) -> str | None:
    node = elem.find("alias")
    return node.get("name") if node is not None else None


@dataclass
class Device:
    """Base of every device element: an alias (maybe absent) and what was not understood."""

    tag: ClassVar[str] = ""
    alias: str | None = None
    unknown: list[str] = field(default_factory=list)
    device_id: str | None = field(default=None, compare=False)  # the spec device this was rendered from

    def _finish(self, elem: etree._Element) -> etree._Element:
        if self.alias:
            etree.SubElement(elem, "alias", name=self.alias)
        return elem

    def to_element(self) -> etree._Element:
        raise NotImplementedError


@dataclass
class Disk(Device):
    tag: ClassVar[str] = "disk"
    type: str = "file"
    device: str = "disk"
    source: str | None = None
    driver_name: str | None = None
    driver_type: str | None = None
    target_dev: str = ""
    target_bus: str | None = None
    readonly: bool = False

    def to_element(self) -> etree._Element:
        elem = etree.Element("disk", type=self.type, device=self.device)
        if self.driver_name or self.driver_type:
            _sub(elem, "driver", name=self.driver_name, type=self.driver_type)
        if self.source is not None:
            etree.SubElement(elem, "source", {"file" if self.type == "file" else "dev": self.source})
        _sub(elem, "target", dev=self.target_dev, bus=self.target_bus)
        if self.readonly:
            etree.SubElement(elem, "readonly")
        return self._finish(elem)

    @classmethod
    def from_element(cls, elem: etree._Element) -> Disk:
        disk = cls(type=elem.get("type", "file"), device=elem.get("device", "disk"), alias=_alias(elem))
        source = elem.find("source")
        if source is not None:
            path = source.get("file") or source.get("dev")
            disk.source = path or None
            if path is None and len(source.attrib):
                disk.unknown.append("source " + ", ".join(f"{k!s}={v!s}" for k, v in source.attrib.items()))
        driver = elem.find("driver")
        if driver is not None:
            disk.driver_name, disk.driver_type = driver.get("name"), driver.get("type")
        target = elem.find("target")
        if target is not None:
            disk.target_dev = target.get("dev", "")
            disk.target_bus = target.get("bus")
        disk.readonly = elem.find("readonly") is not None
        known = {"source", "driver", "target", "readonly", "alias", "address", "boot", "backingStore",
                 "shareable", "serial"}
        disk.unknown += [c.tag for c in elem if isinstance(c.tag, str) and c.tag not in known]
        return disk


@dataclass
class Interface(Device):
    tag: ClassVar[str] = "interface"
    type: str = "bridge"
    mac: str | None = None
    source: str | None = None
    model: str | None = None
    link_state: str | None = None
    filterref: str | None = None
    target_dev: str | None = None

    def to_element(self) -> etree._Element:
        elem = etree.Element("interface", type=self.type)
        if self.mac:
            etree.SubElement(elem, "mac", address=self.mac)
        if self.source:
            etree.SubElement(elem, "source", {"bridge" if self.type == "bridge" else "network": self.source})
        if self.target_dev:
            etree.SubElement(elem, "target", dev=self.target_dev)
        if self.model:
            etree.SubElement(elem, "model", type=self.model)
        if self.filterref:
            etree.SubElement(elem, "filterref", filter=self.filterref)
        if self.link_state:
            etree.SubElement(elem, "link", state=self.link_state)
        return self._finish(elem)

    @classmethod
    def from_element(cls, elem: etree._Element) -> Interface:
        nic = cls(type=elem.get("type", "bridge"), alias=_alias(elem))
        mac = elem.find("mac")
        nic.mac = mac.get("address", "").lower() or None if mac is not None else None
        source = elem.find("source")
        if source is not None:
            nic.source = source.get("bridge") or source.get("network")
        model = elem.find("model")
        nic.model = model.get("type") if model is not None else None
        link = elem.find("link")
        nic.link_state = link.get("state") if link is not None else None
        filt = elem.find("filterref")
        nic.filterref = filt.get("filter") if filt is not None else None
        target = elem.find("target")
        nic.target_dev = target.get("dev") if target is not None else None
        # not <ip> (a VmSpec has no addresses), <driver> (backend, queues) nor <backenddomain> (a Xen driver
        # domain): the importer must say it drops them
        known = {"mac", "source", "model", "link", "filterref", "target", "alias", "address", "script"}
        nic.unknown += [c.tag for c in elem if isinstance(c.tag, str) and c.tag not in known]
        return nic


_GRAPHICS_ATTRS = {"type", "port", "autoport", "listen", "passwd"}


@dataclass
class Graphics(Device):
    tag: ClassVar[str] = "graphics"
    type: str = "vnc"
    listen: str | None = None
    passwd: str | None = None
    port: int | None = None

    def to_element(self) -> etree._Element:
        elem = etree.Element("graphics", type=self.type, autoport="yes")
        if self.listen:
            elem.set("listen", self.listen)
        if self.passwd:
            elem.set("passwd", self.passwd)
        if self.listen:
            _sub(elem, "listen", type="address", address=self.listen)
        return elem  # libvirt's schema has no <alias> for graphics: identified by type

    @classmethod
    def from_element(cls, elem: etree._Element) -> Graphics:
        port = elem.get("port")
        listen = elem.get("listen")
        node = elem.find("listen")
        if listen is None and node is not None:
            listen = node.get("address")
        gfx = cls(type=elem.get("type", "vnc"), listen=listen, passwd=elem.get("passwd"),
                  port=int(port) if port and port.lstrip("-").isdigit() and int(port) > 0 else None,
                  alias=_alias(elem))
        # what a VmSpec's graphics cannot say: SPICE's <mouse>, <clipboard>, <image>...; attributes as "@name"
        gfx.unknown += [c.tag for c in elem if isinstance(c.tag, str) and c.tag not in ("listen", "alias")]
        gfx.unknown += [f"@{k!s}" for k in elem.attrib if k not in _GRAPHICS_ATTRS]
        if elem.get("autoport") == "no" and gfx.port is not None:
            gfx.unknown.append("@port")  # a fixed port: Corral's consoles always take a free one
        return gfx


@dataclass
class CharDevice(Device):
    """``<serial>``, ``<console>`` or ``<channel>``: a pty or unix source and a typed target."""

    element: str = "serial"
    type: str = "pty"
    target_type: str | None = None
    target_name: str | None = None
    target_port: int | None = None
    source_path: str | None = None
    log_file: str | None = None
    tty: str | None = None

    @property
    def tag_name(self) -> str:
        return self.element

    def to_element(self) -> etree._Element:
        elem = etree.Element(self.element, type=self.type)
        if self.type == "unix":
            _sub(elem, "source", mode="bind", path=self.source_path)
        elif self.type == "file" and self.source_path:
            _sub(elem, "source", path=self.source_path)
        if self.log_file:
            _sub(elem, "log", file=self.log_file, append="off")
        port = str(self.target_port) if self.target_port is not None else None
        _sub(elem, "target", type=self.target_type, name=self.target_name, port=port)
        return self._finish(elem)

    @classmethod
    def from_element(cls, elem: etree._Element) -> CharDevice:
        dev = cls(element=str(elem.tag), type=elem.get("type", "pty"), alias=_alias(elem), tty=elem.get("tty"))
        target = elem.find("target")
        if target is not None:
            dev.target_type, dev.target_name = target.get("type"), target.get("name")
            port = target.get("port")
            dev.target_port = int(port) if port and port.isdigit() else None
        source = elem.find("source")
        if source is not None:
            dev.source_path = source.get("path")
        log = elem.find("log")
        if log is not None:
            dev.log_file = log.get("file")
        return dev


@dataclass
class Memballoon(Device):
    tag: ClassVar[str] = "memballoon"
    model: str = "virtio"

    def to_element(self) -> etree._Element:
        return self._finish(etree.Element("memballoon", model=self.model))

    @classmethod
    def from_element(cls, elem: etree._Element) -> Memballoon:
        return cls(model=elem.get("model", "virtio"), alias=_alias(elem))


@dataclass
class Video(Device):
    tag: ClassVar[str] = "video"
    model: str = "vga"
    vram_kib: int | None = None

    def to_element(self) -> etree._Element:
        elem = etree.Element("video")
        model = _sub(elem, "model", type=self.model)
        if self.vram_kib:
            model.set("vram", str(self.vram_kib))
        return self._finish(elem)

    @classmethod
    def from_element(cls, elem: etree._Element) -> Video:
        model = elem.find("model")
        vram = model.get("vram") if model is not None else None
        return cls(model=model.get("type", "vga") if model is not None else "vga",
                   vram_kib=int(vram) if vram and vram.isdigit() else None, alias=_alias(elem))


@dataclass
class Controller(Device):
    tag: ClassVar[str] = "controller"
    type: str = "scsi"
    model: str | None = None
    index: int = 0

    def to_element(self) -> etree._Element:
        elem = etree.Element("controller", type=self.type, index=str(self.index))
        if self.model:
            elem.set("model", self.model)
        return self._finish(elem)

    @classmethod
    def from_element(cls, elem: etree._Element) -> Controller:
        index = elem.get("index", "0")
        return cls(type=elem.get("type", ""), model=elem.get("model"),
                   index=int(index) if index.isdigit() else 0, alias=_alias(elem))


@dataclass
class OtherDevice(Device):
    """A device element Corral does not model (input, sound, hostdev, ...), kept for reporting."""

    element: str = ""
    type: str | None = None

    def to_element(self) -> etree._Element:
        raise XmlError(f"devices/{self.element}", "Corral does not render this device")


DEVICE_CLASSES: dict[str, type[Disk] | type[Interface] | type[Graphics] | type[Memballoon] | type[Video]
                      | type[Controller]] = {
    "disk": Disk, "interface": Interface, "graphics": Graphics, "memballoon": Memballoon,
    "video": Video, "controller": Controller,
}
CHAR_ELEMENTS = ("serial", "console", "channel")


def parse_device(elem: etree._Element) -> Device:
    tag = str(elem.tag)
    if tag in DEVICE_CLASSES:
        return DEVICE_CLASSES[tag].from_element(elem)
    if tag in CHAR_ELEMENTS:
        return CharDevice.from_element(elem)
    return OtherDevice(element=tag, type=elem.get("type") or elem.get("model"), alias=_alias(elem))


@dataclass
class CpuFeatureConfig:
    name: str
    policy: str = "require"


@dataclass
class Cpu:
    mode: str = "host-model"
    model: str | None = None
    features: list[CpuFeatureConfig] = field(default_factory=list)

    def to_element(self) -> etree._Element:
        elem = etree.Element("cpu", mode=self.mode)
        if self.mode == "custom":
            elem.set("match", "exact")
        if self.model:
            _sub(elem, "model", self.model, fallback="allow")
        for feat in self.features:
            _sub(elem, "feature", policy=feat.policy, name=feat.name)
        return elem

    @classmethod
    def from_element(cls, elem: etree._Element) -> Cpu:
        model = elem.find("model")
        mode = elem.get("mode") or ("custom" if model is not None else "host-model")
        return cls(mode=mode, model=(model.text or "").strip() or None if model is not None else None,
                   features=[CpuFeatureConfig(f.get("name", ""), f.get("policy", "require"))
                             for f in elem.findall("feature")])


@dataclass
class Os:
    type: str = "hvm"
    arch: str | None = "x86_64"
    machine: str | None = None
    boot: list[str] = field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None

    def to_element(self) -> etree._Element:
        elem = etree.Element("os")
        _sub(elem, "type", self.type, arch=self.arch, machine=self.machine)
        if self.kernel:
            _sub(elem, "kernel", self.kernel)
        if self.initrd:
            _sub(elem, "initrd", self.initrd)
        if self.cmdline:
            _sub(elem, "cmdline", self.cmdline)
        for dev in self.boot:
            etree.SubElement(elem, "boot", dev=dev)
        return elem

    @classmethod
    def from_element(cls, elem: etree._Element | None) -> Os:
        if elem is None:
            raise XmlError("os", "missing <os>")
        typ = elem.find("type")
        if typ is None or not (typ.text or "").strip():
            raise XmlError("os/type", "missing")

        def text(tag: str) -> str | None:
            node = elem.find(tag)
            return (node.text or "").strip() or None if node is not None else None

        return cls(type=(typ.text or "").strip(), arch=typ.get("arch"), machine=typ.get("machine"),
                   boot=[b.get("dev", "") for b in elem.findall("boot")],
                   kernel=text("kernel"), initrd=text("initrd"), cmdline=text("cmdline"))


@dataclass
class Domain:
    type: str
    name: str
    uuid: str
    memory_kib: int
    current_memory_kib: int | None = None
    vcpus: int = 1
    current_vcpus: int | None = None
    os: Os = field(default_factory=Os)
    bootloader: str | None = None
    features: list[str] = field(default_factory=list)
    cpu: Cpu | None = None
    description: str | None = None
    on_poweroff: str | None = None
    on_reboot: str | None = None
    on_crash: str | None = None
    devices: list[Device] = field(default_factory=list)
    metadata: etree._Element | None = None
    domain_id: int | None = None
    unknown: list[str] = field(default_factory=list)

    def to_element(self) -> etree._Element:
        root = etree.Element("domain", type=self.type)
        _text(root, "name", self.name)
        _text(root, "uuid", self.uuid)
        if self.description:
            _sub(root, "description", self.description)
        if self.metadata is not None:
            etree.SubElement(root, "metadata").append(self.metadata)
        _text(root, "memory", str(self.memory_kib), unit="KiB")
        if self.current_memory_kib is not None:
            _text(root, "currentMemory", str(self.current_memory_kib), unit="KiB")
        vcpu = _text(root, "vcpu", str(self.vcpus), placement="static")
        if self.current_vcpus is not None and self.current_vcpus != self.vcpus:
            vcpu.set("current", str(self.current_vcpus))
        if self.bootloader:
            _sub(root, "bootloader", self.bootloader)
        root.append(self.os.to_element())
        if self.features:
            feats = _sub(root, "features")
            for name in self.features:
                etree.SubElement(feats, name)
        if self.cpu is not None:
            root.append(self.cpu.to_element())
        for tag in ("on_poweroff", "on_reboot", "on_crash"):
            value = getattr(self, tag)
            if value:
                _sub(root, tag, value)
        devices = etree.SubElement(root, "devices")
        for dev in self.devices:
            devices.append(dev.to_element())
        return root

    def to_xml(self, pretty: bool = True) -> str:
        """``pretty`` for people; libvirt reads either (the agent skips the indenting)."""
        return etree.tostring(self.to_element(), pretty_print=pretty, encoding="unicode")

    @classmethod
    def from_xml(cls, text: str | bytes) -> Domain:
        return cls.from_element(parse_xml(text))

    @classmethod
    def from_element(cls, root: etree._Element) -> Domain:
        def text(tag: str) -> str | None:
            node = root.find(tag)
            return (node.text or "").strip() or None if node is not None else None

        name, uuid = text("name"), text("uuid")
        if not name:
            raise XmlError("name", "missing")
        memory = to_kib(root.find("memory"), "memory")
        if memory is None:
            raise XmlError("memory", "missing")
        dom = cls(type=root.get("type", ""), name=name, uuid=uuid or "", memory_kib=memory,
                  current_memory_kib=to_kib(root.find("currentMemory"), "currentMemory"),
                  os=Os.from_element(root.find("os")), bootloader=text("bootloader"),
                  description=text("description"), on_poweroff=text("on_poweroff"),
                  on_reboot=text("on_reboot"), on_crash=text("on_crash"))
        dom_id = root.get("id")
        dom.domain_id = int(dom_id) if dom_id and dom_id.lstrip("-").isdigit() and int(dom_id) >= 0 else None
        vcpu = root.find("vcpu")
        if vcpu is not None:
            try:
                dom.vcpus = int((vcpu.text or "1").strip())
                current = vcpu.get("current")
                dom.current_vcpus = int(current) if current else None
            except ValueError:
                raise XmlError("vcpu", f"not an integer: {vcpu.text!r}") from None
            dom.unknown += [f"vcpu@{a!s}" for a in vcpu.attrib if a not in ("placement", "current")]
        feats = root.find("features")
        if feats is not None:
            dom.features = [str(f.tag) for f in feats if isinstance(f.tag, str)]
        cpu = root.find("cpu")
        if cpu is not None:
            dom.cpu = Cpu.from_element(cpu)
        dom.metadata = root.find("metadata")
        devices = root.find("devices")
        if devices is not None:
            dom.devices = [parse_device(d) for d in devices if isinstance(d.tag, str)]
        known = {"name", "uuid", "title", "description", "metadata", "memory", "currentMemory", "vcpu",
                 "os", "bootloader", "bootloader_args", "features", "cpu", "clock", "on_poweroff",
                 "on_reboot", "on_crash", "devices", "seclabel", "resource", "keywrap", "genid"}
        dom.unknown += [str(c.tag) for c in root if isinstance(c.tag, str) and c.tag not in known]
        return dom
