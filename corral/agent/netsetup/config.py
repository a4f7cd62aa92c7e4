"""The desired host network configuration (``PUT /v1/host/network``, issue 18), checked before anything changes.

A config says what the host should carry: logical networks (each a Linux bridge named by
``corral.domain.netnames.bridge_for``, over an uplink NIC or bond, tagged or not) and bonds. It says nothing about
interfaces it does not name; the netlink code (``corral.agent.netsetup.apply``) leaves those alone. Every
inconsistency is refused here, naming the field, so that a change is never half-applied for a reason that could
have been known before (two untagged networks on one uplink, a bond member that is also an uplink, ...).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.agent.errors import Invalid
from corral.domain.netnames import IFNAMSIZ, NETWORK_NAME_RE, bridge_for, is_network_bridge

# Linux interface names the agent accepts for uplinks, bond members and bonds: no '/', ':', spaces or dots
# (a dot is how the agent names the VLAN sub-interfaces it makes)
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,14}\Z")
BOND_MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb")
DEFAULT_MTU = 1500
DEFAULT_ROLLBACK_SECONDS = 120


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    vlan: int | None = Field(None, ge=1, le=4094)
    mtu: int = Field(DEFAULT_MTU, ge=68, le=65535)
    uplink: str | None = None
    address: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NETWORK_NAME_RE.match(value):
            raise ValueError("a network name is 1-50 letters, digits, '_' or '-', starting with a letter or digit")
        return value

    @field_validator("uplink")
    @classmethod
    def _uplink(cls, value: str | None) -> str | None:
        if value is not None and not IFNAME_RE.match(value):
            raise ValueError(f"not an interface name: {value!r}")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "/" not in value:
            raise ValueError("an address with its prefix length, e.g. 10.0.0.5/24")
        try:
            return str(ipaddress.ip_interface(value))
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _vlan_needs_uplink(self) -> NetworkConfig:
        if self.vlan is not None and self.uplink is None:
            raise ValueError("a network with a VLAN needs an uplink (the NIC or bond that carries the tag)")
        return self

    @property
    def bridge(self) -> str:
        return bridge_for(self.name, self.vlan)


class BondConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    mode: Literal["balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb",
                  "balance-alb"] = "active-backup"
    members: list[str] = Field(min_length=1, max_length=16)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not IFNAME_RE.match(value):
            raise ValueError(f"not an interface name: {value!r}")
        return value

    @field_validator("members")
    @classmethod
    def _members(cls, value: list[str]) -> list[str]:
        for member in value:
            if not IFNAME_RE.match(member):
                raise ValueError(f"not an interface name: {member!r}")
        if len(set(value)) != len(value):
            raise ValueError("a member is named twice")
        return value


class HostNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    networks: list[NetworkConfig] = Field(default_factory=list, max_length=256)
    bonds: list[BondConfig] = Field(default_factory=list, max_length=64)
    rollback_seconds: int = Field(DEFAULT_ROLLBACK_SECONDS, ge=1, le=3600)

    def stored(self) -> dict[str, Any]:
        """The JSON kept in the state dir and answered by ``GET /v1/host/network``."""
        return self.model_dump(mode="json")


def vlan_ifname(uplink: str, vlan: int) -> str:
    """``<uplink>.<vlan>`` (``eth1.100``), as ``ip`` and every distribution name them; where that passes Linux's 15
    characters, ``cv-<8 hex of the pair>.<vlan>`` -- still telling the tag, and the same on every apply."""
    name = f"{uplink}.{vlan}"
    if len(name) <= IFNAMSIZ:
        return name
    digest = hashlib.sha256(f"{uplink}.{vlan}".encode()).hexdigest()[:IFNAMSIZ - len(f"cv-.{vlan}")]
    return f"cv-{digest}.{vlan}"


def _check(config: HostNetConfig) -> None:
    """The rules that span several entries, each refused naming the field."""
    bonds = {b.name: i for i, b in enumerate(config.bonds)}
    if len(bonds) != len(config.bonds):
        raise Invalid("a bond is named twice", field="bonds")
    members: dict[str, str] = {}
    for i, bond in enumerate(config.bonds):
        for member in bond.members:
            if member in members:
                raise Invalid(f"{member} is a member of bonds {members[member]} and {bond.name}",
                              field=f"bonds.{i}.members")
            if member in bonds:
                raise Invalid(f"{member} is a bond: a bond cannot be a member", field=f"bonds.{i}.members")
            members[member] = bond.name
    names: set[str] = set()
    untagged: dict[str, str] = {}
    tagged: dict[tuple[str, int], str] = {}
    for i, net in enumerate(config.networks):
        if net.name in names:
            raise Invalid(f"network {net.name} is named twice", field=f"networks.{i}.name")
        names.add(net.name)
        if net.uplink is None:
            continue
        if net.uplink in members:
            raise Invalid(f"{net.uplink} is a member of bond {members[net.uplink]}: name the bond as the uplink",
                          field=f"networks.{i}.uplink")
        if net.vlan is None:
            if net.uplink in untagged:
                raise Invalid(f"{net.uplink} already carries untagged network {untagged[net.uplink]}: a NIC or "
                              "bond is the port of one bridge only", field=f"networks.{i}.uplink")
            untagged[net.uplink] = net.name
        else:
            key = (net.uplink, net.vlan)
            if key in tagged:
                raise Invalid(f"VLAN {net.vlan} on {net.uplink} already carries network {tagged[key]}",
                              field=f"networks.{i}.vlan")
            tagged[key] = net.name
    for i, bond in enumerate(config.bonds):
        if is_network_bridge(bond.name):
            raise Invalid(f"{bond.name} is a name of Corral's network bridges", field=f"bonds.{i}.name")
    for i, net in enumerate(config.networks):
        if net.uplink is not None and is_network_bridge(net.uplink):
            raise Invalid(f"{net.uplink} is a network's bridge, not a NIC or bond", field=f"networks.{i}.uplink")


def parse_config(data: Any) -> HostNetConfig:
    """The body of ``PUT /v1/host/network`` (or a stored config), checked whole: 422 naming the first bad field."""
    if not isinstance(data, dict):
        raise Invalid("the body must be an object: {networks, bonds, rollback_seconds}", field="body")
    try:
        config = HostNetConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise Invalid(f"{where}: {err['msg']}", field=where or "body") from None
    _check(config)
    return config
