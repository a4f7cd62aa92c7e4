"""Cloud-init data in a VmSpec (refused by field), the NoCloud files made of it, and how each flavor attaches
the seed: a CD-ROM everywhere (IDE hdd on KVM and Xen HVM, a PV CD-ROM xvdz on Xen PV), at a fixed target (issue 12)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from corral.domain import config as cfg
from corral.domain.cloudinit import SEED_ALIAS, SEED_DEVICE_ID, add_seed, default_hostname, seed_files
from corral.domain.flavors import get_flavor
from corral.domain.flavors.base import Outcome
from corral.domain.flavors.features import Feature
from corral.domain.read import match_devices
from corral.domain.resolve import resolve
from corral.domain.spec import SpecError, VmSpec, parse_spec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxt6G9g+a8LegMBJ+yAwHL9mOGHCiLG2pPmu0OuwuJ3 alice@laptop"
RSA_BLOB = base64.b64encode(len(b"ssh-rsa").to_bytes(4, "big") + b"ssh-rsa" + b"\x00" * 16).decode()
SEED = "/var/lib/corral/cloud-init/x/cidata.iso"
MAC = "52:54:00:12:34:56"


def vm(cloud_init: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {"name": "web1", "memory_mib": 256, "nics": [{"source": "br0", "mac": MAC}], "cloud_init": cloud_init,
            **extra}


INVALID = [
    ("user-upper", {"user": "Alice"}, "cloud_init.user"),
    ("user-root", {"user": "root"}, "cloud_init.user"),
    ("user-space", {"user": "a b"}, "cloud_init.user"),
    ("hostname-underscore", {"hostname": "web_1"}, "cloud_init.hostname"),
    ("hostname-dash-end", {"hostname": "web-"}, "cloud_init.hostname"),
    ("hostname-long-label", {"hostname": "a" * 64}, "cloud_init.hostname"),
    ("key-not-a-key", {"ssh_authorized_keys": ["hello"]}, "cloud_init.ssh_authorized_keys.0"),
    ("key-private", {"ssh_authorized_keys": [KEY, "-----BEGIN OPENSSH PRIVATE KEY----- b3Blb"]},
     "cloud_init.ssh_authorized_keys.1"),
    ("key-type-mismatch", {"ssh_authorized_keys": [f"ssh-ed25519 {RSA_BLOB}"]}, "cloud_init.ssh_authorized_keys.0"),
    ("key-options", {"ssh_authorized_keys": [f'from="10.0.0.1" {KEY}']}, "cloud_init.ssh_authorized_keys.0"),
    ("key-two-lines", {"ssh_authorized_keys": [f"{KEY}\n{KEY}"]}, "cloud_init.ssh_authorized_keys.0"),
    ("key-bad-base64", {"ssh_authorized_keys": ["ssh-ed25519 AAAA$$$"]}, "cloud_init.ssh_authorized_keys.0"),
    ("password", {"password": "secret"}, "cloud_init.password"),
    ("static-no-address", {"network": {"mode": "static"}}, "cloud_init.network.address"),
    ("static-no-prefix", {"network": {"mode": "static", "address": "10.0.0.5"}}, "cloud_init.network.address"),
    ("dhcp-with-address", {"network": {"mode": "dhcp", "address": "10.0.0.5/24"}}, "cloud_init.network.address"),
    ("dhcp-with-gateway", {"network": {"gateway": "10.0.0.1"}}, "cloud_init.network.gateway"),
    ("gateway-version", {"network": {"mode": "static", "address": "10.0.0.5/24", "gateway": "fe80::1"}},
     "cloud_init.network.gateway"),
    ("dns-not-ip", {"network": {"dns": ["dns.example"]}}, "cloud_init.network.dns"),
    ("mode-unknown", {"network": {"mode": "ppp"}}, "cloud_init.network.mode"),
]


@pytest.mark.parametrize(("data", "path"), [(d, p) for _, d, p in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_cloud_init_is_refused_by_field(data: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(vm(data))
    assert err.value.field == path, err.value.errors


def test_valid_cloud_init_is_normalised() -> None:
    spec = parse_spec(vm({"user": "alice", "ssh_authorized_keys": [f"  {KEY}  "], "hostname": "Web1.Example.com.",
                          "network": {"mode": "static", "address": "10.0.0.5/24", "gateway": "10.0.0.1",
                                      "dns": ["1.1.1.1", "2606:4700:4700::1111"]}}))
    ci = spec.cloud_init
    assert ci is not None
    assert ci.hostname == "web1.example.com" and ci.ssh_authorized_keys == [KEY]
    assert ci.network.address == "10.0.0.5/24"
    assert VmSpec.model_validate(spec.model_dump(mode="json")) == spec  # what the engine stores comes back


def test_seed_files_dhcp_default_user_and_hostname_from_the_vm_name() -> None:
    files = seed_files(parse_spec(vm({"user": "alice", "ssh_authorized_keys": [KEY]}, name="web_1")), "52:54:00")
    assert files is not None
    assert files.user_data.startswith("#cloud-config\n")
    user = yaml.safe_load(files.user_data)
    assert user == {"hostname": "web-1", "manage_etc_hosts": True, "user": "alice", "ssh_authorized_keys": [KEY]}
    meta = yaml.safe_load(files.meta_data)
    assert meta["local-hostname"] == "web-1" and meta["instance-id"].startswith("corral-")
    net = yaml.safe_load(files.network_config)
    assert net == {"version": 2, "ethernets": {"nic0": {"match": {"macaddress": MAC}, "dhcp4": True}}}


def test_seed_files_static_network_on_the_first_nic_and_fqdn() -> None:
    data = vm({"hostname": "db.example.com", "network": {"mode": "static", "address": "192.0.2.10/24",
                                                          "gateway": "192.0.2.1", "dns": ["192.0.2.53"]}})
    data["nics"].append({"source": "br1", "mac": "52:54:00:00:00:02"})
    files = seed_files(parse_spec(data), "52:54:00")
    assert files is not None
    user = yaml.safe_load(files.user_data)
    assert user["hostname"] == "db" and user["fqdn"] == "db.example.com" and "user" not in user
    assert yaml.safe_load(files.meta_data)["local-hostname"] == "db.example.com"
    net = yaml.safe_load(files.network_config)
    assert net["ethernets"] == {"nic0": {"match": {"macaddress": MAC}, "addresses": ["192.0.2.10/24"],
                                         "routes": [{"to": "0.0.0.0/0", "via": "192.0.2.1"}],
                                         "nameservers": {"addresses": ["192.0.2.53"]}}}


def test_instance_id_follows_the_data_and_the_vm() -> None:
    a = parse_spec(vm({"ssh_authorized_keys": [KEY]}))
    same = seed_files(a, "52:54:00")
    assert same == seed_files(a.model_copy(), "52:54:00")
    changed = seed_files(a.model_copy(update={"cloud_init": a.cloud_init.model_copy(  # type: ignore[union-attr]
        update={"hostname": "other"})}), "52:54:00")
    other_vm = seed_files(a.model_copy(update={"id": "00000000-0000-4000-8000-000000000001"}), "52:54:00")
    ids = {yaml.safe_load(f.meta_data)["instance-id"] for f in (same, changed, other_vm) if f is not None}
    assert len(ids) == 3
    assert same is not None and changed is not None and same.digest != changed.digest
    assert seed_files(parse_spec(vm(None)), "52:54:00") is None


def test_default_hostname() -> None:
    assert default_hostname("Web_1") == "web-1"
    assert default_hostname("a.b") == "a.b"
    assert default_hostname("-.-") is None
    assert default_hostname("x" * 64) is None


@pytest.mark.parametrize(("flavor", "guest_type", "device", "target", "bus", "driver"), [
    ("kvm", "hvm", "cdrom", "hdd", "ide", "qemu"),
    ("xen", "hvm", "cdrom", "hdd", "ide", "qemu"),
    ("xen", "pv", "cdrom", "xvdz", "xen", "qemu"),
    ("xen", "pvh", "cdrom", "xvdz", "xen", "qemu"),
])
def test_each_flavor_attaches_the_seed_its_way(flavor: str, guest_type: str, device: str, target: str, bus: str,
                                               driver: str) -> None:
    extra = {"kernel": "/boot/vmlinuz"} if guest_type != "hvm" else {}
    spec = parse_spec(vm({}, guest_type=guest_type, disks=[{"source": "/img/a.raw"}], **extra))
    res = resolve(spec, get_flavor(flavor))
    add_seed(res, spec, SEED)
    assert res.domain is not None and not res.refused
    disks = [d for d in res.domain.devices if isinstance(d, cfg.Disk)]
    seed = disks[-1]
    assert (seed.device, seed.target_dev, seed.target_bus, seed.driver_name, seed.driver_type) == \
        (device, target, bus, driver, "raw")
    assert seed.readonly and seed.source == SEED and seed.alias == SEED_ALIAS
    decision = next(d for d in res.decisions if d.path == "cloud_init")
    assert decision.feature == Feature.CLOUD_INIT_SEED and decision.outcome is not Outcome.REFUSED
    assert decision.detail.startswith("cloud-init seed: ") and target in decision.detail
    xml = res.domain.to_xml()
    assert SEED in xml and "ua-cloud-init" in xml


def test_the_seed_is_read_back_as_the_cloud_init_device_not_a_spec_disk() -> None:
    spec = parse_spec(vm({}, disks=[{"source": "/img/a.raw"}]))
    res = resolve(spec, get_flavor("xen"), None)
    add_seed(res, spec, SEED)
    assert res.domain is not None
    live = cfg.Domain.from_xml(res.domain.to_xml()).devices
    for dev in live:  # libxl drops aliases: the fixed target still names it
        dev.alias = None
    found = {d.config.target_dev: d.device_id for d in match_devices(live, res.domain.devices)
             if isinstance(d.config, cfg.Disk)}
    assert found == {"hda": spec.disks[0].id, "hdd": SEED_DEVICE_ID}
    assert all(d.id != SEED_DEVICE_ID for d in spec.devices())


def test_no_cloud_init_no_seed_and_a_taken_target_is_refused_by_field() -> None:
    plain = parse_spec(vm(None))
    res = resolve(plain, get_flavor("kvm"))
    add_seed(res, plain, SEED)
    assert res.domain is not None and not any(isinstance(d, cfg.Disk) for d in res.domain.devices)
    assert not any(d.path == "cloud_init" for d in res.decisions)
    four = parse_spec(vm({}, disks=[{"source": f"/img/{i}.raw", "bus": "ide"} for i in range(4)]))
    res = resolve(four, get_flavor("kvm"))
    add_seed(res, four, SEED)
    refused = [d for d in res.refused if d.path == "cloud_init"]
    assert refused and "hdd" in refused[0].detail
