"""Walk a VmSpec through a flavor's table: every field gets a Decision, and the libvirt objects to render.

This is the only place that applies a flavor; the flavors hold data, ``config`` holds XML. ``plan`` is the
decision list alone, ``render`` refuses to produce XML while any decision is ``refused``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from lxml import etree

from corral.domain import config as cfg
from corral.domain.flavors import features as feat
from corral.domain.flavors.base import BUS_PREFIX, Decision, Flavor, Outcome, Rule
from corral.domain.flavors.features import (
    AgentChannel,
    BootOrder,
    Check,
    ConsoleLog,
    Feature,
    GraphicsPassword,
    LinkControl,
    MemoryAtStart,
)
from corral.domain.spec import (
    SPEC_FORMAT_VERSION,
    ConsoleKind,
    CpuMode,
    DiskDevice,
    DiskFormat,
    DiskSource,
    GuestType,
    LifecycleAction,
    LinkState,
    NicSource,
    VmSpec,
)

AGENT_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class RenderOptions:
    """Host-side facts the agent knows and pure code does not."""

    host_cpus: int | None = None
    console_log_dir: str | None = None  # where QEMU's virtlogd writes serial logs
    channel_dir: str = "/var/lib/corral/channels"  # unix sockets of Xen guest-agent channels


@dataclass
class Resolution:
    flavor: Flavor
    guest_type: GuestType
    decisions: list[Decision] = field(default_factory=list)
    domain: cfg.Domain | None = None
    nic_link_down: list[str] = field(default_factory=list)  # NIC ids the agent must set down itself
    balloon_target_mib: int | None = None  # started at max: the agent sets the balloon to this after the start
    spec_text: str = ""  # the spec as JSON, as stored in <metadata> (without a VNC password)

    @property
    def refused(self) -> list[Decision]:
        return [d for d in self.decisions if d.outcome is Outcome.REFUSED]


class RefusedError(ValueError):
    """The flavor refuses one or more settings; lists every refused field at once."""

    def __init__(self, flavor: Flavor, decisions: list[Decision]) -> None:
        self.decisions = decisions
        lines = "; ".join(f"{d.path}: {d.detail}" for d in decisions)
        super().__init__(f"{flavor.title} refuses {len(decisions)} setting(s): {lines}")

    @property
    def field(self) -> str | None:
        return self.decisions[0].path if self.decisions else None


def mac_for(device_id: str, prefix: str) -> str:
    """A MAC derived from the device id: stable across renders, in the flavor's vendor prefix."""
    return prefix + ":" + hashlib.sha256(device_id.encode()).digest()[:3].hex(":")


def alias_of(device_id: str, suffix: str = "") -> str:
    return f"{cfg.ALIAS_PREFIX}{device_id}{suffix}"


def _loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1: where every console listens unless a cluster allows public ones (issue 14)."""
    return ipaddress.ip_address(address).is_loopback


def _identify(dev: cfg.Device, device_id: str) -> cfg.Device:
    dev.device_id = device_id
    return dev


def metadata_element(spec: VmSpec, flavor: Flavor, guest_type: GuestType) -> etree._Element:
    root = etree.Element(f"{{{cfg.CORRAL_NS}}}vm", nsmap={"corral": cfg.CORRAL_NS})
    root.set("format", str(SPEC_FORMAT_VERSION))
    root.set("flavor", flavor.name)
    root.set("guest-type", guest_type.value)
    spec_elem = etree.SubElement(root, f"{{{cfg.CORRAL_NS}}}spec")
    if spec.graphics is not None and spec.graphics.password:
        # libvirt shows <metadata> to every reader; the password itself stays in the secure-only <graphics>.
        spec_elem.text = spec.model_dump_json(exclude={"graphics": {"password"}})
        root.set("graphics-password", "set")
    else:
        spec_elem.text = spec.model_dump_json()  # pydantic's own encoder: a third of json.dumps(model_dump())
    return root


@lru_cache(maxsize=4096)
def _decision(flavor: Flavor, path: str, feature: Feature, guest_type: GuestType,
              asked: str | None) -> tuple[Rule, Decision]:
    """One rule applied to one field: a pure function of its arguments (flavors are immutable and hashed by
    identity), memoised because an agent renders the same few shapes of VM over and over. Bounded: asked
    values are open-ended (paths, bridges)."""
    rule = flavor.rule(feature, guest_type)
    if rule.outcome is Outcome.TRANSLATED:
        becomes = f" -> {rule.value}" if rule.value else ""
        detail = f"{asked}{becomes}: {rule.reason}" if asked else f"{rule.reason}"
    elif rule.outcome is Outcome.NATIVE:
        detail = ", ".join(x for x in (asked or rule.value, rule.reason) if x)
    else:
        detail = rule.reason
    return rule, Decision(path, feature, rule.outcome, detail)


def _letters(n: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: libvirt's disk naming."""
    out = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(ord("a") + rem) + out
    return out


