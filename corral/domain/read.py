"""Live domain XML -> devices with identities.

libxl drops automatic aliases and addresses, so a device is identified, in order of trust: by its user
alias ``ua-<id>``; else a NIC by MAC and a disk by target dev or source path; else graphics, consoles,
channels and balloons by type and order. The spec to match against comes from the caller or from the
Corral metadata that the domain carries itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from corral.domain import config as cfg
from corral.domain.flavors import UnknownFlavor, flavor_for_domain_type, get_flavor
from corral.domain.resolve import resolve
from corral.domain.spec import GuestType, VmSpec


@dataclass
class LiveDevice:
    kind: str
    config: cfg.Device
    device_id: str | None = None
    matched_by: str = "none"

    @property
    def key(self) -> str:
        """A natural key that names the device even without an identity."""
        c = self.config
        if isinstance(c, cfg.Interface):
            return f"mac:{c.mac}"
        if isinstance(c, cfg.Disk):
            return f"target:{c.target_dev}"
        if isinstance(c, cfg.CharDevice):
            return f"{c.element}:{c.target_type or 'serial'}:{c.target_port or 0}"
        return self.kind

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {"kind": self.kind, "id": self.device_id, "matched_by": self.matched_by,
                               "key": self.key, "alias": c.alias}
        if isinstance(c, cfg.Disk):
            out.update(source=c.source, target=c.target_dev, bus=c.target_bus, format=c.driver_type,
                       driver=c.driver_name, readonly=c.readonly)
        elif isinstance(c, cfg.Interface):
            out.update(mac=c.mac, source=c.source, model=c.model, link=c.link_state or "up", vif=c.target_dev,
                       filter=c.filterref)
        elif isinstance(c, cfg.Graphics):
            out.update(type=c.type, listen=c.listen, port=c.port, password_set=bool(c.passwd))
        elif isinstance(c, cfg.CharDevice):
            out.update(element=c.element, type=c.type, target_type=c.target_type, name=c.target_name,
                       path=c.source_path or c.tty, log=c.log_file)
        elif isinstance(c, (cfg.Memballoon, cfg.Video)):
            out.update(model=c.model)
        elif isinstance(c, cfg.Controller):
            out.update(type=c.type, model=c.model)
        elif isinstance(c, cfg.OtherDevice):
            out.update(element=c.element, type=c.type)
        return out


@dataclass
class CorralMetadata:
    spec: VmSpec
    flavor: str
    guest_type: GuestType


def _kind(dev: cfg.Device) -> str:
    if isinstance(dev, cfg.Disk):
        return dev.device
    if isinstance(dev, cfg.Interface):
        return "nic"
    if isinstance(dev, cfg.CharDevice):
        return dev.element
    if isinstance(dev, cfg.OtherDevice):
        return dev.element
    return {cfg.Graphics: "graphics", cfg.Memballoon: "balloon", cfg.Video: "video",
            cfg.Controller: "controller"}.get(type(dev), "other")


def read_metadata(dom: cfg.Domain) -> CorralMetadata | None:
    """The VmSpec Corral stored in the domain, or None for a domain Corral did not create."""
    meta = dom.metadata
    if meta is None:
        return None
    node = meta.find(f"{{{cfg.CORRAL_NS}}}vm")
    spec_node = node.find(f"{{{cfg.CORRAL_NS}}}spec") if node is not None else None
    if node is None or spec_node is None:
        return None
    try:
        spec = VmSpec.model_validate(json.loads(spec_node.text or "{}"))
        return CorralMetadata(spec=spec, flavor=node.get("flavor", "kvm"),
                              guest_type=GuestType(node.get("guest-type", spec.guest_type.value)))
    except (ValueError, ValidationError) as exc:
        raise cfg.XmlError("metadata/corral:vm", f"unreadable Corral spec: {exc}") from None


def _group(dev: cfg.Device) -> tuple[str, str | None]:
    if isinstance(dev, cfg.CharDevice):
        return dev.element, dev.target_type if dev.element != "channel" else dev.target_name
    if isinstance(dev, cfg.Graphics):
        return "graphics", dev.type
    return _kind(dev), None


def match_devices(live: list[cfg.Device], expected: list[cfg.Device]) -> list[LiveDevice]:
    """Give each live device the identity of the expected (rendered) device it is."""
    result = [LiveDevice(kind=_kind(d), config=d) for d in live]
    prefix = cfg.ALIAS_PREFIX
    ident = {id(e): e.device_id or (e.alias or "")[len(prefix):] for e in expected
             if e.device_id or (e.alias and e.alias.startswith(prefix))}
    pending = list(expected)

    def take(item: LiveDevice, exp: cfg.Device, how: str) -> None:
        item.device_id = ident.get(id(exp))
        item.matched_by = how
        pending[:] = [e for e in pending if e is not exp]

    by_alias = {e.alias: e for e in expected if e.alias}
    for item in result:
        exp = by_alias.get(item.config.alias) if item.config.alias else None
        if exp is not None and any(e is exp for e in pending):
            take(item, exp, "alias")
    # Every target dev before any source path: a disk whose target matches must not lose its identity to
    # another disk sharing its source (the same ISO twice) that libvirt happened to list first.
    for how in ("mac", "target", "source"):
        for item in result:
            if item.matched_by != "none":
                continue
            c = item.config
            for exp in list(pending):
                if how == "mac" and isinstance(c, cfg.Interface) and isinstance(exp, cfg.Interface) \
                        and c.mac and c.mac == exp.mac:
                    take(item, exp, how)
                    break
                if isinstance(c, cfg.Disk) and isinstance(exp, cfg.Disk) and how != "mac":
                    mine, theirs = (c.target_dev, exp.target_dev) if how == "target" else (c.source, exp.source)
                    if mine and mine == theirs:
                        take(item, exp, how)
                        break
    for item in result:
        if item.matched_by != "none" or isinstance(item.config, cfg.Disk | cfg.Interface):
            continue
        group = _group(item.config)
        exp = next((e for e in pending if _group(e) == group), None)
        if exp is not None:
            take(item, exp, "order")
    return result


def read_domain(xml: str | bytes, spec: VmSpec | None = None, flavor: str | None = None,
                guest_type: GuestType | None = None) -> tuple[cfg.Domain, list[LiveDevice]]:
    """Parse live XML and identify its devices against ``spec`` (default: the spec in its metadata)."""
    dom = cfg.Domain.from_xml(xml)
    meta = read_metadata(dom)
    if spec is None and meta is not None:
        spec = meta.spec
    if spec is None:
        return dom, [LiveDevice(kind=_kind(d), config=d) for d in dom.devices]
    flavor_name = flavor or (meta.flavor if meta else None)
    by_type = flavor_for_domain_type(dom.type)
    try:
        fl = by_type if flavor_name is None else get_flavor(flavor_name, accel=by_type.accel or "kvm")
    except UnknownFlavor as exc:
        raise cfg.XmlError("metadata/corral:vm", str(exc)) from None
    gt = guest_type or (meta.guest_type if meta else None)
    res = resolve(spec, fl, gt)
    expected = res.domain.devices if res.domain is not None else []
    return dom, match_devices(dom.devices, expected)


def read_devices(xml: str | bytes, spec: VmSpec | None = None) -> list[LiveDevice]:
    return read_domain(xml, spec)[1]
