"""What a VM's cloud-init seed holds and how the flavor attaches it: pure functions, no I/O.

A VM with ``cloud_init`` gets cloud-init's NoCloud data source: an ISO 9660 volume labelled ``cidata`` with
``meta-data``, ``user-data`` and ``network-config`` (built by ``corral.agent.cloudinit`` on the VM's host). The
texts are YAML made from the spec alone, in a fixed order, so the same spec gives the same bytes.

``instance-id`` is derived from the VM's id and the data (as Proxmox does): cloud-init runs its per-instance
modules (user, keys, host name, network) again only when the instance id changes, so changing the data makes
the guest apply it at its next boot, and an unchanged seed leaves an installed guest alone. The price is
cloud-init's for a new instance: it also makes new SSH host keys.

The seed device is not a spec device: it has no place in ``disks`` (it cannot be detached, the engine never
stores it), the fixed alias ``ua-cloud-init`` (read back as the device id ``cloud-init``) and a fixed target at
the end of its bus (the bus's last slot, or letter z), so that adding disks never moves it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from corral.domain import config as cfg
from corral.domain.flavors.base import BUS_PREFIX, Decision, Flavor, Outcome
from corral.domain.flavors.features import Feature, SeedDevice
from corral.domain.resolve import Resolution, mac_for
from corral.domain.spec import CloudInitMode, DiskSource, GuestType, VmSpec

SEED_LABEL = "cidata"  # the volume label cloud-init's NoCloud looks for (or CIDATA)
SEED_DEVICE_ID = "cloud-init"
SEED_ALIAS = f"{cfg.ALIAS_PREFIX}{SEED_DEVICE_ID}"
SEED_FILES = ("meta-data", "user-data", "network-config")


@dataclass(frozen=True)
class SeedFiles:
    """The three files of a seed, and a digest of them (which names the seed: equal digests, equal bytes)."""

    meta_data: str
    user_data: str
    network_config: str

    @property
    def files(self) -> dict[str, bytes]:
        return {"meta-data": self.meta_data.encode(), "user-data": self.user_data.encode(),
                "network-config": self.network_config.encode()}

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name, data in self.files.items():
            h.update(f"{name}\0{len(data)}\0".encode() + data)
        return h.hexdigest()


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=False, width=4096)


def default_hostname(name: str) -> str | None:
    """The VM's name as a host name, where it can be one (``_`` becomes ``-``)."""
    host = name.lower().replace("_", "-").strip(".-")
    labels = host.split(".")
    if host and all(label and len(label) <= 63 and label.isascii() and label.replace("-", "").isalnum()
                    and label[0] != "-" and label[-1] != "-" for label in labels):
        return host
    return None


def _network(spec: VmSpec, mac_prefix: str) -> dict[str, Any]:
    """Network config version 2: every NIC matched by its MAC (the names differ by hypervisor: eth0, ens3)."""
    assert spec.cloud_init is not None
    net = spec.cloud_init.network
    ethernets: dict[str, Any] = {}
    for i, nic in enumerate(spec.nics):
        entry: dict[str, Any] = {"match": {"macaddress": nic.mac or mac_for(nic.id, mac_prefix)}}
        if net.mode is CloudInitMode.STATIC:
            if i > 0:
                continue  # one static address, on the first NIC; the others are left to the image
            assert net.address is not None
            entry["addresses"] = [net.address]
            if net.gateway is not None:
                default = "0.0.0.0/0" if ":" not in net.gateway else "::/0"
                entry["routes"] = [{"to": default, "via": net.gateway}]
        else:
            entry["dhcp4"] = True
        if net.dns:
            entry["nameservers"] = {"addresses": list(net.dns)}
        ethernets[f"nic{i}"] = entry
    return {"version": 2, "ethernets": ethernets}


