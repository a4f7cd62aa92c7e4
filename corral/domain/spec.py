"""The hypervisor-neutral description of a VM.

A VmSpec says *what* the operator wants (a disk on the fast bus, a NIC on a bridge, a console); the host's
flavor decides *how* libvirt gets it. Nothing here names a libvirt driver. Every device carries a stable id
that survives define/start cycles (it is rendered as the libvirt user alias ``ua-<id>``), so the agent and
the engine can always say which live device is which spec device.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid as uuidlib
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.domain.netnames import bridge_for, valid_network_name

SPEC_FORMAT_VERSION = 1
# The most devices of one kind a VM may have (disks, NICs, consoles, CPU features): more than any real VM
# needs, few enough that a spec stays small and rendering it cheap (issue 14: every list is capped).
MAX_DEVICES = 64

# \Z, not $: Python's $ also matches before a trailing newline ("vm1\n").
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
BRIDGE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,15}\Z")
NET_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
_NOT_IN_PATH = ("\x00", "\n", "\r")  # libvirt's schema takes a path as one line


class GuestType(StrEnum):
    HVM = "hvm"
    PV = "pv"
    PVH = "pvh"


class HypervisorChoice(StrEnum):
    """The hosts a VM may run on, by flavor: ``any``, or only one flavor's (a guest image built for Xen PV that
    must not become HVM, software licensed for one hypervisor). The scheduler refuses hosts of another flavor."""

    ANY = "any"
    KVM = "kvm"
    XEN = "xen"


class BootDevice(StrEnum):
    HD = "hd"
    CDROM = "cdrom"
    NETWORK = "network"


class CpuMode(StrEnum):
    HOST_MODEL = "host-model"
    HOST_PASSTHROUGH = "host-passthrough"
    CUSTOM = "custom"


class FeaturePolicy(StrEnum):
    REQUIRE = "require"
    DISABLE = "disable"


class DiskSource(StrEnum):
    FILE = "file"
    BLOCK = "block"


class DiskFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


class CloneMode(StrEnum):
    THIN = "thin"
    FULL = "full"


class DiskBus(StrEnum):
    AUTO = "auto"
    VIRTIO = "virtio"
    XEN = "xen"
    IDE = "ide"
    SATA = "sata"
    SCSI = "scsi"


class DiskDevice(StrEnum):
    DISK = "disk"
    CDROM = "cdrom"
    FLOPPY = "floppy"


class NicSource(StrEnum):
    BRIDGE = "bridge"
    NETWORK = "network"


class NicModel(StrEnum):
    AUTO = "auto"
    VIRTIO = "virtio"
    E1000 = "e1000"
    RTL8139 = "rtl8139"
    NETFRONT = "netfront"


class LinkState(StrEnum):
    UP = "up"
    DOWN = "down"


class GraphicsType(StrEnum):
    VNC = "vnc"
    SPICE = "spice"


class ConsoleKind(StrEnum):
    SERIAL = "serial"
    PV = "pv"


class LifecycleAction(StrEnum):
    DESTROY = "destroy"
    RESTART = "restart"
    PRESERVE = "preserve"
    RENAME_RESTART = "rename-restart"
    COREDUMP_DESTROY = "coredump-destroy"
    COREDUMP_RESTART = "coredump-restart"


class DeviceModelPolicy(StrEnum):
    """What the agent does when a Xen HVM domain's device model (qemu) dies under a live domain."""

    DESTROY = "destroy"
    RESTART = "restart"


