"""``POST /api/v1/vms/{vm}/migrate`` (a task; corral.engine.migration; cancelled by ``DELETE /api/v1/tasks/{id}``,
corral.engine.api.tasks) -- issue 13."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, ConfigDict, Field

from corral.engine import migration
from corral.engine.api.deps import Ctx
from corral.engine.api.schemas import ACCEPTED, ERRORS, TaskOut
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
