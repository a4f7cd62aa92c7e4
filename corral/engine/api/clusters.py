"""``/api/v1/clusters``: groups of hosts; a VM is placed on a host of its cluster."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.engine.api.deps import After, Ctx, Limit, find_cluster, page
from corral.engine.api.schemas import ERRORS, ClusterIn, ClusterOut, ClusterPatch, Page
from corral.engine.db.models import Cluster, Host, Vm
from corral.engine.errors import Conflict
from corral.engine.events import record
from corral.engine.ids import new_id

router = APIRouter(prefix="/clusters", tags=["clusters"], responses=ERRORS)

DEFAULT_CLUSTER = "default"


def default_cluster(s: Session) -> Cluster:
    """The cluster hosts and VMs join when none is named; created on first need. Two first needs at once
    (two hosts added to an empty engine) both insert it: the loser's insert, in a savepoint of its own,
    fails on the unique name and it takes the winner's."""
    query = select(Cluster).where(Cluster.name == DEFAULT_CLUSTER)
    c = s.scalar(query)
    if c is not None:
        return c
    c = Cluster(id=new_id(), name=DEFAULT_CLUSTER, description="created by the engine", flavor_policy="any")
    try:
        with s.begin_nested():
            s.add(c)
    except IntegrityError:
        found = s.scalar(query)
        if found is None:
            raise
        return found
    return c


@router.get("", response_model=Page[ClusterOut])
def list_clusters(ctx: Ctx, limit: Limit = 100, after: After = None, name: str | None = None) -> Page[ClusterOut]:
    def q(s: Session) -> Page[ClusterOut]:
        query = select(Cluster)
        if name is not None:
            query = query.where(Cluster.name == name)
        rows, nxt = page(s, query, Cluster.id, limit, after)
        return Page[ClusterOut](items=[ClusterOut.model_validate(r) for r in rows], next=nxt)
    return ctx.db.call(q)


@router.post("", status_code=201, response_model=ClusterOut)
def create_cluster(ctx: Ctx, body: ClusterIn) -> ClusterOut:
    def q(s: Session) -> ClusterOut:
        if s.scalar(select(Cluster.id).where(Cluster.name == body.name)):
            raise Conflict(f"cluster {body.name!r} exists", field="name")
        c = Cluster(id=new_id(), name=body.name, description=body.description,
                    flavor_policy=body.flavor_policy, allow_public_console=body.allow_public_console)
        s.add(c)
        s.flush()
        record(s, "cluster_created", f"cluster {c.name} created", object_type="cluster", object_id=c.id)
        return ClusterOut.model_validate(c)
    return ctx.db.call(q)


@router.get("/{cluster}", response_model=ClusterOut)
def show_cluster(ctx: Ctx, cluster: str) -> ClusterOut:
    return ctx.db.call(lambda s: ClusterOut.model_validate(find_cluster(s, cluster)))


@router.patch("/{cluster}", response_model=ClusterOut)
def update_cluster(ctx: Ctx, cluster: str, body: ClusterPatch) -> ClusterOut:
    def q(s: Session) -> ClusterOut:
        c = find_cluster(s, cluster)
        if body.description is not None:
            c.description = body.description
        if body.flavor_policy is not None:
            c.flavor_policy = body.flavor_policy
        if body.allow_public_console is not None:
            c.allow_public_console = body.allow_public_console
        s.flush()
        return ClusterOut.model_validate(c)
    return ctx.db.call(q)


@router.delete("/{cluster}", status_code=204, response_class=Response)
def delete_cluster(ctx: Ctx, cluster: str) -> Response:
    def q(s: Session) -> None:
        c = find_cluster(s, cluster)
        if s.scalar(select(exists().where(Host.cluster_id == c.id))):
            raise Conflict(f"cluster {c.name} still has hosts")
        if s.scalar(select(exists().where(Vm.cluster_id == c.id))):
            raise Conflict(f"cluster {c.name} still has VMs")
        s.delete(c)
        record(s, "cluster_removed", f"cluster {c.name} removed", object_type="cluster", object_id=c.id)
    ctx.db.call(q)
    return Response(status_code=204)
