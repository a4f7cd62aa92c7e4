"""Logical networks as the engine uses them (issue 18): which VM NICs name them, which hosts carry them.

A network of a cluster is carried on a host by the Linux bridge ``corral.domain.netnames.bridge_for(name)``;
a host carries it when that bridge is among the bridges the host's agent reports (``hosts.bridges``, refreshed
whenever the host is activated or comes back). The stored VM spec keeps the network's name; ``check_spec`` makes
sure each one exists in the VM's cluster (at create and at PUT), ``needs`` tells placement which bridges the
VM's hosts must have, and ``for_host`` is the spec an agent receives: plain bridge NICs.

A host of the cluster without a *required* network is shown so (``host_view``: ``GET /hosts/{id}`` answers
``networks``) and an event ``network_missing`` says so once when it goes missing (``note_missing`` at
activation, and at the creation of a required network). It is not made non-operational: placement already
keeps every VM that names the network off that host, and VMs on other networks still run there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from corral.domain.netnames import bridge_for
from corral.domain.spec import VmSpec
from corral.engine.db.models import Host, Network, Severity, Vm
from corral.engine.errors import Conflict, NotFound
from corral.engine.events import record
from corral.engine.scheduler import NetworkNeed


def bridge(n: Network) -> str:
    return bridge_for(n.name, n.vlan)


def named(spec: VmSpec) -> list[tuple[int, str]]:
    """(NIC index, network name) of every NIC of the spec that names a logical network."""
    return [(i, nic.network) for i, nic in enumerate(spec.nics) if nic.network is not None]


def check_spec(s: Session, cluster_id: str, spec: VmSpec) -> None:
    """Every network a NIC names exists in the VM's cluster; the refusal names the NIC's field."""
    check(s, cluster_id, [(f"nics.{i}.network", name) for i, name in named(spec)])


def check(s: Session, cluster_id: str, wanted: list[tuple[str, str]]) -> None:
    """(field, network name): each network exists in the cluster, else 404 naming the field (a hot-plugged NIC's
    is ``nic.network``)."""
    if not wanted:
        return
    have = set(s.scalars(select(Network.name).where(Network.cluster_id == cluster_id,
                                                    Network.name.in_({n for _, n in wanted}))))
    for field, name in wanted:
        if name not in have:
            raise NotFound(f"the VM's cluster has no network {name!r}", field=field)


def needs(s: Session, cluster_id: str, spec: VmSpec) -> tuple[NetworkNeed, ...]:
    """The networks placement checks, by the cluster's rows (checked again: one may have been deleted since the
    spec was stored, which only an unused network can be, but a start must not place against a guess)."""
    wanted = named(spec)
    if not wanted:
        return ()
    check_spec(s, cluster_id, spec)
    rows = {n.name: n for n in s.scalars(select(Network).where(Network.cluster_id == cluster_id,
                                                                Network.name.in_({n for _, n in wanted})))}
    return tuple(NetworkNeed(name, bridge(rows[name])) for name in sorted({n for _, n in wanted}))


def for_host(spec: VmSpec, networks: tuple[NetworkNeed, ...]) -> VmSpec:
    """The spec an agent defines: a network NIC becomes a plain bridge NIC on the network's bridge (its source
    is that bridge already; the name is dropped, so an agent needs to know nothing of logical networks)."""
    if not any(nic.network is not None for nic in spec.nics):
        return spec
    bridges = {n.network: n.bridge for n in networks}
    nics = [nic if nic.network is None else
            nic.model_copy(update={"network": None, "source": bridges.get(nic.network, nic.source)})
            for nic in spec.nics]
    return spec.model_copy(update={"nics": nics})


def users(s: Session, n: Network) -> list[str]:
    """The names of the VMs of the network's cluster with a NIC that names it."""
    out = []
    # the JSON's text names the network (in any of its fields) on both databases: only those specs are decoded
    mentions = cast(Vm.spec, Text).contains(f'"{n.name}"', autoescape=True)
    for name, spec in s.execute(select(Vm.name, Vm.spec).where(Vm.cluster_id == n.cluster_id,
                                                               Vm.external.is_(False), Vm.spec.is_not(None),
                                                               mentions)):
        if any(isinstance(nic, dict) and nic.get("network") == n.name for nic in (spec or {}).get("nics") or []):
            out.append(name)
    return sorted(out)


# --- hosts ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostNetworks:
    """The cluster's networks as one host has them."""

    items: list[dict[str, Any]]
    missing_required: list[str]

    @property
    def reason(self) -> str:
        if not self.missing_required:
            return ""
        return "missing required network(s): " + ", ".join(self.missing_required)

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "missing_required": self.missing_required, "reason": self.reason}


def host_view(s: Session, h: Host, bridges: list[str] | None = None) -> HostNetworks:
    """Each network of the host's cluster, carried here or not (by ``bridges``, default the host's)."""
    have = set((h.bridges or []) if bridges is None else bridges)
    items: list[dict[str, Any]] = []
    missing: list[str] = []
    for n in s.scalars(select(Network).where(Network.cluster_id == h.cluster_id).order_by(Network.name)):
        b = bridge(n)
        items.append({"network_id": n.id, "network": n.name, "bridge": b, "vlan": n.vlan, "required": n.required,
                      "carried": b in have})
        if n.required and b not in have:
            missing.append(n.name)
    return HostNetworks(items, missing)


def note_missing(s: Session, h: Host, before: list[str] | None) -> None:
    """Record ``network_missing`` for each required network the host lacks now and had before (``before``: its
    bridges then; None when it had no report before: every missing one is news)."""
    now = host_view(s, h)
    if not now.missing_required:
        return
    had = set() if before is None else set(host_view(s, h, before).missing_required)
    for name in now.missing_required:
        if name not in had:
            _missing_event(s, h, name)


def note_new_required(s: Session, n: Network) -> None:
    """A required network was created: an event for every host of the cluster that does not carry it."""
    b = bridge(n)
    for h in s.scalars(select(Host).where(Host.cluster_id == n.cluster_id)):
        if b not in (h.bridges or []):
            _missing_event(s, h, n.name)


def _missing_event(s: Session, h: Host, network: str) -> None:
    b = bridge_for(network)
    record(s, "network_missing", f"host {h.name} lacks required network {network} (bridge {b}): VMs on it "
           "are not placed there", severity=Severity.WARNING, object_type="host", object_id=h.id,
           detail={"network": network, "bridge": b})


def find(s: Session, ref: str, cluster_id: str | None = None, field: str = "network") -> Network:
    """A network by id, or by name (in ``cluster_id`` when given, else a name no two clusters share)."""
    row = s.get(Network, ref)
    if row is not None and (cluster_id is None or row.cluster_id == cluster_id):
        return row
    query = select(Network).where(Network.name == ref)
    if cluster_id is not None:
        query = query.where(Network.cluster_id == cluster_id)
    found = list(s.scalars(query.limit(2)))
    if not found:
        raise NotFound(f"no network {ref!r}", field=field)
    if len(found) > 1:
        raise Conflict(f"networks of several clusters are named {ref!r}; name the cluster or use its id",
                       field=field)
    return found[0]
