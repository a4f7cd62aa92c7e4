"""``/api/v1/events``: what happened, filterable by object, severity and actor (``user``); oldest first unless
``order=desc``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine.api.deps import MAX_ID, Ctx, Limit, names_of, page
from corral.engine.api.schemas import ERRORS, EventOut, Page
from corral.engine.db.models import Cluster, Event, Host, Vm

router = APIRouter(prefix="/events", tags=["events"], responses=ERRORS)

LEVELS = {"info": ["info", "warning", "error"], "warning": ["warning", "error"], "error": ["error"]}
SeverityQ = Literal["info", "warning", "error"]


@router.get("", response_model=Page[EventOut])
def list_events(ctx: Ctx, limit: Limit = 100,
                after: Annotated[int | None, Query(ge=0, le=MAX_ID,
                                                   description="the last id of the previous page")] = None,
                object_type: Annotated[Literal["vm", "host", "cluster", "task"] | None, Query()] = None,
                object_id: str | None = None,
                severity: Annotated[SeverityQ | None, Query(description="exactly this severity")] = None,
                min_severity: Annotated[SeverityQ | None, Query(description="this severity or worse")] = None,
                type: str | None = None,
                user: Annotated[str | None, Query(max_length=100, description="changes made by this user (or "
                                                  "token:NAME, a token without an owner)")] = None,
                order: Annotated[Literal["asc", "desc"], Query(description="desc: newest first")] = "asc",
                ) -> Page[EventOut]:
    def q(s: Session) -> Page[EventOut]:
        query = select(Event)
        if object_type is not None:
            query = query.where(Event.object_type == object_type)
        if object_id is not None:
            query = query.where(Event.object_id == object_id)
        if severity is not None:
            query = query.where(Event.severity == severity)
        if min_severity is not None:
            query = query.where(Event.severity.in_(LEVELS[min_severity]))
        if type is not None:
            query = query.where(Event.type == type)
        if user is not None:
            query = query.where(Event.actor == user)
        rows, nxt = page(s, query, Event.id, limit, after, desc=order == "desc")
        names: dict[str, str] = {}
        for kind, model in (("vm", Vm), ("host", Host), ("cluster", Cluster)):
            names.update(names_of(s, model, {r.object_id for r in rows if r.object_type == kind}))
        items = [EventOut.model_validate(r).model_copy(update={"object_name": names.get(r.object_id or "")})
                 for r in rows]
        return Page[EventOut](items=items, next=nxt)
    return ctx.db.call(q)
