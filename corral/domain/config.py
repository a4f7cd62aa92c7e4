"""libvirt domain XML as small typed objects, one class per element, each field declared once for both ways.

These classes know libvirt's XML, not Corral's policy: the flavors decide what goes in them, ``render``
formats them and ``read``/``importer`` parse live or foreign XML back into them. Every field says where it
lives (``xmlprop``): ``to_element`` and ``from_element`` walk those declarations, so what is written is what
is read. Parsing never requires ``<alias>``, ``<address>`` or ``<driver>`` (libxl omits them), and what a
class does not model is kept in ``unknown`` so it can be reported instead of dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lxml import etree

from corral.domain.xmlprop import (
    INT,
    KIB,
    LAX_INT,
    MAC,
    NODEFAULT,
    NONNEG_ID,
    NONZERO_INT,
    PORT,
    YESNO,
    XmlElement,
    XmlError,
    child,
    children,
    element,
    flag,
    items,
    kib,
    raw,
    tags,
    xml,
)

CORRAL_NS = "https://corral.dev/xmlns/vm/1"
ALIAS_PREFIX = "ua-"

__all__ = ["ALIAS_PREFIX", "CORRAL_NS", "XmlError"]


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
    """A memory element's size in KiB (its ``unit`` applied), None when absent or empty."""
    text = (elem.text or "").strip() if elem is not None else ""
    return kib(text, elem, where) if elem is not None and text else None


@element(ignore=("address",))
@dataclass
class Device(XmlElement):
    """Base of every device element: an alias (maybe absent) and what was not understood."""

    tag: ClassVar[str] = ""
    alias: str | None = xml("alias/@name")
    unknown: list[str] = field(default_factory=list)
    device_id: str | None = field(default=None, compare=False)  # the spec device this was rendered from

    def _parsed(self, elem: etree._Element) -> None:
        self.unknown += self.unmodelled(elem)


_DISK_SOURCE = {"file": "source/@file", "block": "source/@dev", "dir": "source/@dir"}


@element("disk", ignore=("address", "boot", "backingStore", "shareable", "serial", "@snapshot", "@model"))
@dataclass
class Disk(Device):
    tag: ClassVar[str] = "disk"
    type: str = xml("@type", default="file")
    device: str = xml("@device", default="disk")
    driver_name: str | None = xml("driver/@name")
    driver_type: str | None = xml("driver/@type")
    source: str | None = xml(None, by=("type", _DISK_SOURCE))  # the attribute is the disk type's
    target_dev: str = xml("target/@dev", default="")
    target_bus: str | None = xml("target/@bus")
    readonly: bool = flag("readonly")

    def _parsed(self, elem: etree._Element) -> None:
        super()._parsed(elem)
        src = elem.find("source")
        if self.source is None and src is not None and len(src.attrib):  # network, volume, nvme...: not a path
            self.unknown.append("source " + ", ".join(f"{k!s}={v!s}" for k, v in src.attrib.items()))


@element("interface", ignore=("address", "script"))
@dataclass
class Interface(Device):
    """Not ``<ip>`` (a VmSpec has no addresses), ``<driver>`` (backend, queues) nor ``<backenddomain>`` (a Xen
    driver domain): they stay in ``unknown`` for the importer to report."""

    tag: ClassVar[str] = "interface"
    type: str = xml("@type", default="bridge")
    mac: str | None = xml("mac/@address", MAC)
    source: str | None = xml(None, by=("type", {"bridge": "source/@bridge", "network": "source/@network"}))
    target_dev: str | None = xml("target/@dev")
    model: str | None = xml("model/@type")
    filterref: str | None = xml("filterref/@filter")
    link_state: str | None = xml("link/@state")


@element("graphics")
@dataclass
class Graphics(Device):
    """``port`` is the TCP port libvirt reports (None: not allocated yet, or libvirt's legacy -1, "any");
    ``autoport`` asks libvirt for a free one (None: not said, libvirt decides from ``port``). The listen
    address is written once, as ``<listen type='address'>``, the element libvirt documents for it (it repeats
    it as the ``listen`` attribute itself, for older readers); the attribute alone is read too. libxl takes
    the address of that first listen [L13]."""

    tag: ClassVar[str] = "graphics"
    alias: str | None = None  # libvirt's schema has no <alias> for graphics: identified by type
    type: str = xml("@type", default="vnc")
    port: int | None = xml("@port", PORT)
    autoport: bool | None = xml("@autoport", YESNO, default=True, absent=None)
    passwd: str | None = xml("@passwd")
    listen: str | None = xml("listen[@type='address']/@address", fallback=("@listen",))

    def _parsed(self, elem: etree._Element) -> None:
        super()._parsed(elem)
        if self.autoport is False and self.port is not None:
            self.unknown.append("@port")  # a fixed port: Corral's consoles always take a free one


@element(tag_field="element", ignore=("address",))
@dataclass
class CharDevice(Device):
    """``<serial>``, ``<console>`` or ``<channel>``: a pty, file or unix source and a typed target."""

    element: str = "serial"
    type: str = xml("@type", default="pty")
    tty: str | None = xml("@tty")
    source_mode: str | None = xml("source/@mode", fill=lambda d: "bind" if d.type == "unix" else None)
    source_path: str | None = xml("source/@path")
    log_file: str | None = xml("log/@file", also={"append": "off"})
    target_type: str | None = xml("target/@type")
    target_name: str | None = xml("target/@name")
    target_port: int | None = xml("target/@port", LAX_INT)

    @property
    def tag_name(self) -> str:
        return self.element


