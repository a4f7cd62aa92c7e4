"""``/api/v1/templates``: VMs sealed as templates, cloned into new VMs (issue 12; ``corral.engine.templates``).

``POST /templates {"name", "vm", "description"?}`` is a task: the VM (stopped) is first undefined on the host
that still has its definition (which names the volumes about to be sealed), then its volumes become the
template's base volumes and its disks thin clones of them. A VM is created from a template with ``POST /vms``
``{"name": ..., "template": T, "clone": "thin"|"full"}`` (any other field of the body overrides the template's
spec). ``DELETE`` is refused (409, field ``template``) while a clone reads a base volume.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine import templates, vmvolumes
from corral.engine.agent_client import AgentError, AgentTarget
from corral.engine.api import storage as storage_api
from corral.engine.api.deps import After, Ctx, Limit, page
from corral.engine.api.schemas import ACCEPTED, ERRORS, Page, TaskOut
from corral.engine.db.models import Host, Severity, Template
from corral.engine.events import record
from corral.engine.ids import new_id
from corral.engine.tasks import TaskContext

router = APIRouter(prefix="/templates", tags=["templates"], responses=ERRORS)


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=storage_api.NAME)
    vm: str = Field(description="the VM (id or name) to make it from; it must be stopped")
    description: str = Field("", max_length=4096)


class BaseVolumeOut(BaseModel):
    id: str
    name: str
    domain: str
    host: str | None
    format: str
    capacity_bytes: int
    path: str | None


class TemplateOut(BaseModel):
    id: str
    name: str
    cluster_id: str
    cluster: str | None
    description: str
    source_vm: str
    state: str
    memory_mib: int | None
    vcpus: int | None
    created_at: Any
    spec: dict[str, Any]
    volumes: list[BaseVolumeOut]
    clones: list[str] = Field(description="volumes made from (thin) or being copied from the base volumes")
    vms: list[str] = Field(description="the VMs those clones belong to")


@router.get("", response_model=Page[TemplateOut])
def list_templates(ctx: Ctx, limit: Limit = 100, after: After = None, name: str | None = None) -> Any:
    def q(s: Session) -> dict[str, Any]:
        query = select(Template)
        if name is not None:
            query = query.where(Template.name == name)
        rows, nxt = page(s, query, Template.id, limit, after)
        return {"items": [templates.out(s, t) for t in rows], "next": nxt}
    return ctx.db.read(q)


@router.get("/{template}", response_model=TemplateOut)
def show_template(ctx: Ctx, template: str) -> Any:
    return ctx.db.read(lambda s: templates.out(s, templates.find(s, template)))


@router.post("", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def create_template(ctx: Ctx, body: TemplateIn, response: Response) -> Any:
    """Make a template from a stopped VM (a task; its result is the template)."""
    template_id = new_id()

    def reserve(s: Session) -> tuple[str, str, tuple[str, AgentTarget] | None]:
        vm_id, vm_name, host_id = templates.reserve(s, template_id, body.name, body.vm, body.description)
        h = s.get(Host, host_id) if host_id else None
        return vm_id, vm_name, (h.name, AgentTarget(h.agent_url, h.agent_token)) if h else None
    vm_id, vm_name, host = await ctx.db.run(reserve)

    async def work(task: TaskContext) -> dict[str, Any]:
        try:
            if host is not None:  # its old definition names the volumes about to be sealed
                await task.progress(f"undefining VM {vm_name} on host {host[0]}")
                try:
                    await ctx.agents.delete_vm(host[1], vm_id)
                except AgentError as exc:
                    if exc.status != 404:
                        why = (f"VM {vm_name} could not be undefined on host {host[0]} ({exc.message}): its "
                               f"definition there names template {body.name}'s base volumes until it starts again")
                        await ctx.db.run(lambda s: record(s, "template_warning", why, severity=Severity.WARNING,
                                                          object_type="template", object_id=template_id))
            await task.progress(f"sealing the volumes of VM {vm_name} as template {body.name}")
            return dict(await ctx.db.run(lambda s: templates.seal(s, template_id, vm_id)))
        except BaseException:
            await ctx.db.run(lambda s: templates.drop(s, template_id))
            raise

    task = await ctx.tasks.submit("template_create", work, object_type="template", object_id=template_id,
                                  busy_vm=vm_id, message=f"template {body.name} from VM {vm_name}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


@router.delete("/{template}", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def delete_template(ctx: Ctx, template: str, response: Response) -> Any:
    """Delete a template and its base volumes (a task); refused (409, field ``template``, with ``vms``) while
    a VM's volume is a clone of one of them."""
    template_id, name = await ctx.db.run(lambda s: templates.reserve_delete(s, template))

    async def work(task: TaskContext) -> dict[str, Any]:
        own = await ctx.db.run_read(lambda s: vmvolumes.own(s, template_id=template_id))
        await task.progress(f"deleting the {len(own)} base volume(s) of template {name}")
        await vmvolumes.delete_own(ctx.db, ctx.agents, name, own, kind="template")
        await ctx.db.run(lambda s: templates.forget(s, template_id, name))
        return {"id": template_id, "name": name, "deleted": True}

    task = await ctx.tasks.submit("template_delete", work, object_type="template", object_id=template_id,
                                  message=f"deleting template {name}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task
