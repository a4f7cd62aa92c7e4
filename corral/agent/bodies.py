"""Request bodies of the agent API that are not a VmSpec, and the spec changes they ask for, checked once for
the agent and the simulator (which must refuse exactly alike), each refusal naming its field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from corral.agent.errors import Conflict, Invalid, NotFound, Unsupported
from corral.domain.flavors.base import Flavor, Outcome
from corral.domain.flavors.features import Feature
from corral.domain.resolve import mac_for
from corral.domain.spec import Device, DiskDevice, DiskSpec, GuestType, LinkState, NicSpec, SpecError, VmSpec


def shutdown_args(data: Any) -> tuple[float, bool]:
    """``{"timeout": seconds, "force": bool}`` (both optional) -> (timeout, force)."""
    body = data or {}
    if not isinstance(body, dict):
        raise Invalid("the body must be an object", field="body")
    timeout = body.get("timeout", 60)
    force = body.get("force", False)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 <= timeout <= 3600:
        raise Invalid("timeout must be a number of seconds between 0 and 3600", field="timeout")
    if not isinstance(force, bool):
        raise Invalid("force must be true or false", field="force")
    return float(timeout), force


def hotplug_args(data: Any) -> tuple[str, dict[str, Any]]:
    """``{"disk": {...}}`` or ``{"nic": {...}}`` -> (kind, device)."""
    if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in ("disk", "nic"):
        raise Invalid("the body must be {\"disk\": {...}} or {\"nic\": {...}}", field="body")
    kind = next(iter(data))
    if not isinstance(data[kind], dict):
        raise Invalid(f"{kind} must be an object", field=kind)
    return kind, data[kind]


@dataclass(frozen=True)
class DeviceChange:
    """A checked ``PATCH /v1/vms/{id}/devices/{device_id}``: what changes and the spec it makes."""

    key: str  # media | link | password
    value: Any
    device: Device
    spec: VmSpec  # the new spec
    section: str  # the spec's part it touches (for the flavor check): disks | nics | graphics


def device_change(vm_name: str, spec: VmSpec, device_id: str, change: dict[str, Any], flavor: Flavor,
                  guest_type: GuestType) -> DeviceChange:
    """Check a device change against the spec (and, for a VNC password, the flavor): the agent applies
    it to libvirt, the simulator to its model; both refuse exactly alike, before anything changes."""
    device = spec.device(device_id)
    if device is None:
        raise NotFound(f"VM {vm_name} has no device {device_id}", field="device_id")
    if len(change) != 1:
        raise Invalid("give exactly one of media, link, password", field="body")
    key, value = next(iter(change.items()))
    if key == "media" and isinstance(device, DiskSpec) and device.device is DiskDevice.CDROM:
        if value is not None and not isinstance(value, str):
            raise Invalid("media must be a path or null", field="media")
        try:
            new_disk = DiskSpec.model_validate({**device.model_dump(), "source": value})
        except ValidationError as exc:
            raise Invalid(f"media: {exc}", field="media") from None
        return DeviceChange(key, value, device, spec.with_device(new_disk), "disks")
    if key == "link" and isinstance(device, NicSpec):
        if value not in ("up", "down"):
            raise Invalid("link must be 'up' or 'down'", field="link")
        return DeviceChange(key, value, device, spec.with_device(device.model_copy(update={"link": LinkState(value)})),
                            "nics")
    if key == "password" and spec.graphics is not None and device.id == spec.graphics.id:
        if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 8):
            raise Invalid("password must be 1-8 characters or null", field="password")
        rule = flavor.rule(Feature.GRAPHICS_PASSWORD, guest_type)
        if rule.outcome is not Outcome.NATIVE:
            raise Unsupported(f"{flavor.title} cannot set a VNC password: {rule.reason}", field="password")
        new_spec = spec.with_device(spec.graphics.model_copy(update={"password": value}))
        return DeviceChange(key, value, device, new_spec, "graphics")
    raise Invalid(f"'{key}' cannot be changed on device {device_id} ({type(device).__name__})", field=key)


def hotplugged(vm_name: str, spec: VmSpec, kind: str, data: dict[str, Any],
               mac_prefix: str) -> tuple[DiskSpec | NicSpec, VmSpec]:
    """The device a hot-plug body describes (a NIC given its MAC) and the spec with it added."""
    try:
        device: DiskSpec | NicSpec = (DiskSpec if kind == "disk" else NicSpec).model_validate(data)
    except ValidationError as exc:
        raise SpecError.from_validation(exc, kind) from None
    if spec.device(device.id) is not None:
        raise Conflict(f"VM {vm_name} already has a device {device.id}", field=f"{kind}.id")
    if isinstance(device, NicSpec) and device.mac is None:
        device = device.model_copy(update={"mac": mac_for(device.id, mac_prefix)})
    update = {"disks": [*spec.disks, device]} if kind == "disk" else {"nics": [*spec.nics, device]}
    new_spec = VmSpec.model_validate({**spec.model_dump(), **{k: [d.model_dump() for d in v]
                                                               for k, v in update.items()}})
    return device, new_spec


def unplugged(vm_name: str, spec: VmSpec, device_id: str) -> tuple[DiskSpec | NicSpec, VmSpec]:
    """The disk or NIC to unplug and the spec without it."""
    device = spec.device(device_id)
    if not isinstance(device, DiskSpec | NicSpec):
        raise NotFound(f"VM {vm_name} has no disk or NIC {device_id}", field="device_id")
    return device, VmSpec.model_validate({
        **spec.model_dump(),
        "disks": [d.model_dump() for d in spec.disks if d.id != device_id],
        "nics": [n.model_dump() for n in spec.nics if n.id != device_id]})


def with_memory(spec: VmSpec, memory_mib: int) -> VmSpec:
    """A new balloon target, within the VM's maximum (which the spec then states)."""
    if not 1 <= memory_mib <= spec.effective_max_memory_mib:
        raise Invalid(f"memory_mib must be between 1 and the VM's max ({spec.effective_max_memory_mib})",
                      field="memory_mib")
    return spec.model_copy(update={"memory_mib": memory_mib, "max_memory_mib": spec.effective_max_memory_mib})


def with_vcpus(spec: VmSpec, vcpus: int) -> VmSpec:
    """A new count of online vCPUs, within the VM's maximum (which the spec then states)."""
    if not 1 <= vcpus <= spec.effective_max_vcpus:
        raise Invalid(f"vcpus must be between 1 and the VM's max_vcpus ({spec.effective_max_vcpus})",
                      field="vcpus")
    return spec.model_copy(update={"vcpus": vcpus, "max_vcpus": spec.effective_max_vcpus})