@element("memballoon", ignore=("address", "stats"))
@dataclass
class Memballoon(Device):
    tag: ClassVar[str] = "memballoon"
    model: str = xml("@model", default="virtio")


@element("video", ignore=("address",))
@dataclass
class Video(Device):
    tag: ClassVar[str] = "video"
    model: str = xml("model/@type", default="vga")
    vram_kib: int | None = xml("model/@vram", NONZERO_INT)


@element("controller", ignore=("address",))
@dataclass
class Controller(Device):
    tag: ClassVar[str] = "controller"
    type: str = xml("@type", default="scsi", absent="")
    index: int = xml("@index", LAX_INT, default=0)
    model: str | None = xml("@model")


@element(tag_field="element", ignore=("address",))
@dataclass
class OtherDevice(Device):
    """A device element Corral does not model (input, sound, hostdev, ...), kept for reporting."""

    element: str = ""
    type: str | None = xml("@type", fallback=("@model",))

    def _parsed(self, elem: etree._Element) -> None:
        pass  # the whole element is what Corral does not model

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
    return OtherDevice.from_element(elem)


@element("feature")
@dataclass
class CpuFeatureConfig(XmlElement):
    name: str = xml("@name", default="")
    policy: str = xml("@policy", default="require")


@element("cpu")
@dataclass
class Cpu(XmlElement):
    """``mode`` absent reads as libvirt does: custom when a model is named, else host-model."""

    mode: str = xml("@mode", default="host-model", absent=None)
    match: str | None = xml("@match", fill=lambda c: "exact" if c.mode == "custom" else None)
    model: str | None = xml("model", also={"fallback": "allow"})
    features: list[CpuFeatureConfig] = items("feature", of=CpuFeatureConfig)  # noqa: RUF009 (a field declaration, like field())

    def _parsed(self, elem: etree._Element) -> None:
        if self.mode is None:
            self.mode = "custom" if elem.find("model") is not None else "host-model"


@element("os")
@dataclass
class Os(XmlElement):
    type: str = xml("type", default="hvm", required=True)
    arch: str | None = xml("type/@arch", default="x86_64", absent=None)
    machine: str | None = xml("type/@machine")
    kernel: str | None = xml("kernel")
    initrd: str | None = xml("initrd")
    cmdline: str | None = xml("cmdline")
    boot: list[str] = items("boot/@dev")  # noqa: RUF009 (a field declaration, like field())

    @classmethod
    def from_element(cls, elem: etree._Element | None, where: str = "") -> Os:
        if elem is None:
            raise XmlError("os", "missing <os>")
        return super().from_element(elem, where)


_DOMAIN_CHILDREN = ("title", "bootloader_args", "clock", "seclabel", "resource", "keywrap", "genid")


@element("domain", ignore=_DOMAIN_CHILDREN)
@dataclass(kw_only=True)
class Domain(XmlElement):
    """Fields in the order libvirt writes them (keyword-only: the order is the XML's, not a signature)."""

    type: str = xml("@type", default=NODEFAULT, absent="")
    domain_id: int | None = xml("@id", NONNEG_ID)
    name: str = xml("name", default=NODEFAULT, required=True)
    uuid: str = xml("uuid", default="", absent="")
    description: str | None = xml("description", strip=False)
    metadata: etree._Element | None = raw("metadata")  # noqa: RUF009 (a field declaration, like field())
    memory_kib: int = xml("memory", KIB, NODEFAULT, required=True, also={"unit": "KiB"})
    current_memory_kib: int | None = xml("currentMemory", KIB, also={"unit": "KiB"})
    vcpus: int = xml("vcpu", INT, default=1, also={"placement": "static"})
    current_vcpus: int | None = xml("vcpu/@current", INT, skip=lambda d: d.current_vcpus == d.vcpus)
    bootloader: str | None = xml("bootloader")
    os: Os = child(Os, default_factory=Os, required=True)  # noqa: RUF009 (a field declaration, like field())
    features: list[str] = tags("features")  # noqa: RUF009 (a field declaration, like field())
    cpu: Cpu | None = child(Cpu)  # noqa: RUF009 (a field declaration, like field())
    on_poweroff: str | None = xml("on_poweroff")
    on_reboot: str | None = xml("on_reboot")
    on_crash: str | None = xml("on_crash")
    devices: list[Device] = children("devices", parse_device)  # noqa: RUF009 (a field declaration, like field())
    unknown: list[str] = field(default_factory=list)

    def _parsed(self, elem: etree._Element) -> None:
        self.unknown += [u for u in self.unmodelled(elem) if not u.startswith("@")]
        vcpu = elem.find("vcpu")
        if vcpu is not None:
            self.unknown += [f"vcpu@{a!s}" for a in vcpu.attrib if a not in ("placement", "current")]

    def to_xml(self, pretty: bool = True) -> str:
        """``pretty`` for people; libvirt reads either (the agent skips the indenting)."""
        return etree.tostring(self.to_element(), pretty_print=pretty, encoding="unicode")

    @classmethod
    def from_xml(cls, text: str | bytes) -> Domain:
        return cls.from_element(parse_xml(text))
