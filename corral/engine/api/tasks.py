"""``/api/v1/tasks``: the long operations the API answered with 202."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine.api.deps import After, Ctx, Limit, page
from corral.engine.api.schemas import ERRORS, Page, TaskOut
from corral.engine.db.models import Task
from corral.engine.errors import NotFound

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=ERRORS)


@router.get("", response_model=Page[TaskOut])
def list_tasks(ctx: Ctx, limit: Limit = 100, after: After = None, state: str | None = None,
               object_id: str | None = None) -> Page[TaskOut]:
    def q(s: Session) -> Page[TaskOut]:
        query = select(Task)
        if state is not None:
            query = query.where(Task.state == state)
        if object_id is not None:
            query = query.where(Task.object_id == object_id)
        rows, nxt = page(s, query, Task.id, limit, after)
        return Page[TaskOut](items=[TaskOut.model_validate(r) for r in rows], next=nxt)
    return ctx.db.call(q)


@router.get("/{task_id}", response_model=TaskOut)
def show_task(ctx: Ctx, task_id: str) -> TaskOut:
    def q(s: Session) -> TaskOut:
        t = s.get(Task, task_id)
        if t is None:
            raise NotFound(f"no task {task_id!r}")
        return TaskOut.model_validate(t)
    return ctx.db.call(q)