def seed_files(spec: VmSpec, mac_prefix: str) -> SeedFiles | None:
    """The seed of ``spec`` (None without ``cloud_init``); ``mac_prefix`` makes the MAC of a NIC that has none
    yet, as rendering would."""
    ci = spec.cloud_init
    if ci is None:
        return None
    hostname = ci.hostname or default_hostname(spec.name)
    user: dict[str, Any] = {}
    if hostname is not None:
        user["hostname"] = hostname.split(".")[0]
        if "." in hostname:
            user["fqdn"] = hostname
        user["manage_etc_hosts"] = True
    if ci.user is not None:
        user["user"] = ci.user  # renames the image's default user (its groups and sudo rule stay)
    if ci.ssh_authorized_keys:
        user["ssh_authorized_keys"] = list(ci.ssh_authorized_keys)
    user_data = "#cloud-config\n" + (_yaml(user) if user else "")
    network = _yaml(_network(spec, mac_prefix))
    instance = hashlib.sha256("\0".join((spec.id, hostname or "", user_data, network)).encode()).hexdigest()
    meta: dict[str, Any] = {"instance-id": f"corral-{instance[:20]}"}
    if hostname is not None:
        meta["local-hostname"] = hostname
    return SeedFiles(meta_data=_yaml(meta), user_data=user_data, network_config=network)


def _target(flavor: Flavor, bus: str) -> str:
    """The seed's target: the last slot of a bus with few (IDE: hdd), else letter z (sdz, xvdz, vdz)."""
    slots = flavor.bus_slots.get(bus)
    index = min(slots, 26) - 1 if slots else 25
    return f"{BUS_PREFIX[bus]}{chr(ord('a') + index)}"


def seed_device(flavor: Flavor, guest_type: GuestType, devices: list[cfg.Device],
                path: str) -> tuple[Decision, cfg.Disk | None]:
    """How ``flavor`` attaches the seed at ``path`` to a guest whose other devices are ``devices``: the plan's
    decision, and the disk to render (None when refused)."""
    feature = Feature.CLOUD_INIT_SEED
    rule = flavor.rule(feature, guest_type)
    if rule.outcome is Outcome.REFUSED or rule.value is None:
        return Decision("cloud_init", feature, Outcome.REFUSED, rule.reason or "no seed device"), None
    raw_driver = flavor.rule(Feature.DISK_FORMAT_RAW_FILE, guest_type)  # the seed is a file
    if rule.value is SeedDevice.CDROM:
        device, what = "cdrom", "CD-ROM"
        bus = flavor.rule(Feature.CDROM_BUS_AUTO, guest_type).value or "ide"
        driver = flavor.rule(Feature.CDROM_DRIVER, guest_type).value or raw_driver.value
    else:
        device, what = "disk", "read-only disk"
        bus = flavor.rule(Feature.DISK_BUS_AUTO, guest_type).value or "virtio"
        driver = raw_driver.value
    target = _target(flavor, bus)
    taken = next((d for d in devices if isinstance(d, cfg.Disk) and d.target_dev == target), None)
    if taken is not None:
        return Decision("cloud_init", feature, Outcome.REFUSED,
                        f"the cloud-init seed takes {target}, the end of the {bus} bus, which a disk of the VM "
                        f"has; put that disk on another bus"), None
    detail = f"cloud-init seed: {what} {target} ({bus}): {rule.reason}"
    disk = cfg.Disk(type=DiskSource.FILE.value, device=device, source=path, driver_name=driver, driver_type="raw",
                    target_dev=target, target_bus=bus, readonly=True, alias=SEED_ALIAS)
    disk.device_id = SEED_DEVICE_ID
    return Decision("cloud_init", feature, rule.outcome, detail), disk


def add_seed(res: Resolution, spec: VmSpec, path: str) -> None:
    """Add the seed's decision to ``res`` and its device to the domain (after the disks), when ``spec`` has
    cloud-init data."""
    if spec.cloud_init is None or res.domain is None:
        return
    devices = res.domain.devices
    decision, disk = seed_device(res.flavor, res.guest_type, devices, path)
    res.decisions.append(decision)
    if disk is not None:
        last_disk = max((i for i, d in enumerate(devices) if isinstance(d, cfg.Disk)), default=-1)
        devices.insert(last_disk + 1, disk)
