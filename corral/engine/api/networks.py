"""``/api/v1/networks``: logical networks per cluster (issue 18).

A network is a name, an optional VLAN, an MTU, roles and whether every host of its cluster must carry it. It is
carried on a host by the Linux bridge ``corral.domain.netnames.bridge_for(name)`` (the agent builds it; the
engine reads the host's reported bridges), and a VM NIC names it (``{"network": "data"}``). Show answers, per
host of the cluster, whether the host carries it; delete is refused while a VM's NIC names it. Each refusal
names its field.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Text, cast, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.domain.netnames import NETWORK_NAME_RE
from corral.engine import networks
from corral.engine.api.clusters import default_cluster
from corral.engine.api.deps import After, Ctx, Limit, find_cluster, names_of, page
from corral.engine.api.schemas import ERRORS, Out, Page
from corral.engine.db.models import Cluster, Host, Network, NetworkRole
from corral.engine.errors import Conflict
from corral.engine.events import record
from corral.engine.ids import new_id

router = APIRouter(prefix="/networks", tags=["networks"], responses=ERRORS)


class NetworkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NETWORK_NAME_RE.pattern.replace(r"\Z", "$"),
                      description="1-50 letters, digits, '_' or '-'; names the hosts' bridge (docs/networks.md)")
    vlan: int | None = Field(None, ge=1, le=4094, description="the 802.1Q VLAN id; none: untagged")
    mtu: int = Field(1500, ge=68, le=65535)
    roles: list[NetworkRole] = Field(default_factory=lambda: [NetworkRole.VM], max_length=4,
                                     description="management, vm, migration, storage (default: vm)")
    required: bool = Field(False, description="every host of the cluster must carry it")
    description: str = Field("", max_length=1000)
    cluster: str | None = Field(None, description="cluster id or name; default: the 'default' cluster")

    @field_validator("roles")
    @classmethod
    def _unique(cls, value: list[NetworkRole]) -> list[NetworkRole]:
        if len(set(value)) != len(value):
            raise ValueError("a role is named twice")
        return value


class NetworkOut(Out):
    id: str
    name: str
    cluster_id: str
    cluster: str | None = None
    vlan: int | None
    mtu: int
    roles: list[str]
    required: bool
    description: str
    bridge: str = ""
    created_at: Any
    hosts_total: int = 0
    hosts_carrying: int = 0


class NetworkHostOut(BaseModel):
    host_id: str
    host: str
    host_state: str
    carried: bool


class NetworkDetail(NetworkOut):
    hosts: list[NetworkHostOut] = []
    vms: list[str] = Field(default_factory=list, description="the VMs with a NIC on it")


def _outs(s: Session, rows: list[Network]) -> list[NetworkOut]:
    """A page of networks with how many hosts of their clusters carry them: one query for the hosts' bridges."""
    if not rows:
        return []
    clusters = {n.cluster_id for n in rows}
    bridges: dict[str, list[set[str]]] = {}
    for cluster_id, have in s.execute(select(Host.cluster_id, Host.bridges).where(Host.cluster_id.in_(clusters))):
        bridges.setdefault(cluster_id, []).append(set(have or []))
    names = names_of(s, Cluster, set(clusters))
    out = []
    for n in rows:
        b = networks.bridge(n)
        hosts = bridges.get(n.cluster_id, [])
        out.append(NetworkOut.model_validate(n).model_copy(update={
            "cluster": names.get(n.cluster_id), "bridge": b, "hosts_total": len(hosts),
            "hosts_carrying": sum(1 for have in hosts if b in have)}))
    return out


def _detail(s: Session, n: Network) -> NetworkDetail:
    b = networks.bridge(n)
    hosts = [NetworkHostOut(host_id=h, host=name, host_state=state, carried=b in (have or []))
             for h, name, state, have in s.execute(select(Host.id, Host.name, Host.state, Host.bridges)
                                                   .where(Host.cluster_id == n.cluster_id).order_by(Host.name))]
    return NetworkDetail(**_outs(s, [n])[0].model_dump(), hosts=hosts, vms=networks.users(s, n))


