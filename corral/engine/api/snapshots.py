"""``/api/v1/vms/{vm}/snapshots``: a VM's snapshots, answered by the host that runs (or last ran) it (issue 12).

The host owns the snapshots -- libvirt's snapshot metadata on KVM, the qcow2 images themselves on Xen
(``corral.agent.snapshots``) -- so the engine keeps no table of them: a list is asked of the agent, and create,
revert and delete are tasks that hold the VM busy (no other task of the engine runs on it meanwhile; the agent
holds the VM's own lock too, so not even a start reaches libvirt before the snapshot operation ends). A revert
can change the VM's state (a KVM snapshot taken running comes back running): the agent's answer is stored as a
lifecycle action's would be. Refusals name their field: the agent's (``name``, ``disks.N.format``, ``state`` for
a live snapshot where the hypervisor has none) are passed on in the task's error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from corral.engine import vmops
from corral.engine.agent_client import AgentError, AgentTarget, AgentUnreachable
from corral.engine.api.deps import Ctx, find_vm
from corral.engine.api.schemas import ACCEPTED, ERRORS, TaskOut
from corral.engine.db.models import Host, VmState
from corral.engine.errors import ApiError, BadGateway, Conflict, Invalid
from corral.engine.events import record
from corral.engine.tasks import TaskContext

router = APIRouter(prefix="/vms", tags=["snapshots"], responses=ERRORS)

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
AGENT_TIMEOUT = 900.0  # a running VM's memory is written out with its snapshot (minutes under TCG)
# states in which nobody but the task that set them may act on the VM
_MOVING = (VmState.STARTING.value, VmState.SHUTTING_DOWN.value, VmState.MIGRATING.value)


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    description: str = Field("", max_length=1024)


class SnapshotOut(BaseModel):
    name: str
    description: str = ""
    created_at: str | None = None
    vm_state: str = Field("", description="the VM's state when it was taken (running: with its memory)")
    memory: bool = False
    current: bool = False


class SnapshotList(BaseModel):
    vm_id: str
    host_id: str
    host: str
    mechanism: str = Field(description="libvirt (the hypervisor's own snapshots) or offline-qcow2 (taken by "
                                       "Corral with qemu-img while the VM is stopped)")
    items: list[SnapshotOut]


@dataclass(frozen=True)
class _Where:
    """The VM and the host its snapshots are on."""

    vm_id: str
    vm: str
    host_id: str
    host: str
    target: AgentTarget


def _where(s: Session, ref: str) -> _Where:
    vm = find_vm(s, ref)
    host_id = vm.host_id or vm.last_host_id
    h = s.get(Host, host_id) if host_id else None
    if h is None:
        raise Conflict(f"VM {vm.name} has not run on any host yet: its disks and snapshots are on none",
                       field="vm")
    return _Where(vm_id=vm.id, vm=vm.name, host_id=h.id, host=h.name, target=AgentTarget(h.agent_url, h.agent_token))


def _free(s: Session, ref: str, busy: set[str]) -> _Where:
    where = _where(s, ref)
    vm = find_vm(s, where.vm_id)
    if where.vm_id in busy or vm.state in _MOVING:
        raise Conflict(f"a task is running on VM {vm.name} ({vm.state}); try when it has ended", field="vm",
                       code="busy", state=vm.state)
    return where


def _passed_on(where: _Where, exc: AgentError) -> ApiError:
    if isinstance(exc, AgentUnreachable):
        return BadGateway(f"host {where.host} does not answer: {exc.message}", code="unreachable")
    extra = {k: v for k, v in exc.body.items() if k not in ("code", "message", "field")}
    return ApiError(f"host {where.host}: {exc.message}", field=exc.field, code=exc.code,
                    status=exc.status or 502, **extra)


def _path(where: _Where, *rest: str) -> str:
    return f"/v1/vms/{where.vm_id}/snapshots" + "".join("/" + quote(r, safe="") for r in rest)


@router.get("/{vm}/snapshots", response_model=SnapshotList)
async def list_snapshots(ctx: Ctx, vm: str) -> SnapshotList:
    """The VM's snapshots as its host has them (oldest first)."""
    where = await ctx.db.run_read(lambda s: _where(s, vm))
    try:
        body = await ctx.agents.request(where.target, "GET", _path(where), timeout=120.0)
    except AgentError as exc:
        raise _passed_on(where, exc) from None
    return SnapshotList(vm_id=where.vm_id, host_id=where.host_id, host=where.host,
                        mechanism=str(body.get("mechanism", "")),
                        items=[SnapshotOut.model_validate(i) for i in body.get("items") or []])


