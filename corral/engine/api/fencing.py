"""Power management and HA (issue 13): a host's fence agent, its test, the operator's "host has been rebooted",
and a VM's HA flag. The controller that uses them is ``corral.engine.ha``; docs/ha.md explains the whole."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from corral.engine import fencing, ha
from corral.engine.api.deps import Ctx, find_host, find_vm
from corral.engine.api.schemas import ERRORS
from corral.engine.db.models import HostState, Severity, utcnow
from corral.engine.errors import Conflict, Invalid
from corral.engine.events import record

router = APIRouter(tags=["ha"], responses=ERRORS)


class HaIn(BaseModel):
    """``PUT /api/v1/vms/{vm}/ha``: any time, running or not (it matters only when its host is lost)."""

    ha: bool
    priority: int | None = Field(None, ge=0, le=100, description="restart order, highest first; "
                                 "default: unchanged")


def check_ha(body: dict[str, Any]) -> tuple[bool, int]:
    """``ha`` and ``ha_priority`` taken out of a VM create body (they are engine settings, not spec fields);
    a bad value raises Invalid naming the field."""
    on, priority = body.pop("ha", False), body.pop("ha_priority", 0)
    if not isinstance(on, bool):
        raise Invalid("ha is true or false", field="ha")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise Invalid("ha_priority is an integer from 0 to 100", field="ha_priority")
    return on, priority


@router.get("/hosts/{host}/fencing")
def get_fencing(ctx: Ctx, host: str) -> dict[str, Any]:
    """The host's power management (secrets null, named in ``secrets_set``) and its fencing state."""
    return ctx.db.read(lambda s: ha.fence_view(find_host(s, host)))


@router.put("/hosts/{host}/fencing")
def put_fencing(ctx: Ctx, host: str, body: fencing.FenceConfig) -> dict[str, Any]:
    """Set (``agent`` null: remove) the host's power management. The agent must be installed on the engine
    (field ``agent``). A host whose fencing failed is fenced again with the new setting at the next cycle."""
    if body.agent is not None:
        try:
            fencing.resolve(body.agent)
        except fencing.FenceRefused as exc:
            raise Invalid(str(exc), field="agent") from None

    def q(s: Session) -> dict[str, Any]:
        h = find_host(s, host)
        if body.agent is None:
            h.fence = None
        else:
            h.fence = {"agent": body.agent, "options": fencing.merge_secrets(body.options, h.fence),
                       "timeout": body.timeout}
        if h.fence_state == ha.FENCE_FAILED:
            h.fence_state, h.fence_reason = "", ""
        record(s, "host_fencing_set", f"host {h.name}: power management " +
               (f"set to {body.agent}" if body.agent else "removed"), object_type="host", object_id=h.id)
        s.flush()
        return ha.fence_view(h)
    return ctx.db.call(q)


@router.post("/hosts/{host}/fence-test")
async def fence_test(ctx: Ctx, host: str) -> dict[str, Any]:
    """Run the agent's ``status`` (nothing is powered off): ``power`` on | off | unknown, its exit and output."""
    def q(s: Session) -> tuple[str, str, dict[str, Any]]:
        h = find_host(s, host)
        if not h.fence:
            raise Conflict(f"host {h.name} has no power management", field="agent")
        return h.id, h.name, dict(h.fence)
    host_id, name, config = await ctx.db.run_read(q)
    answer = await fencing.status(config, name)

    def log(s: Session) -> None:
        record(s, "host_fence_test", f"host {name}: fence agent status: {answer['power']} "
               f"(exit {answer['exit']})", severity=Severity.INFO if answer["ok"] else Severity.WARNING,
               object_type="host", object_id=host_id, detail=answer)
    await ctx.db.run(log)
    return {"host_id": host_id, "host": name, **answer}


@router.post("/hosts/{host}/confirm-rebooted")
def confirm_rebooted(ctx: Ctx, host: str) -> dict[str, Any]:
    """The operator confirms that the host, which does not answer, is off or was rebooted: its VMs are
    released and its HA VMs restarted elsewhere as after a fence. Only for a host that does not answer."""
    def q(s: Session) -> dict[str, Any]:
        h = find_host(s, host)
        if h.state != HostState.UNREACHABLE.value:
            raise Conflict(f"host {h.name} is {h.state}; only a host that does not answer can be confirmed "
                           "rebooted", state=h.state)
        if h.fence_state in ha.RELEASED:
            return ha.fence_view(h)
        h.fence_state, h.fence_reason = ha.CONFIRMED, "the operator confirmed the host was rebooted"
        h.fence_changed_at = utcnow()
        record(s, "host_confirmed_rebooted", f"host {h.name}: the operator confirmed it was rebooted; its VMs "
               "will be released and its HA VMs restarted elsewhere", severity=Severity.WARNING,
               object_type="host", object_id=h.id)
        s.flush()
        return ha.fence_view(h)
    return ctx.db.call(q)


@router.put("/vms/{vm}/ha")
def put_ha(ctx: Ctx, vm: str, body: HaIn) -> dict[str, Any]:
    """Make a VM highly available or not, and its restart priority."""
    def q(s: Session) -> dict[str, Any]:
        row = find_vm(s, vm)
        if row.external:
            raise Conflict(f"VM {row.name} is external; Corral does not start it", field="ha")
        row.ha = body.ha
        if body.priority is not None:
            row.ha_priority = body.priority
        if not body.ha:
            row.ha_pending_since = None
        record(s, "vm_ha_set", f"VM {row.name}: HA {'on' if row.ha else 'off'} (priority {row.ha_priority})",
               object_type="vm", object_id=row.id)
        return {"id": row.id, "name": row.name, "ha": row.ha, "ha_priority": row.ha_priority}
    return ctx.db.call(q)