class _Walker:
    def __init__(self, spec: VmSpec, flavor: Flavor, guest_type: GuestType, options: RenderOptions,
                 stored: VmSpec) -> None:
        self.spec, self.flavor, self.options = spec, flavor, options
        self.stored = stored  # the caller's spec, kept in <metadata> as it was asked (its own guest type)
        self.res = Resolution(flavor=flavor, guest_type=guest_type)

    @property
    def gt(self) -> GuestType:
        return self.res.guest_type

    def decide(self, path: str, feature: Feature, asked: str | None = None) -> Rule:
        rule, decision = _decision(self.flavor, path, feature, self.gt, asked)
        self.res.decisions.append(decision)
        return rule

    def note(self, path: str, feature: Feature | Check, outcome: Outcome, detail: str) -> None:
        self.res.decisions.append(Decision(path, feature, outcome, detail))

    def run(self) -> Resolution:
        spec, flavor = self.spec, self.flavor
        rule = self.decide("guest_type", feat.GUEST_TYPE[spec.guest_type], spec.guest_type.value)
        if rule.outcome is Outcome.REFUSED:
            return self.res
        self.res.guest_type = GuestType(rule.value or spec.guest_type.value)
        os_type, machine = flavor.os_type[self.gt]
        meta = metadata_element(self.stored, flavor, self.gt)
        self.res.spec_text = meta[0].text or ""
        dom = cfg.Domain(type=flavor.domain_type, name=spec.name, uuid=spec.id, memory_kib=0,
                         os=cfg.Os(type=os_type, machine=machine), description=spec.description or None,
                         metadata=meta)
        self.res.domain = dom
        self._boot(dom)
        self._cpu(dom)
        self._lifecycle(dom)
        devices: list[cfg.Device] = []
        devices += self._disks(dom)
        devices += self._nics()
        video_mib = 0
        gfx, video_mib = self._graphics()
        devices += gfx
        devices += self._consoles()
        devices += self._channel()
        devices += self._balloon()
        dom.devices = devices
        self._memory(dom, video_mib)
        self._vcpus(dom)
        if self.gt is GuestType.HVM:
            dom.features = list(flavor.hvm_features)
        return self.res

    def _boot(self, dom: cfg.Domain) -> None:
        spec = self.spec
        if spec.kernel:
            self.decide("kernel", Feature.BOOT_KERNEL, spec.kernel)
            dom.os.kernel, dom.os.initrd, dom.os.cmdline = spec.kernel, spec.initrd, spec.cmdline
        if spec.bootloader:
            if self.decide("bootloader", Feature.BOOT_BOOTLOADER, spec.bootloader).outcome is Outcome.NATIVE:
                dom.bootloader = spec.bootloader
        if self.gt is not GuestType.HVM and not spec.kernel and not spec.bootloader:
            self.note("kernel", Check.NEEDS_BOOT, Outcome.REFUSED,
                      f"a {self.gt.value} guest needs a kernel or a bootloader")
        if spec.boot and not spec.kernel:
            order = [str(b) for b in spec.boot]  # StrEnum: str() is the value, without the enum property
            rule = self.decide("boot", Feature.BOOT_ORDER, ",".join(order))
            if rule.value == BootOrder.OS:
                dom.os.boot = order

    def _cpu(self, dom: cfg.Domain) -> None:
        cpu = self.spec.cpu
        if cpu is None:
            return
        rule = self.decide("cpu.mode", feat.CPU_MODE[cpu.mode], cpu.mode.value)
        if rule.outcome is Outcome.REFUSED:
            return
        mode = rule.value
        if cpu.features:
            feat_rule = self.decide("cpu.features", Feature.CPU_FEATURES, ",".join(f.name for f in cpu.features))
            if feat_rule.outcome is Outcome.REFUSED:
                return
        if mode is None:
            return
        dom.cpu = cfg.Cpu(mode=mode, model=cpu.model if mode == CpuMode.CUSTOM.value else None,
                          features=[cfg.CpuFeatureConfig(f.name, f.policy.value) for f in cpu.features])

    def _lifecycle(self, dom: cfg.Domain) -> None:
        spec = self.spec
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            action: LifecycleAction = getattr(spec, event)
            feature = (feat.ON_CRASH if event == "on_crash" else feat.LIFECYCLE)[action]
            if self.decide(event, feature, action.value).outcome is not Outcome.REFUSED:
                setattr(dom, event, action.value)

    def _disks(self, dom: cfg.Domain) -> list[cfg.Device]:
        out: list[cfg.Device] = []
        counters: dict[str, int] = {}
        used: dict[str, int] = {}
        needs_scsi = False
        for i, disk in enumerate(self.spec.disks):
            path = f"disks.{i}"
            if disk.device is DiskDevice.FLOPPY:
                rule = self.decide(f"{path}.device", Feature.FLOPPY, "floppy")
                if rule.outcome is Outcome.REFUSED:
                    continue
                bus = rule.value or "fdc"
            else:
                buses = feat.CDROM_BUS if disk.device is DiskDevice.CDROM else feat.DISK_BUS
                rule = self.decide(f"{path}.bus", buses[disk.bus], disk.bus.value)
                if rule.outcome is Outcome.REFUSED:
                    continue
                bus = rule.value or disk.bus.value
            device = disk.device.value
            if disk.device is DiskDevice.CDROM:
                device = self.decide(f"{path}.device", Feature.CDROM_DEVICE, "cdrom").value or device
            prefix = BUS_PREFIX[bus]
            index = counters.get(prefix, 0)
            counters[prefix] = index + 1  # taken even by a drive not rendered now: names stay stable
            if disk.source is None:
                empty = self.decide(f"{path}.source", Feature.CDROM_EMPTY, "empty")
                if empty.outcome is Outcome.TRANSLATED:
                    continue
            if disk.format is DiskFormat.QCOW2:
                driver = self.decide(f"{path}.format", Feature.DISK_FORMAT_QCOW2, "qcow2")
            else:
                driver = self.flavor.rule(feat.RAW_SOURCE[disk.source_type], self.gt)
            if disk.readonly and disk.device is DiskDevice.DISK:
                readonly = self.decide(f"{path}.readonly", feat.READONLY_SOURCE[disk.source_type], "readonly")
                if readonly.outcome is Outcome.REFUSED:
                    continue
            if disk.device is DiskDevice.CDROM:
                cdrom_driver = self.flavor.rule(Feature.CDROM_DRIVER, self.gt)
                if cdrom_driver.value is not None and cdrom_driver.value != driver.value:
                    driver = self.decide(f"{path}.driver", Feature.CDROM_DRIVER, driver.value)
            used[bus] = used.get(bus, 0) + 1
            needs_scsi |= bus == "scsi"
            out.append(cfg.Disk(
                type="block" if disk.source_type is DiskSource.BLOCK else "file", device=device,
                source=disk.source, driver_name=driver.value, driver_type=disk.format.value,
                target_dev=f"{prefix}{_letters(index)}", target_bus=bus, readonly=disk.readonly,
                alias=alias_of(disk.id)))
        for bus, slots in self.flavor.bus_slots.items():
            if used.get(bus, 0) > slots:
                self.note("disks", Check.BUS_SLOTS, Outcome.REFUSED,
                          f"{used[bus]} devices on {bus}, which has {slots} slots; put disks on another bus")
        if needs_scsi:
            out.append(cfg.Controller(type="scsi", model="virtio-scsi", index=0))
        return out

    def _nics(self) -> list[cfg.Device]:
        out: list[cfg.Device] = []
        for i, nic in enumerate(self.spec.nics):
            path = f"nics.{i}"
            model = self.decide(f"{path}.model", feat.NIC_MODEL[nic.model], nic.model.value)
            self.decide(f"{path}.source", feat.NIC_SOURCE[nic.source_type], nic.source)
            mac = nic.mac
            if mac is None:
                mac = mac_for(nic.id, self.flavor.mac_prefix)
                self.note(f"{path}.mac", Check.NIC_MAC, Outcome.NATIVE,
                          f"generated {mac} ({self.flavor.mac_prefix} is {self.flavor.title}'s prefix)")
            link_state = None
            if nic.link is LinkState.DOWN:
                link = self.decide(f"{path}.link", Feature.NIC_LINK_DOWN, "down")
                if link.value == LinkControl.XML:
                    link_state = "down"
                elif link.value == LinkControl.AGENT:
                    self.res.nic_link_down.append(nic.id)
            filterref = None
            if nic.filter:
                if self.decide(f"{path}.filter", Feature.NIC_FILTER, nic.filter).outcome is Outcome.NATIVE:
                    filterref = nic.filter
            out.append(cfg.Interface(
                type="bridge" if nic.source_type is NicSource.BRIDGE else "network", mac=mac, source=nic.source,
                model=model.value, link_state=link_state, filterref=filterref, alias=alias_of(nic.id)))
        return out

    def _graphics(self) -> tuple[list[cfg.Device], int]:
        gfx = self.spec.graphics
        if gfx is None:
            return [], 0
        rule = self.decide("graphics.type", feat.GRAPHICS[gfx.type], gfx.type.value)
        if rule.outcome is Outcome.REFUSED:
            return [], 0
        passwd, listen = None, gfx.listen
        if gfx.password:
            how = self.decide("graphics.password", Feature.GRAPHICS_PASSWORD, "set").value
            if how == GraphicsPassword.XML:
                passwd = gfx.password  # kept where it can be rendered: defence in depth behind the relay
        if _loopback(listen):
            self.decide("graphics.listen", Feature.GRAPHICS_LISTEN, listen)
        else:
            # never an open console [L12]: a network address only where the flavor renders a password, and only
            # with one (the engine also refuses it unless the VM's cluster allows public consoles)
            rule, decision = _decision(self.flavor, "graphics.listen", Feature.GRAPHICS_LISTEN_PUBLIC, self.gt,
                                       listen)
            if rule.outcome is Outcome.REFUSED or passwd is not None:
                self.res.decisions.append(decision)
            else:
                self.note("graphics.listen", Feature.GRAPHICS_LISTEN_PUBLIC, Outcome.REFUSED,
                          f"{listen}: a console on a network address without a password would be open to anyone "
                          f"who reaches the host; set graphics.password, or keep the loopback (consoles are "
                          f"relayed by the agent)")
        out: list[cfg.Device] = [_identify(cfg.Graphics(type=gfx.type.value, listen=listen, passwd=passwd),
                                           gfx.id)]
        video_mib = 0
        if self.gt is GuestType.HVM:
            model, video_mib = self.flavor.video[gfx.type.value]
            out.append(_identify(cfg.Video(model=model, vram_kib=video_mib * 1024, alias=alias_of(gfx.id, "-video")),
                                 gfx.id))
        return out, video_mib

    def _consoles(self) -> list[cfg.Device]:
        out: list[cfg.Device] = []
        targets_taken: set[str] = set()
        serial_port = 0
        for i, con in enumerate(self.spec.consoles):
            path = f"consoles.{i}"
            rule = self.decide(path, feat.CONSOLE[con.kind], con.kind.value)
            if rule.outcome is Outcome.REFUSED:
                continue
            target = rule.value or "serial"
            if target in self.flavor.single_console_targets and target in targets_taken:
                self.note(path, Check.SINGLE_CONSOLE, Outcome.REFUSED,
                          f"this guest already has its single {target} console on {self.flavor.title}")
                continue
            targets_taken.add(target)
            log_rule = self.flavor.rule(Feature.CONSOLE_LOG, self.gt)
            log_file = None
            if log_rule.value == ConsoleLog.VIRTLOGD and self.options.console_log_dir:
                log_file = f"{self.options.console_log_dir}/{self.spec.name}-{con.id}.log"
            if target == "serial" and log_rule.value == ConsoleLog.FILE:
                path = f"{self.options.console_log_dir or '/var/log/corral'}/{self.spec.name}-{con.id}.log"
                out.append(cfg.CharDevice(element="serial", type="file", source_path=path, target_port=serial_port,
                                          alias=alias_of(con.id)))
                serial_port += 1
            elif target == "serial":
                out.append(cfg.CharDevice(element="serial", target_port=serial_port, log_file=log_file,
                                          alias=alias_of(con.id)))
                serial_port += 1
            else:
                out.append(cfg.CharDevice(element="console", target_type=target, log_file=log_file,
                                          alias=alias_of(con.id)))
        if out:
            self.decide("consoles", Feature.CONSOLE_LOG)
        return out

    def _channel(self) -> list[cfg.Device]:
        chan = self.spec.guest_agent
        if chan is None:
            return []
        rule = self.decide("guest_agent", Feature.GUEST_AGENT, "virtio-serial")
        if rule.outcome is Outcome.REFUSED:
            return []
        path = None
        if rule.value == AgentChannel.UNIX_SOCKET:
            path = f"{self.options.channel_dir}/{self.spec.id}.agent"
        return [cfg.CharDevice(element="channel", type="unix", target_type=rule.value, target_name=AGENT_CHANNEL,
                               source_path=path, alias=alias_of(chan.id))]

    def _balloon(self) -> list[cfg.Device]:
        if self.spec.balloon is None:
            return []
        rule = self.decide("balloon", Feature.BALLOON, "virtio")
        if rule.outcome is Outcome.REFUSED:
            return []
        return [cfg.Memballoon(model=rule.value or "virtio", alias=alias_of(self.spec.balloon.id))]

    def _memory(self, dom: cfg.Domain, video_mib: int) -> None:
        spec = self.spec
        minimum = self.flavor.min_memory_mib[self.gt] + video_mib
        if spec.memory_mib < minimum:
            extra = f" ({video_mib} MiB of it video RAM)" if video_mib else ""
            self.note("memory_mib", Check.MEMORY_MINIMUM, Outcome.REFUSED,
                      f"{spec.memory_mib} MiB is below the {minimum} MiB minimum of a {self.gt.value} guest on "
                      f"{self.flavor.title}{extra}")
        max_mib = spec.effective_max_memory_mib
        current = spec.memory_mib
        if max_mib > current:
            rule = self.decide("max_memory_mib", Feature.MEMORY_BALLOON_HEADROOM, f"{current} of {max_mib} MiB")
            if rule.value == MemoryAtStart.AT_MAX_THEN_BALLOON:
                current = max_mib
                self.res.balloon_target_mib = spec.memory_mib
        dom.memory_kib = max_mib * 1024
        dom.current_memory_kib = current * 1024

    def _vcpus(self, dom: cfg.Domain) -> None:
        spec = self.spec
        cap = self.flavor.max_vcpus[self.gt]
        limit, why = cap, f"{self.flavor.title} allows {cap} vCPUs for {self.gt.value} guests"
        if self.options.host_cpus and self.options.host_cpus < cap:
            limit, why = self.options.host_cpus, f"the host has {self.options.host_cpus} CPUs"
        maximum = spec.effective_max_vcpus
        if maximum > limit:
            field_name = "max_vcpus" if spec.max_vcpus else "vcpus"
            self.note(field_name, Check.VCPUS_MAXIMUM, Outcome.REFUSED, f"{maximum} vCPUs asked; {why}")
        if maximum > spec.vcpus:
            self.decide("max_vcpus", Feature.VCPUS_HOTPLUG, f"{spec.vcpus} of {maximum}")
        dom.vcpus = maximum
        dom.current_vcpus = spec.vcpus


def resolve(spec: VmSpec, flavor: Flavor, guest_type: GuestType | None = None,
            options: RenderOptions | None = None) -> Resolution:
    """Decide every field of ``spec`` for ``flavor``; ``guest_type`` overrides the spec's."""
    stored = spec
    if guest_type is not None and guest_type is not spec.guest_type:
        spec = spec.model_copy(update={"guest_type": guest_type})
    return _Walker(spec, flavor, spec.guest_type, options or RenderOptions(), stored).run()


__all__ = ["AGENT_CHANNEL", "ConsoleKind", "RefusedError", "RenderOptions", "Resolution", "mac_for", "resolve"]
