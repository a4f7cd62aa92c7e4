"""``POST /api/v1/vms/{vm}/migrate`` (a task; corral.engine.migration) and ``DELETE /api/v1/tasks/{task_id}``
(cancel a task that can be cancelled: today a migration, by its agent's abort) -- issue 13."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from corral.engine import migration
from corral.engine.agent_client import AgentError, AgentUnreachable
from corral.engine.api.deps import Ctx
from corral.engine.api.schemas import ACCEPTED, ERRORS, TaskOut
from corral.engine.db.models import Task, TaskState
from corral.engine.errors import BadGateway, Conflict, NotFound
from corral.engine.tasks import TaskContext

router = APIRouter(tags=["vms"], responses=ERRORS)


class MigrateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(None, description="destination host (id or name); the scheduler picks one without")
    bandwidth_mib: int | None = Field(None, ge=1, le=1_000_000, description="limit in MiB/s, where the flavor can")
    live: bool = Field(True, description="false: the guest is paused while its memory is copied (a host whose "
                                         "hypervisor cannot track dirty pages, e.g. Xen without shadow paging)")


@router.post("/vms/{vm}/migrate", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def migrate_vm(ctx: Ctx, vm: str, response: Response,
                     body: Annotated[MigrateIn | None, Body()] = None) -> Any:
    """Live-migrate a running VM to ``host``, or to the host the scheduler picks (placement's filters minus the
    current host, then CPU compatibility). The task's message and ``result.progress`` follow the migration;
    ``DELETE /api/v1/tasks/{id}`` cancels it where the flavor can abort."""
    body = body or MigrateIn()
    row = await ctx.db.run(lambda s: migration.claim(s, vm, body.host))
    vm_id = row.id

    async def work(task: TaskContext) -> dict[str, Any]:
        return await migration.Migration(ctx, task, vm_id, body.host, body.bandwidth_mib, body.live).run()

    task = await ctx.tasks.submit("vm_migrate", work, object_type="vm", object_id=vm_id, busy_vm=vm_id,
                                  message=f"migrate {row.name}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


@router.delete("/tasks/{task_id}", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def cancel_task(ctx: Ctx, task_id: str) -> Any:
    """Ask a running task to stop. A migration is aborted by its source's agent (the VM stays there); where the
    flavor has no abort (Xen [L15]) the answer is 409 with the reason, and the task runs on."""
    row = await ctx.db.run_read(lambda s: _task(s, task_id))
    if row is None:
        raise NotFound(f"no task {task_id!r}")
    if row.state not in (TaskState.PENDING.value, TaskState.RUNNING.value):
        raise Conflict(f"task {task_id} is {row.state} already", state=row.state)
    cancel = ctx.tasks.cancellers.get(task_id)
    if cancel is None:
        raise Conflict(f"a {row.kind} task cannot be cancelled (only a running migration can), or it runs on "
                       "another engine node", code="not_cancellable")
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