# What XML 1.0 can carry: libvirt (and lxml) refuse the rest, so the spec refuses it first.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class FieldError(ValueError):
    """A check across fields that names the field at fault (relative to the model raising it)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def _xml_text(value: str | None) -> str | None:
    if value is not None and (bad := _NOT_XML_CHAR.search(value)):
        raise ValueError(f"character {bad.group()!r} cannot be stored in libvirt XML")
    return value


def new_id() -> str:
    return str(uuidlib.uuid4())


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check_uuid(value: str) -> str:
    if _CANONICAL_UUID.fullmatch(value):  # already in the form uuid.UUID would give back: the usual case
        return value
    try:
        return str(uuidlib.UUID(value))
    except ValueError as exc:
        raise ValueError(f"not a UUID: {value!r}") from exc


DeviceId = Annotated[str, Field(default_factory=new_id, description="stable device id (uuid)")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False)


class _Device(_Model):
    id: DeviceId

    @field_validator("id")
    @classmethod
    def _id_is_uuid(cls, value: str) -> str:
        return _check_uuid(value)


class CpuFeature(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9_.-]{1,40}$")]
    policy: FeaturePolicy = FeaturePolicy.REQUIRE


class CpuSpec(_Model):
    mode: CpuMode = CpuMode.HOST_MODEL
    model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    features: list[CpuFeature] = Field(default_factory=list, max_length=MAX_DEVICES)

    @model_validator(mode="after")
    def _model_matches_mode(self) -> Self:
        if self.mode is CpuMode.CUSTOM and not self.model:
            raise FieldError("model", "model is required when mode is 'custom'")
        if self.mode is not CpuMode.CUSTOM and self.model:
            raise FieldError("model", f"model is only allowed with mode 'custom', not {self.mode.value!r}")
        return self


VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # the engine's volume and storage domain names
MAX_VOLUME_BYTES = 1 << 50  # 1 PiB


class DiskSpec(_Device):
    """A disk is one of: ``source``, a path on the host (what the agent always receives); ``volume``, a volume
    of the engine by name (``storage`` says which domain when the name is not unique); ``size_bytes``, a new
    volume the engine makes for the VM (in ``storage``, or the cluster's only domain), which it stores as a
    ``volume`` reference at once; ``image``, an uploaded image by name or id: for a disk, a new volume of the VM
    cloned from it (``clone``: ``thin``, a qcow2 overlay reading the image, the default where its domain allows
    it, or ``full``, a copy), grown to ``size_bytes`` when given; for a CD-ROM, the ISO itself. The engine turns
    references into paths before a spec reaches a host."""

    device: DiskDevice = DiskDevice.DISK
    source_type: DiskSource = DiskSource.FILE
    source: str | None = Field(default=None, description="absolute path; None only for an empty CD-ROM, or "
                                                         "when the disk names a volume or a size")
    volume: str | None = Field(default=None, description="a volume of the engine (name or id)")
    size_bytes: int | None = Field(default=None, ge=1, le=MAX_VOLUME_BYTES,
                                   description="a new volume of this size, made by the engine for this VM")
    storage: str | None = Field(default=None, description="the storage domain of the volume (name or id)")
    image: str | None = Field(default=None, description="an uploaded image (name or id): a disk is made from it, "
                                                       "a CD-ROM takes the ISO")
    clone: CloneMode | None = Field(default=None, description="how a disk is made from its image or template "
                                                             "volume: thin (qcow2 overlay) or full (a copy)")
    format: DiskFormat = DiskFormat.RAW
    bus: DiskBus = DiskBus.AUTO
    readonly: bool = False

    @field_validator("volume", "storage", "image")
    @classmethod
    def _volume_name(cls, value: str | None) -> str | None:
        if value is not None and not VOLUME_NAME_RE.match(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("source")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value == "":
            raise ValueError("empty path; leave the source out for an empty CD-ROM")
        if not value.startswith("/") or value == "/" or any(c in value for c in _NOT_IN_PATH):
            raise ValueError(f"must be an absolute path: {value!r}")
        return _xml_text(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        given = [f for f in ("source", "volume", "image", "size_bytes") if getattr(self, f) is not None]
        if given[:2] == ["image", "size_bytes"]:
            given = ["image"]  # an image's disk grown to size_bytes
        if len(given) > 1:
            raise FieldError(given[1], f"give one of source, volume, image or size_bytes, not {' and '.join(given)}")
        if self.storage is not None and not {"volume", "image", "size_bytes"} & set(given):
            raise FieldError("storage", "storage goes with volume, image or size_bytes")
        if self.clone is not None and (self.device is not DiskDevice.DISK or (self.image is None and
                                                                              self.volume is None)):
            raise FieldError("clone", "clone goes with a disk's image (or a template's volume)")
        if self.size_bytes is not None and self.device is not DiskDevice.DISK:
            raise FieldError("size_bytes", f"a new empty volume is for a disk, not a {self.device.value}")
        if not given and self.device is not DiskDevice.CDROM:
            raise FieldError("source", f"a {self.device.value} needs a source, a volume, an image or a "
                                       "size_bytes; only a CD-ROM may be empty")
        if self.device is DiskDevice.CDROM and not self.readonly:
            object.__setattr__(self, "readonly", True)
        return self


class NicSpec(_Device):
    """A NIC on a host bridge or libvirt network (``source``), or on a logical network of the engine
    (``network``, issue 18). A ``network`` NIC's source is the network's bridge by the rule both engine and agent
    follow (``corral.domain.netnames``): filled in here, so a flavor renders the bridge and a host checks it
    like any bridge; a source naming another bridge, or a libvirt network, is refused (``network``)."""

    mac: str | None = Field(default=None, description="the engine assigns one from its pool when absent "
                                                      "(offline tools: derived from the NIC id, flavor's prefix)")
    source_type: NicSource = NicSource.BRIDGE
    source: str = Field(default="", description="the bridge or libvirt network; with ``network``, its bridge "
                                                "(filled in)")
    network: str | None = Field(default=None, description="a logical network of the VM's cluster, by name")
    model: NicModel = NicModel.AUTO
    link: LinkState = LinkState.UP
    filter: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9._-]{0,63}$")

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if not MAC_RE.match(value):
            raise ValueError(f"not a MAC address: {value!r}")
        if int(value[:2], 16) & 1:
            raise ValueError(f"multicast MAC address: {value!r}")
        return value

    @model_validator(mode="after")
    def _source_name(self) -> Self:
        if self.network is not None:
            if not valid_network_name(self.network):
                raise FieldError("network", f"not a network name: {self.network!r} (1-50 letters, digits, '_' "
                                            "or '-', starting with a letter or digit)")
            bridge = bridge_for(self.network)
            if self.source_type is not NicSource.BRIDGE or self.source not in ("", bridge):
                raise FieldError("network", f"give a logical network or a {self.source_type.value} source, not "
                                            f"both (network {self.network} is bridge {bridge} on its hosts)")
            object.__setattr__(self, "source", bridge)
        elif not self.source:
            raise FieldError("source", "a NIC needs a source (a bridge or libvirt network) or a network")
        pattern = BRIDGE_RE if self.source_type is NicSource.BRIDGE else NET_NAME_RE
        if not pattern.match(self.source):
            raise FieldError("source", f"invalid {self.source_type.value} name: {self.source!r}")
        return self


class GraphicsSpec(_Device):
    type: GraphicsType = GraphicsType.VNC
    listen: str = Field(default="127.0.0.1", pattern=r"^[0-9a-fA-F.:]{2,45}$")
    password: str | None = Field(default=None, min_length=1, max_length=8)

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: str | None) -> str | None:
        return _xml_text(value)


class ConsoleSpec(_Device):
    kind: ConsoleKind = ConsoleKind.SERIAL


class AgentChannelSpec(_Device):
    """The guest-agent channel (qemu-guest-agent's ``org.qemu.guest_agent.0``)."""


class BalloonSpec(_Device):
    """A memory balloon, so the host can take memory back from the guest."""


class CloudInitMode(StrEnum):
    DHCP = "dhcp"
    STATIC = "static"


USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")  # Debian's useradd NAME_REGEX, as cloud-init creates it
_HOST_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
# the key types OpenSSH's sshd takes in authorized_keys (security keys too); the key blob repeats the type
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss")


def check_ssh_key(line: str) -> str:
    """One OpenSSH public key line ``TYPE BASE64 [comment]``, whose blob names the same type: a private key, a
    file of several keys or a key with authorized_keys options is refused, not passed to the guest."""
    line = line.strip()
    parts = line.split(None, 2)
    if any(c in line for c in "\n\r\x00") or len(parts) < 2:
        raise ValueError("not an OpenSSH public key line ('TYPE BASE64 [comment]')")
    kind, blob = parts[0], parts[1]
    if kind not in SSH_KEY_TYPES:
        raise ValueError(f"unknown key type {kind[:40]!r} (expected one of {', '.join(SSH_KEY_TYPES)}); "
                         "authorized_keys options are not taken")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {kind} key is not valid base64") from None
    size = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if raw[4:4 + size] != kind.encode():
        raise ValueError(f"the key data is not a {kind} key")
    return _xml_text(line) or line


SshPublicKey = Annotated[str, AfterValidator(check_ssh_key)]


class CloudInitNetwork(_Model):
    """The guest's network as cloud-init configures it: DHCP on every NIC, or one static address on the first."""

    mode: CloudInitMode = CloudInitMode.DHCP
    address: str | None = Field(default=None, description="ADDRESS/PREFIX, static mode only")
    gateway: str | None = None
    dns: list[str] = Field(default_factory=list, max_length=8)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "/" not in value:
            raise ValueError(f"give ADDRESS/PREFIX, e.g. 192.0.2.10/24: {value!r}")
        try:
            return str(ipaddress.ip_interface(value))
        except ValueError:
            raise ValueError(f"not an address with a prefix: {value!r}") from None

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None

    @field_validator("dns")
    @classmethod
    def _dns(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_address(item)))
            except ValueError:
                raise ValueError(f"not an IP address: {item!r}") from None
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.mode is CloudInitMode.STATIC and self.address is None:
            raise FieldError("address", "static mode needs an address (ADDRESS/PREFIX)")
        if self.mode is CloudInitMode.DHCP:
            for name in ("address", "gateway"):
                if getattr(self, name) is not None:
                    raise FieldError(name, f"{name} goes with mode 'static', not 'dhcp'")
        if self.gateway is not None and self.address is not None and \
                ipaddress.ip_address(self.gateway).version != ipaddress.ip_interface(self.address).version:
            raise FieldError("gateway", "the gateway is not of the address's IP version")
        return self


class CloudInit(_Model):
    """First-boot data for a cloud image (cloud-init's NoCloud seed, built by the agent of the VM's host).
    There is no password: a key logs in, as cloud images expect."""

    user: str | None = Field(default=None, description="the login made on first boot (default: the image's own "
                                                        "default user)")
    ssh_authorized_keys: list[SshPublicKey] = Field(default_factory=list, max_length=64)
    hostname: str | None = Field(default=None, description="RFC 1123 host name or FQDN (default: the VM name, "
                                                           "where it is one)")
    network: CloudInitNetwork = Field(default_factory=CloudInitNetwork)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and (not USER_NAME_RE.match(value) or value == "root"):
            raise ValueError("must be 1-32 lower-case letters, digits, '_' or '-', starting with a letter or '_' "
                             "(and not root)")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower().removesuffix(".")
        if len(value) > 253 or not all(_HOST_LABEL_RE.match(label) for label in value.split(".")):
            raise ValueError("not an RFC 1123 host name: labels of 1-63 letters, digits or '-' (not at either "
                             "end), separated by '.'")
        return value


class VmSpec(_Model):
    format_version: int = Field(default=SPEC_FORMAT_VERSION, ge=1, le=1000)
    id: str = Field(default_factory=new_id)
    name: str
    description: str = Field(default="", max_length=4096)
    memory_mib: int = Field(ge=1, le=16 * 1024 * 1024)
    max_memory_mib: int | None = Field(default=None, ge=1, le=16 * 1024 * 1024)
    vcpus: int = Field(default=1, ge=1, le=4096)
    max_vcpus: int | None = Field(default=None, ge=1, le=4096)
    guest_type: GuestType = GuestType.HVM
    hypervisor: HypervisorChoice = HypervisorChoice.ANY
    boot: list[BootDevice] = Field(default_factory=lambda: [BootDevice.HD], max_length=len(BootDevice))
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = Field(default=None, max_length=4096)
    bootloader: str | None = None
    cpu: CpuSpec | None = None
    disks: list[DiskSpec] = Field(default_factory=list, max_length=MAX_DEVICES)
    nics: list[NicSpec] = Field(default_factory=list, max_length=MAX_DEVICES)
    graphics: GraphicsSpec | None = None
    consoles: list[ConsoleSpec] = Field(default_factory=lambda: [ConsoleSpec(id=new_id())], max_length=MAX_DEVICES)
    guest_agent: AgentChannelSpec | None = None
    balloon: BalloonSpec | None = Field(default_factory=lambda: BalloonSpec(id=new_id()))
    on_poweroff: LifecycleAction = LifecycleAction.DESTROY
    on_reboot: LifecycleAction = LifecycleAction.RESTART
    on_crash: LifecycleAction = LifecycleAction.DESTROY
    on_device_model_lost: DeviceModelPolicy = DeviceModelPolicy.DESTROY
    cloud_init: CloudInit | None = None

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SPEC_FORMAT_VERSION:
            raise ValueError(f"unsupported spec format version {value} (this Corral knows {SPEC_FORMAT_VERSION})")
        return value

    @field_validator("id")
    @classmethod
    def _id_is_uuid(cls, value: str) -> str:
        return _check_uuid(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("bootloader")
    @classmethod
    def _bootloader(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(/[^\x00\n\r]*|[A-Za-z0-9._-]{1,64})\Z", value):
            raise ValueError(f"must be an absolute path or a program name: {value!r}")
        return value

    @field_validator("kernel", "initrd")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or value == "/"
                                  or any(c in value for c in _NOT_IN_PATH)):
            raise ValueError(f"must be an absolute path: {value!r}")
        return value

    @field_validator("description", "cmdline", "kernel", "initrd", "bootloader")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _xml_text(value)

    @field_validator("boot")
    @classmethod
    def _boot_unique(cls, value: list[BootDevice]) -> list[BootDevice]:
        if len(set(value)) != len(value):
            raise ValueError("boot devices must not repeat")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_memory_mib is not None and self.max_memory_mib < self.memory_mib:
            raise FieldError("max_memory_mib",
                             f"max_memory_mib ({self.max_memory_mib}) is below memory_mib ({self.memory_mib})")
        for event in ("on_poweroff", "on_reboot"):
            if getattr(self, event).value.startswith("coredump"):
                raise FieldError(event, "coredump actions apply to on_crash only")
        if self.max_vcpus is not None and self.max_vcpus < self.vcpus:
            raise FieldError("max_vcpus", f"max_vcpus ({self.max_vcpus}) is below vcpus ({self.vcpus})")
        if self.initrd and not self.kernel:
            raise FieldError("initrd", "initrd needs a kernel")
        if self.cmdline and not self.kernel:
            raise FieldError("cmdline", "cmdline needs a kernel")
        if self.kernel and self.bootloader:
            raise FieldError("bootloader", "give a kernel or a bootloader, not both")
        seen: set[str] = set()
        for path, dev in self._device_paths():
            if dev.id in seen:
                raise FieldError(f"{path}.id", f"device ids must be unique, repeated: {dev.id}")
            seen.add(dev.id)
        macs: set[str] = set()
        for i, nic in enumerate(self.nics):
            if nic.mac and nic.mac in macs:
                raise FieldError(f"nics.{i}.mac", f"NIC MAC addresses must be unique, repeated: {nic.mac}")
            macs.add(nic.mac or "")
        return self

    def _device_paths(self) -> list[tuple[str, _Device]]:
        out: list[tuple[str, _Device]] = []
        for group in ("disks", "nics", "consoles"):
            out += [(f"{group}.{i}", d) for i, d in enumerate(getattr(self, group))]
        for single in ("graphics", "guest_agent", "balloon"):
            if getattr(self, single) is not None:
                out.append((single, getattr(self, single)))
        return out

    @property
    def effective_max_memory_mib(self) -> int:
        return self.max_memory_mib or self.memory_mib

    @property
    def effective_max_vcpus(self) -> int:
        return self.max_vcpus or self.vcpus

    def devices(self) -> list[_Device]:
        """Every device of the spec, in a stable order."""
        out: list[_Device] = [*self.disks, *self.nics, *self.consoles]
        for single in (self.graphics, self.guest_agent, self.balloon):
            if single is not None:
                out.append(single)
        return out

    def with_device(self, new_device: _Device) -> VmSpec:
        """A copy with the device of the same id replaced (disks, NICs, graphics), validated again."""
        data = self.model_copy(deep=True)
        for attr in ("disks", "nics"):
            items = getattr(data, attr)
            for i, item in enumerate(items):
                if item.id == new_device.id:
                    items[i] = new_device
        if data.graphics is not None and data.graphics.id == new_device.id:
            data.graphics = new_device  # type: ignore[assignment]
        return VmSpec.model_validate(data.model_dump())

    def device(self, device_id: str) -> _Device | None:
        return next((d for d in self.devices() if d.id == device_id), None)


Device = _Device


class SpecError(ValueError):
    """Invalid input, with the path of each offending field (``disks.0.source``)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in errors))

    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: str = "") -> SpecError:
        errors = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, FieldError):
                loc.append(cause.field)
            path = ".".join(loc)
            if prefix:
                path = f"{prefix}.{path}" if path else prefix
            msg = str(err["msg"]).removeprefix("Value error, ")
            errors.append((path, msg))
        return cls(errors)

    @property
    def field(self) -> str | None:
        return self.errors[0][0] if self.errors else None


def parse_spec(data: Any) -> VmSpec:
    """Validate untrusted input into a VmSpec, raising SpecError with field paths."""
    try:
        return VmSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError.from_validation(exc) from None
