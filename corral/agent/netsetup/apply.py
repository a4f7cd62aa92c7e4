"""Making the host's links match a ``HostNetConfig`` through netlink (pyroute2), and reading them back.

What Corral makes -- network bridges, VLAN sub-interfaces, bonds -- carries the interface alias ``corral ...``
(``IFLA_IFALIAS``, kept by the kernel): that is how a later apply knows what it may change or delete, without
trusting a file that a reboot would leave stale. Everything else on the host is the operator's and is left alone,
except the NICs a config names as uplinks or bond members: those are enslaved, their MTU raised to what their
networks need and set up; their MTU and up/down state from before are kept in ``originals`` (a JSON file in the
agent's state dir) and given back when no config uses them any more.

An apply compares first and changes only what differs, so applying the same config twice changes nothing (the
second apply returns no change). The order keeps every step valid for the kernel: bonds before what sits on them,
a NIC's MTU raised before its VLAN's and lowered after it.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from corral.agent.errors import AgentError, Conflict, Invalid, Unsupported
from corral.agent.netsetup.config import BOND_MODES, HostNetConfig, vlan_ifname

MARK = "corral"  # the start of the alias of every interface Corral made
_KERNEL_FEATURE = {"vlan": "8021q (VLAN sub-interfaces)", "bond": "bonding", "bridge": "bridge"}


class NetlinkFailed(AgentError):
    """The kernel refused a change (its errno and message are in the answer)."""

    status, code = 502, "netlink"


@dataclass
class Link:
    index: int
    name: str
    kind: str | None  # bridge, vlan, bond, veth, ... None for a plain NIC
    mtu: int
    up: bool
    master: int | None
    alias: str
    vlan_id: int | None = None
    parent: int | None = None  # a VLAN's lower device
    bond_mode: str | None = None

    @property
    def ours(self) -> bool:
        return self.alias.startswith(MARK)


def _link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    vlan_id = bond_mode = None
    if kind == "vlan" and data is not None:
        vlan_id = data.get_attr("IFLA_VLAN_ID")
    if kind == "bond" and data is not None:
        mode = data.get_attr("IFLA_BOND_MODE")
        bond_mode = BOND_MODES[mode] if isinstance(mode, int) and 0 <= mode < len(BOND_MODES) else str(mode)
    return Link(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"), kind=kind, mtu=msg.get_attr("IFLA_MTU"),
                up=bool(msg["flags"] & 1), master=msg.get_attr("IFLA_MASTER") or None,
                alias=msg.get_attr("IFLA_IFALIAS") or "", vlan_id=vlan_id,
                parent=msg.get_attr("IFLA_LINK") if kind == "vlan" else None, bond_mode=bond_mode)


@dataclass
class _Want:
    """The links a config asks for, by name."""

    bonds: dict[str, tuple[str, list[str]]]  # name -> (mode, members)
    bridges: dict[str, tuple[int, str | None, list[str]]]  # bridge -> (mtu, port, addresses)
    vlans: dict[str, tuple[str, int, int]]  # name -> (uplink, id, mtu)
    uplink_mtu: dict[str, int]  # NIC or bond -> the largest MTU of the networks over it
    where: dict[str, str]  # interface -> the config's field that asks for it (named in refusals)

    @classmethod
    def of(cls, config: HostNetConfig) -> _Want:
        want = cls({b.name: (b.mode, list(b.members)) for b in config.bonds}, {}, {}, {}, {})
        for i, bond in enumerate(config.bonds):
            want.where[bond.name] = f"bonds.{i}.name"
            want.where.update({m: f"bonds.{i}.members" for m in bond.members})
        for i, net in enumerate(config.networks):
            port = net.uplink
            if net.uplink is not None and net.vlan is not None:
                port = vlan_ifname(net.uplink, net.vlan)
                want.vlans[port] = (net.uplink, net.vlan, net.mtu)
                want.where[port] = f"networks.{i}.vlan"
            if net.uplink is not None:
                want.uplink_mtu[net.uplink] = max(net.mtu, want.uplink_mtu.get(net.uplink, 0))
                want.where.setdefault(net.uplink, f"networks.{i}.uplink")
            want.bridges[net.bridge] = (net.mtu, port, [net.address] if net.address else [])
            want.where[net.bridge] = f"networks.{i}.name"
        return want

    def nics(self) -> set[str]:
        """The interfaces not made by Corral that this config uses: uplinks that are no bond, bond members."""
        members = {m for _, ms in self.bonds.values() for m in ms}
        return members | {u for u in self.uplink_mtu if u not in self.bonds}


class NetApplier:
    """Applies configs to one network namespace: the host's (``netns=None``) or a named one (``ip netns``, tests)."""

    def __init__(self, netns: str | None, originals: Path) -> None:
        self.netns = netns
        self.originals_path = originals
        self.lock = threading.Lock()

    @contextmanager
    def _ipr(self) -> Iterator[IPRoute]:
        if self.netns is None:
            ipr = IPRoute()
        else:
            if not os.path.exists(f"/run/netns/{self.netns}"):
                raise Unsupported(f"network namespace {self.netns!r} does not exist (setting netns)", field="netns")
            ipr = NetNS(self.netns, flags=0)  # never created here: a typo must not make an empty namespace
        try:
            yield ipr
        finally:
            ipr.close()

    # -- reading ------------------------------------------------------------------------------------------

    def _links(self, ipr: IPRoute) -> dict[str, Link]:
        return {link.name: link for link in (_link(m) for m in ipr.get_links())}

    @staticmethod
    def _addresses(ipr: IPRoute) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS") if msg["family"] == 10 else msg.get_attr("IFA_LOCAL")
            if addr is None:
                continue
            iface = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}")
            if iface.is_link_local:
                continue  # the kernel's own fe80:: (and 169.254/16): not a configured address
            out.setdefault(msg["index"], []).append(str(iface))
        return out

    def live(self) -> dict[str, Any]:
        """The host's links as netlink shows them: bridges with their ports, VLANs, bonds with their members, the
        rest; each with MTU, state, addresses and whether Corral made it (``managed``)."""
        with self.lock, self._ipr() as ipr:
            links = self._links(ipr)
            addrs = self._addresses(ipr)
        by_index = {link.index: link for link in links.values()}

        def base(link: Link) -> dict[str, Any]:
            master = by_index.get(link.master) if link.master else None
            return {"name": link.name, "mtu": link.mtu, "state": "up" if link.up else "down",
                    "master": master.name if master else None, "addresses": sorted(addrs.get(link.index, [])),
                    "managed": link.ours}

        def under(link: Link) -> list[str]:
            return sorted(x.name for x in links.values() if x.master == link.index)

        out: dict[str, list[dict[str, Any]]] = {"bridges": [], "vlans": [], "bonds": [], "nics": []}
        for link in sorted(links.values(), key=lambda x: x.name):
            if link.kind == "bridge":
                out["bridges"].append({**base(link), "ports": under(link)})
            elif link.kind == "vlan":
                parent = by_index.get(link.parent) if link.parent else None
                out["vlans"].append({**base(link), "id": link.vlan_id, "parent": parent.name if parent else None})
            elif link.kind == "bond":
                out["bonds"].append({**base(link), "mode": link.bond_mode, "members": under(link)})
            elif link.name != "lo":
                out["nics"].append({**base(link), "kind": link.kind})
        return out

    # -- applying -----------------------------------------------------------------------------------------

    def apply(self, config: HostNetConfig, *, force: bool = False) -> list[str]:
        """Make the namespace's links match ``config``; returns the changes made (none when it already did).

        A network bridge that a config drops while guests' NICs are plugged into it is refused (409), unless
        ``force`` (a rollback: the last good config wins over what was started meanwhile)."""
        with self.lock, self._ipr() as ipr:
            run = _Run(ipr, self._load_originals())
            try:
                run.apply(_Want.of(config), force)
            finally:
                self._save_originals(run.originals)
            return run.changes

    def _load_originals(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.originals_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_originals(self, originals: dict[str, dict[str, Any]]) -> None:
        tmp = self.originals_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(originals, fh)
        tmp.replace(self.originals_path)


class _Run:
    """One apply: the links as they are, the changes made so far, and the NICs' original settings."""

    def __init__(self, ipr: IPRoute, originals: dict[str, dict[str, Any]]) -> None:
        self.ipr = ipr
        self.originals = originals
        self.changes: list[str] = []
        self.links: dict[str, Link] = {}

    def _refresh(self) -> None:
        self.links = {link.name: link for link in (_link(m) for m in self.ipr.get_links())}

    def _call(self, what: str, feature: str | None, *args: Any, **kwargs: Any) -> None:
        """One link request; the kernel's refusal becomes an answer naming what was being done (``feature``:
        the kernel feature it needs, named when the kernel lacks it)."""
        self._do(what, feature, self.ipr.link, *args, **kwargs)

    def _addr(self, what: str, *args: Any, **kwargs: Any) -> None:
        self._do(what, None, self.ipr.addr, *args, **kwargs)

    def _do(self, what: str, feature: str | None, request: Any, *args: Any, **kwargs: Any) -> None:
        try:
            request(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP and feature in _KERNEL_FEATURE:
                raise Unsupported(f"{what}: this host's kernel has no {_KERNEL_FEATURE[feature]} support",
                                  field=feature) from None
            raise NetlinkFailed(f"{what}: {os.strerror(exc.code) if exc.code else exc}", errno=exc.code) from None
        self.changes.append(what)

    def _idx(self, name: str) -> int:
        return self.links[name].index

    def apply(self, want: _Want, force: bool) -> None:
        self._refresh()
        self._check(want, force)
        self._remove_stale(want)
        self._refresh()
        for name, (mode, members) in want.bonds.items():
            self._bond(name, mode, members)
        for name in want.bridges:
            if name not in self.links:
                self._create(name, "bridge", f"{MARK} network bridge")
        for name, (uplink, vlan, _mtu) in want.vlans.items():
            if name not in self.links:
                self._create(name, "vlan", f"{MARK} vlan", link=self._idx(uplink), vlan_id=vlan)
        for bridge, (_mtu, port, _addresses) in want.bridges.items():
            if port is not None and self.links[port].master != self._idx(bridge):
                self._remember(port)
                self._call(f"{port} enslaved to {bridge}", None, "set", index=self._idx(port),
                           master=self._idx(bridge))
        self._mtus(want)  # after the ports: a bridge takes its port's MTU when the port joins
        for bridge, (_mtu, _port, addresses) in want.bridges.items():
            self._addresses(bridge, addresses)
        self._refresh()
        for name in [*want.bonds, *want.nics(), *want.vlans, *want.bridges]:
            if not self.links[name].up:
                self._call(f"{name} up", None, "set", index=self._idx(name), state="up")
        self._release(want.nics())

    def _check(self, want: _Want, force: bool) -> None:
        """Refuse, before any change, what would take over interfaces that are not Corral's, or pull the network
        from under running guests."""
        for link in self.links.values():
            if link.ours and link.kind == "bridge" and link.name not in want.bridges and not force:
                guests = sorted(x.name for x in self.links.values() if x.master == link.index and not x.ours
                                and x.name not in self.originals)
                if guests:
                    raise Conflict(f"bridge {link.name} still carries guests' NICs ({', '.join(guests)}): "
                                   "move or stop those VMs first", field=link.name)
        for name in [*want.bonds, *want.bridges, *want.vlans]:
            existing = self.links.get(name)
            if existing is not None and not existing.ours:
                raise Conflict(f"{name} exists and was not made by Corral: it is left alone", field=want.where[name])
        ours = {link.index for link in self.links.values() if link.ours}
        for nic in want.nics():
            found = self.links.get(nic)
            if found is None:
                raise Invalid(f"{nic}: no such interface on this host", field=want.where[nic])
            if found.ours:
                raise Conflict(f"{nic} is a {found.kind} Corral made, not a NIC", field=want.where[nic])
            if found.master is not None and found.master not in ours:
                raise Conflict(f"{nic} is enslaved to an interface Corral did not make", field=want.where[nic])

    def _remove_stale(self, want: _Want) -> None:
        for link in sorted(self.links.values(), key=lambda x: {"vlan": 0, "bridge": 1}.get(x.kind or "", 2)):
            if not link.ours:
                continue
            keep = {"vlan": link.name in want.vlans and (want.vlans[link.name][1] == link.vlan_id
                                                         and self._parent(link) == want.vlans[link.name][0]),
                    "bridge": link.name in want.bridges,
                    "bond": link.name in want.bonds and want.bonds[link.name][0] == link.bond_mode}.get(link.kind or "")
            if not keep:
                self._call(f"{link.kind} {link.name} deleted", link.kind, "del", index=link.index)
        self._refresh()
        ours = {link.index: link.name for link in self.links.values() if link.ours}
        wanted_port = {bridge: port for bridge, (_m, port, _a) in want.bridges.items()}
        for link in list(self.links.values()):
            if link.master not in ours:
                continue
            master = ours[link.master]
            if master in want.bonds and link.name in want.bonds[master][1]:
                continue
            if master in wanted_port and wanted_port[master] == link.name:
                continue
            if not link.ours and link.name not in self.originals:
                continue  # a guest's NIC (tap, vif) plugged in by libvirt: not ours to pull out
            self._call(f"{link.name} released from {master}", None, "set", index=link.index, master=0)

    def _parent(self, link: Link) -> str | None:
        return next((x.name for x in self.links.values() if x.index == link.parent), None)

    def _create(self, name: str, kind: str, alias: str, **kwargs: Any) -> None:
        self._call(f"{kind} {name} created", kind, "add", ifname=name, kind=kind, ifalias=alias, **kwargs)
        self._refresh()
        if not self.links[name].ours:  # a kernel that ignores the alias given at creation
            self.ipr.link("set", index=self._idx(name), ifalias=alias)
            self._refresh()

    def _bond(self, name: str, mode: str, members: list[str]) -> None:
        if name not in self.links:
            self._create(name, "bond", f"{MARK} bond", bond_mode=BOND_MODES.index(mode))
        for member in members:
            if self.links[member].master == self._idx(name):
                continue
            self._remember(member)
            if self.links[member].up:  # the bonding driver enslaves only a link that is down
                self.ipr.link("set", index=self._idx(member), state="down")
            self._call(f"{member} enslaved to {name}", "bond", "set", index=self._idx(member), master=self._idx(name))
        self._refresh()

    def _mtus(self, want: _Want) -> None:
        """NICs and bonds raised first, then the VLANs and bridges over them, then NICs and bonds lowered.

        A bridge whose MTU was never set follows its port's (the kernel's auto-adjust): only a bridge whose MTU is
        set explicitly keeps it. So the links are read again after the uplinks change, and a bridge whose MTU
        moved with its port is set, which pins it -- else the next apply would find it changed."""
        self._refresh()
        upl = {n: m for n, m in want.uplink_mtu.items() if self.links[n].mtu != m}
        for name, mtu in upl.items():
            if mtu > self.links[name].mtu:
                self._set_mtu(name, mtu)
        for lowering in (False, True):
            self._refresh()
            for name, (_u, _v, mtu) in want.vlans.items():
                if self.links[name].mtu != mtu:
                    self._set_mtu(name, mtu)
            for name, (mtu, _p, _a) in want.bridges.items():
                if self.links[name].mtu != mtu:
                    self._set_mtu(name, mtu)
            if not lowering:
                for name, mtu in upl.items():
                    if mtu < self.links[name].mtu:
                        self._set_mtu(name, mtu)

    def _set_mtu(self, name: str, mtu: int) -> None:
        if not self.links[name].ours:
            self._remember(name)
        self._call(f"{name} mtu {mtu}", None, "set", index=self._idx(name), mtu=mtu)
        self.links[name].mtu = mtu

    def _addresses(self, bridge: str, addresses: list[str]) -> None:
        index = self._idx(bridge)
        have = NetApplier._addresses(self.ipr).get(index, [])
        for addr in have:
            if addr not in addresses:
                iface = ipaddress.ip_interface(addr)
                self._addr(f"{bridge} address {addr} removed", "del", index=index,
                           address=str(iface.ip), prefixlen=iface.network.prefixlen)
        for addr in addresses:
            if addr not in have:
                iface = ipaddress.ip_interface(addr)
                self._addr(f"{bridge} address {addr} added", "add", index=index,
                           address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def _remember(self, nic: str) -> None:
        """Keep a NIC's settings from before Corral used it, once (a later apply must not take ours for its)."""
        link = self.links[nic]
        if not link.ours and nic not in self.originals:
            self.originals[nic] = {"mtu": link.mtu, "up": link.up}

    def _release(self, used: set[str]) -> None:
        """Give back their MTU and state to the NICs no config uses any more."""
        self._refresh()
        for nic in [n for n in self.originals if n not in used]:
            before = self.originals.pop(nic)
            link = self.links.get(nic)
            if link is None:
                continue  # unplugged meanwhile
            if link.master is not None and any(x.index == link.master and x.ours for x in self.links.values()):
                self._call(f"{nic} released", None, "set", index=link.index, master=0)
            if link.mtu != before.get("mtu"):
                self._call(f"{nic} mtu {before['mtu']} (as before)", None, "set", index=link.index,
                           mtu=before["mtu"])
            self._refresh()
            if self.links[nic].up != before.get("up"):
                state = "up" if before.get("up") else "down"
                self._call(f"{nic} {state} (as before)", None, "set", index=link.index, state=state)
