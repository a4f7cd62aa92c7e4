"""Shared pieces of the routers: the engine context, auth (who calls, and may they: ``corral.engine.access``),
pagination, lookups by id or name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Select, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from corral.engine import access
from corral.engine.auth import ENGINE, Principal, TokenRefused, set_current
from corral.engine.context import EngineContext
from corral.engine.db.models import Cluster, Host, Vm
from corral.engine.errors import ApiError, Conflict, NotFound, Unauthorized

MAX_LIMIT = 1000
MAX_ID = 2**63 - 1  # a BIGINT: a larger integer parameter is refused by name (422), never sent to the database

bearer = HTTPBearer(auto_error=False, description="an API token (`corral engine create-token`)")


# Both dependencies are coroutines: FastAPI runs a plain ``def`` dependency in a worker thread, two thread hops
# per request before the handler even starts.
async def get_ctx(request: Request) -> EngineContext:
    ctx = request.app.state.corral
    assert isinstance(ctx, EngineContext)
    return ctx


Ctx = Annotated[EngineContext, Depends(get_ctx)]


async def require_token(request: Request, ctx: Ctx,
                        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """Authentication and authorization of every API call (the router's dependency): the bearer token's
    principal (401 when the token is missing, unknown, expired or revoked), then the route's rule
    (``corral.engine.access``, 403 naming the role it needs). The principal is what ``events.record`` names."""
    if not ctx.auth:
        principal = ENGINE
    else:
        if creds is None or creds.scheme.lower() != "bearer":
            raise Unauthorized("a bearer token is required")
        cached = ctx.tokens.cached(creds.credentials)
        if cached is not None:
            principal = cached
        else:
            try:
                principal = await run_in_threadpool(ctx.tokens.principal, creds.credentials)  # a database lookup
            except TokenRefused as exc:
                raise Unauthorized(str(exc)) from None
        if not access.permits(request.scope, principal.role):
            need = access.needed(request.scope)
            raise ApiError(f"this needs the {need} role; {principal.actor or 'this token'} is {principal.role}",
                           code="forbidden", status=403, role=str(need))
    set_current(principal)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(require_token)]


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
After = Annotated[str | None, Query(description="the last id of the previous page")]


def page(s: Session, query: Select[Any], id_col: InstrumentedAttribute[Any], limit: int,
         after: Any | None, *, desc: bool = False) -> tuple[list[Any], Any | None]:
    """Keyset pagination by id: stable under inserts and O(limit) however deep the page.

    ``desc`` pages newest first; ``after`` is then the smallest id of the previous page."""
    if after is not None:
        query = query.where(id_col < after if desc else id_col > after)
    rows = list(s.scalars(query.order_by(id_col.desc() if desc else id_col).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    next_after = getattr(rows[-1], id_col.key) if more and rows else None
    return rows, next_after


def find_cluster(s: Session, ref: str) -> Cluster:
    c = s.scalar(select(Cluster).where(or_(Cluster.id == ref, Cluster.name == ref)))
    if c is None:
        raise NotFound(f"no cluster {ref!r}", field="cluster")
    return c


def find_host(s: Session, ref: str, field: str | None = None) -> Host:
    h = s.scalar(select(Host).where(or_(Host.id == ref, Host.name == ref)))
    if h is None:
        raise NotFound(f"no host {ref!r}", field=field)
    return h


def find_vm(s: Session, ref: str) -> Vm:
    vm = s.get(Vm, ref)
    if vm is None:
        vm = s.scalar(select(Vm).where(Vm.name == ref).order_by(Vm.external).limit(1))
    if vm is None:
        raise NotFound(f"no VM {ref!r}")
    return vm


def find_unique(s: Session, model: Any, ref: str, what: str, scope: str, field: str) -> Any:
    """A row by id, else by a name that is unique only within its ``scope`` (a domain's cluster, a volume's
    domain): a name shared across scopes is refused, asking for the id."""
    row = s.get(model, ref)
    if row is not None:
        return row
    found = list(s.scalars(select(model).where(model.name == ref).limit(2)))
    if not found:
        raise NotFound(f"no {what} {ref!r}", field=field)
    if len(found) > 1:
        raise Conflict(f"{what}s of several {scope} are named {ref!r}; use its id", field=field)
    return found[0]


def host_id_of(s: Session, ref: str | None) -> str | None:
    return None if ref is None else find_host(s, ref, field="host").id


def cluster_id_of(s: Session, ref: str | None) -> str | None:
    return None if ref is None else find_cluster(s, ref).id


def names_of(s: Session, model: type[Host] | type[Vm] | type[Cluster], ids: set[str | None]) -> dict[str, str]:
    """id -> name for a page's worth of references, in one query (no per-row lookups)."""
    wanted = sorted(i for i in ids if i)
    if not wanted:
        return {}
    return {r[0]: r[1] for r in s.execute(select(model.id, model.name).where(model.id.in_(wanted)))}