@router.get("", response_model=Page[NetworkOut])
def list_networks(ctx: Ctx, limit: Limit = 100, after: After = None, cluster: str | None = None,
                  name: str | None = None, role: NetworkRole | None = None) -> Page[NetworkOut]:
    def q(s: Session) -> Page[NetworkOut]:
        query = select(Network)
        if cluster is not None:
            query = query.where(Network.cluster_id == find_cluster(s, cluster).id)
        if name is not None:
            query = query.where(Network.name == name)
        if role is not None:  # a role is a quoted word of the roles' JSON text on both databases
            query = query.where(cast(Network.roles, Text).contains(f'"{role.value}"', autoescape=True))
        rows, nxt = page(s, query, Network.id, limit, after)
        return Page[NetworkOut](items=_outs(s, rows), next=nxt)
    return ctx.db.read(q)


@router.post("", status_code=201, response_model=NetworkDetail)
def create_network(ctx: Ctx, body: NetworkIn) -> NetworkDetail:
    """Record a network of a cluster. Hosts carry it once their agents have its bridge (the answer shows which
    do already); a required one that a host lacks is recorded as a ``network_missing`` event of that host."""
    def create(s: Session) -> NetworkDetail:
        c = find_cluster(s, body.cluster) if body.cluster else default_cluster(s)
        if s.scalar(select(Network.id).where(Network.cluster_id == c.id, Network.name == body.name)):
            raise Conflict(f"cluster {c.name} has a network {body.name!r}", field="name")
        n = Network(id=new_id(), cluster_id=c.id, name=body.name, vlan=body.vlan, mtu=body.mtu,
                    roles=[r.value for r in body.roles], required=body.required, description=body.description)
        b = networks.bridge(n)
        for other in s.scalars(select(Network).where(Network.cluster_id == c.id)):
            if networks.bridge(other) == b:  # two long names with the same prefix and hash: never seen, refused
                raise Conflict(f"network {other.name} of cluster {c.name} has the bridge {b} too", field="name")
        s.add(n)
        s.flush()
        vlan = f"VLAN {n.vlan}" if n.vlan else "untagged"
        record(s, "network_created", f"network {n.name} ({vlan}, MTU {n.mtu}, bridge {b}) created in cluster "
               f"{c.name}", object_type="network", object_id=n.id)
        if n.required:
            networks.note_new_required(s, n)
        return _detail(s, n)
    try:
        return ctx.db.call(create)
    except IntegrityError:  # the same name at the same moment: the check names it now
        return ctx.db.call(create)


@router.get("/{network}", response_model=NetworkDetail)
def show_network(ctx: Ctx, network: str, cluster: str | None = None) -> NetworkDetail:
    """The network, each host of its cluster carrying it or not, and the VMs with a NIC on it."""
    def q(s: Session) -> NetworkDetail:
        cluster_id = find_cluster(s, cluster).id if cluster is not None else None
        return _detail(s, networks.find(s, network, cluster_id))
    return ctx.db.read(q)


@router.delete("/{network}", status_code=204, response_class=Response)
def delete_network(ctx: Ctx, network: str, cluster: str | None = None) -> Response:
    """Forget a network. Refused while a VM's NIC names it (the VMs are listed). The hosts' bridges stay."""
    def q(s: Session) -> None:
        cluster_id = find_cluster(s, cluster).id if cluster is not None else None
        n = networks.find(s, network, cluster_id)
        vms = networks.users(s, n)
        if vms:
            raise Conflict(f"network {n.name} is used by VM {', '.join(vms)}; change their NICs first",
                           field="network", vms=vms)
        record(s, "network_removed", f"network {n.name} removed", object_type="network", object_id=n.id)
        s.delete(n)
    ctx.db.call(q)
    return Response(status_code=204)
