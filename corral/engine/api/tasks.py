"""``/api/v1/tasks``: the long operations the API answered with 202, and the cancel of those that can stop (today a
migration, by its agent's abort)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine.agent_client import AgentError, AgentUnreachable
from corral.engine.api.deps import After, Ctx, Limit, page
from corral.engine.api.schemas import ACCEPTED, ERRORS, Page, TaskOut
from corral.engine.db.models import Task, TaskState
from corral.engine.errors import BadGateway, Conflict, NotFound

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


@router.delete("/{task_id}", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def cancel_task(ctx: Ctx, task_id: str) -> Any:
    """Ask a running task to stop. A migration is aborted by its source's agent (the VM stays there); where the
    flavor has no abort (Xen [L15]) the answer is 409 with the reason, and the task runs on."""
    row = await ctx.db.run_read(lambda s: _task(s, task_id))
    if row is None:
        raise NotFound(f"no task {task_id!r}", field="task_id")
    if row.state not in (TaskState.PENDING.value, TaskState.RUNNING.value):
        raise Conflict(f"task {task_id} is {row.state} already", field="task_id", state=row.state)
    cancel = ctx.tasks.cancellers.get(task_id)
    if cancel is None:
        raise Conflict(f"a {row.kind} task cannot be cancelled (only a running migration can), or it runs on "
                       "another engine node", code="not_cancellable", field="task_id")
    try:
        await cancel()
    except AgentUnreachable as exc:
        raise BadGateway(f"the VM's host does not answer: {exc.message}", code="unreachable") from None
    except AgentError as exc:
        raise Conflict(f"cannot cancel: {exc.message}", code=exc.code, field=exc.field) from None
    return await ctx.db.run_read(lambda s: _task(s, task_id))


def _task(s: Session, task_id: str) -> TaskOut | None:
    row = s.get(Task, task_id)
    return None if row is None else TaskOut.model_validate(row)
