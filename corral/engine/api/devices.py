"""``/api/v1/vms/{vm}/devices``, ``/memory``, ``/vcpus``: live changes, carried out by the VM's host agent.

The agent decides with its flavor what can change live (a VNC password on Xen cannot; a NIC link on Xen is
emulated in dom0) and refuses the rest before changing anything; its answer — including the refusal's code,
field and message — is passed through. The VM's stored spec is replaced by the one the agent now holds.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.domain.spec import NicSpec, SpecError
from corral.engine import hostpaths, macs, networks
from corral.engine.agent_client import AgentError, AgentTarget, AgentUnreachable
from corral.engine.api import redact
from corral.engine.api.deps import Ctx, find_vm
from corral.engine.api.schemas import ERRORS
from corral.engine.db.models import Host, Vm
from corral.engine.errors import ApiError, BadGateway, Conflict, invalid_from_spec
from corral.engine.events import record

router = APIRouter(prefix="/vms", tags=["vms"], responses=ERRORS)

Obj = Annotated[dict[str, Any], Body()]


async def _on_host(ctx: Ctx, vm: str) -> tuple[str, str, str, AgentTarget]:
    def q(s: Session) -> tuple[str, str, str, AgentTarget]:
        row = find_vm(s, vm)
        if row.external or row.spec is None:
            raise Conflict(f"VM {row.name} is external; Corral has no spec for it")
        h = s.get(Host, row.host_id) if row.host_id else None
        if h is None:
            raise Conflict(f"VM {row.name} is not defined on a host; while it is down, change its spec with "
                           f"PUT /api/v1/vms/{row.id}", field="vm")
        return row.id, row.name, h.name, AgentTarget(h.agent_url, h.agent_token)
    return await ctx.db.run(q)


async def _call(ctx: Ctx, vm: str, method: str, path: str, body: dict[str, Any] | None, what: str) -> Any:
    vm_id, name, host_name, target = await _on_host(ctx, vm)
    try:
        info = await ctx.agents.request(target, method, f"/v1/vms/{vm_id}{path}", json_body=body)
    except AgentUnreachable as exc:
        raise BadGateway(f"host {host_name} does not answer: {exc.message}", code="unreachable") from None
    except AgentError as exc:
        if 400 <= exc.status < 500:  # the agent's refusal, as it said it
            raise ApiError(exc.message, field=exc.field, code=exc.code, status=exc.status) from None
        raise BadGateway(f"host {host_name}: {exc.code}: {exc.message}", code=exc.code) from None
    spec = info.get("spec") if isinstance(info, dict) else None

    def save(s: Session) -> None:
        if spec is not None:
            s.execute(update(Vm).where(Vm.id == vm_id).values(
                spec=spec, memory_mib=spec.get("memory_mib"), vcpus=spec.get("vcpus")))
            macs.sync(s, vm_id, spec)
        record(s, "vm_device", f"VM {name}: {what} on {host_name}", object_type="vm", object_id=vm_id)
    await macs.run(ctx.db, save)
    return redact.vm_answer(info) if isinstance(info, dict) else info


@router.patch("/{vm}/devices/{device_id}")
async def change_device(ctx: Ctx, vm: str, device_id: str, body: Obj) -> Any:
    """One of ``{"media": path|null}`` (CD-ROM), ``{"link": "up"|"down"}`` (NIC), ``{"password": str}``."""
    hostpaths.check_device(body)
    return await _call(ctx, vm, "PATCH", f"/devices/{device_id}", body, f"device {device_id} changed: "
                       + ", ".join(sorted(body)))


@router.post("/{vm}/devices")
async def plug_device(ctx: Ctx, vm: str, body: Obj) -> Any:
    """Hot-plug ``{"disk": DiskSpec}`` or ``{"nic": NicSpec}``. A NIC's MAC is taken from the engine's pool
    before the host sees it (or, given, refused with 409 when another VM uses it)."""
    hostpaths.check_device(body)
    what = f"{'/'.join(sorted(body))} plugged"
    if not isinstance(body.get("nic"), dict):
        return await _call(ctx, vm, "POST", "/devices", body, what)
    vm_id, nic = await macs.run(ctx.db, lambda s: _hold_nic(s, vm, body["nic"]))
    try:
        return await _call(ctx, vm, "POST", "/devices", {**body, "nic": nic}, what)
    except BaseException:
        await macs.run(ctx.db, lambda s: _release(s, vm_id))
        raise


def _hold_nic(s: Session, vm: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    row = find_vm(s, vm)
    try:
        nic = NicSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_spec(SpecError.from_validation(exc, "nic")) from None
    if nic.network is not None:  # a logical network of the VM's cluster (issue 18)
        networks.check(s, row.cluster_id, [("nic.network", nic.network)])
    return row.id, macs.hold_one(s, row.id, nic).model_dump(mode="json")


def _release(s: Session, vm_id: str) -> None:
    """The plug failed: the VM holds again the MACs of its stored spec only."""
    macs.sync(s, vm_id, s.scalar(select(Vm.spec).where(Vm.id == vm_id)))


@router.delete("/{vm}/devices/{device_id}")
async def unplug_device(ctx: Ctx, vm: str, device_id: str) -> Any:
    return await _call(ctx, vm, "DELETE", f"/devices/{device_id}", None, f"device {device_id} unplugged")


@router.put("/{vm}/memory")
async def set_memory(ctx: Ctx, vm: str, body: Obj) -> Any:
    """``{"memory_mib": N}``: the balloon target, within the VM's max memory."""
    return await _call(ctx, vm, "PUT", "/memory", body, f"memory set to {body.get('memory_mib')} MiB")


@router.put("/{vm}/vcpus")
async def set_vcpus(ctx: Ctx, vm: str, body: Obj) -> Any:
    """``{"vcpus": N}``: online vCPUs, within the VM's max vCPUs."""
    return await _call(ctx, vm, "PUT", "/vcpus", body, f"vCPUs set to {body.get('vcpus')}")