async def _submit(ctx: Ctx, vm: str, kind: str, message: str, response: Response, call: Any) -> Any:
    where = await ctx.db.run_read(lambda s: _free(s, vm, ctx.tasks.busy_vms))

    async def work(task: TaskContext) -> dict[str, Any]:
        await task.progress(f"{message} on host {where.host}")
        try:
            result = await call(where)
        except AgentError as exc:
            raise _passed_on(where, exc) from None
        return dict(result or {})

    task = await ctx.tasks.submit(kind, work, object_type="vm", object_id=where.vm_id, busy_vm=where.vm_id,
                                  message=f"{message} ({where.vm})")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


@router.post("/{vm}/snapshots", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def create_snapshot(ctx: Ctx, vm: str, body: SnapshotIn, response: Response) -> Any:
    """Take a snapshot (a task): with the VM's memory where it runs and its host can, of its disks otherwise."""
    async def call(where: _Where) -> dict[str, Any]:
        made = dict(await ctx.agents.request(where.target, "POST", _path(where), timeout=AGENT_TIMEOUT,
                                             json_body=body.model_dump()))

        def note(s: Session) -> None:
            record(s, "vm_snapshot_created", f"VM {where.vm}: snapshot {body.name} taken on host {where.host}",
                   object_type="vm", object_id=where.vm_id, detail={"snapshot": body.name})
        await ctx.db.run(note)
        return {"vm_id": where.vm_id, "host": where.host, "snapshot": made}
    return await _submit(ctx, vm, "vm_snapshot_create", f"taking snapshot {body.name}", response, call)


def _checked(name: str) -> str:
    if not re.fullmatch(NAME, name):
        raise Invalid(f"snapshot name {name!r} must match {NAME}", field="name")
    return name


@router.post("/{vm}/snapshots/{name}/revert", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def revert_snapshot(ctx: Ctx, vm: str, name: str, response: Response) -> Any:
    """Bring the VM's disks (and, for a snapshot taken running, its memory and state) back to the snapshot."""
    _checked(name)

    async def call(where: _Where) -> dict[str, Any]:
        answer = dict(await ctx.agents.request(where.target, "POST", _path(where, name, "revert"),
                                               timeout=AGENT_TIMEOUT))
        info = answer.get("vm") or {}

        def apply(s: Session) -> dict[str, Any]:
            result = vmops.apply_info(s, where.vm_id, where.host_id, info, "revert") if info else {}
            record(s, "vm_snapshot_reverted", f"VM {where.vm} reverted to snapshot {name} on host {where.host}",
                   object_type="vm", object_id=where.vm_id, detail={"snapshot": name})
            return result
        result = await ctx.db.run(apply)
        return {**result, "vm_id": where.vm_id, "host": where.host, "snapshot": answer.get("snapshot")}
    return await _submit(ctx, vm, "vm_snapshot_revert", f"reverting to snapshot {name}", response, call)


@router.delete("/{vm}/snapshots/{name}", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def delete_snapshot(ctx: Ctx, vm: str, name: str, response: Response) -> Any:
    _checked(name)

    async def call(where: _Where) -> dict[str, Any]:
        await ctx.agents.request(where.target, "DELETE", _path(where, name), timeout=AGENT_TIMEOUT)

        def note(s: Session) -> None:
            record(s, "vm_snapshot_deleted", f"VM {where.vm}: snapshot {name} deleted on host {where.host}",
                   object_type="vm", object_id=where.vm_id, detail={"snapshot": name})
        await ctx.db.run(note)
        return {"vm_id": where.vm_id, "host": where.host, "snapshot": name, "deleted": True}
    return await _submit(ctx, vm, "vm_snapshot_delete", f"deleting snapshot {name}", response, call)
