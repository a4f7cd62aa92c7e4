"""VM lifecycle behind the API: claim a state transition, then let a task drive the agent.

The transition is claimed with one conditional UPDATE (``... WHERE state IN allowed``), so two clients
starting the same VM cannot both win; the loser gets 409 before any task exists. The task holds the VM
"busy" so monitoring does not overwrite ``starting`` or ``shutting_down`` while the agent works; when the
agent answers, its VmInfo sets the state.

Start = schedule (or check the requested host), record the placement, undefine the VM on a former host,
make the VM's pending volumes on the chosen one (``corral.engine.vmvolumes``), define it there with
``start=true`` with its disks' paths (replacing a definition left there by an earlier run).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.domain.spec import parse_spec
from corral.engine import consolepolicy, macs, networks, vmvolumes
from corral.engine.agent_client import AgentError, AgentTarget, AgentUnreachable
from corral.engine.context import EngineContext
from corral.engine.db.models import Cluster, Host, Severity, Task, Vm, VmState, utcnow
from corral.engine.errors import ApiError, Conflict, NotFound
from corral.engine.events import record
from corral.engine.reconcile import ON_HOST, agent_state, reason_of
from corral.engine.scheduler import NetworkNeed
from corral.engine.tasks import TaskContext

# action -> (states it may start from, state while the task runs, agent endpoint)
ACTIONS: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    "start": (("down", "crashed"), VmState.STARTING.value, "start"),
    "shutdown": (("up", "paused"), VmState.SHUTTING_DOWN.value, "shutdown"),
    "stop": (("up", "paused", "shutting_down", "crashed"), None, "destroy"),
    "reboot": (("up",), None, "reboot"),
    "pause": (("up",), None, "pause"),
    "resume": (("paused",), None, "resume"),
}


def claim(s: Session, vm_ref: str, action: str) -> tuple[Vm, str]:
    """Move the VM into the action's transitional state, or raise 404/409. Returns the VM and its old state."""
    allowed, transitional, _ = ACTIONS[action]
    vm = s.get(Vm, vm_ref) or s.scalar(select(Vm).where(Vm.name == vm_ref, Vm.external.is_(False)))
    if vm is None:
        raise NotFound(f"no VM {vm_ref!r}")
    if vm.external and action == "start":
        raise Conflict(f"VM {vm.name} is external (not created by Corral); Corral does not start it")
    old = vm.state
    if old not in allowed:
        raise Conflict(f"cannot {action} VM {vm.name} while it is {old}", state=old)
    if transitional is not None:
        res = s.execute(update(Vm).where(Vm.id == vm.id, Vm.state == old)
                        .values(state=transitional, state_reason=f"{action} requested", state_changed_at=utcnow())
                        .execution_options(synchronize_session=False))
        if getattr(res, "rowcount", 1) != 1:
            raise Conflict(f"VM {vm.name} changed state meanwhile; try again")
        s.refresh(vm)
    return vm, old


def _target(s: Session, host_id: str | None) -> tuple[AgentTarget, str] | None:
    if host_id is None:
        return None
    # three columns, not the Host object (whose capability document would be decoded for nothing)
    h = s.execute(select(Host.agent_url, Host.agent_token, Host.name).where(Host.id == host_id)).first()
    return None if h is None else (AgentTarget(h[0], h[1]), h[2])


def apply_info(s: Session, vm_id: str, host_id: str, info: dict[str, Any], action: str) -> dict[str, Any]:
    """Store what the agent says after an action; returns the task result."""
    vm = s.get(Vm, vm_id)
    if vm is None:
        return {}
    state = agent_state(info)
    on_host = state in ON_HOST or state == VmState.UNKNOWN.value
    if vm.state != state:
        vm.state_changed_at = utcnow()
        record(s, "vm_state", f"VM {vm.name} is {state} ({action})", object_type="vm", object_id=vm.id,
               detail={"host_id": host_id, "action": action})
    vm.state, vm.state_reason = state, reason_of(info)
    vm.host_id = host_id if on_host else None
    vm.last_host_id = host_id
    return {"vm_id": vm.id, "state": state, "host_id": host_id}


def lost_start(s: Session, vm_id: str, name: str, host_id: str, host_name: str, exc: BaseException) -> None:
    """The start request may have reached the host but its answer never came (connection dropped, timeout,
    the task cancelled): the VM may be running there. It becomes ``unknown`` *on that host*, not ``down``:
    a down VM could be started again on another host, on the same disks. The host's next full report settles
    it (up there, or down when the host does not have it)."""
    detail = exc.message if isinstance(exc, AgentError) else (type(exc).__name__ + (f": {exc}" if str(exc) else ""))
    reason = f"start sent to {host_name} but no answer came ({detail}); the VM may be running there"
    s.execute(update(Vm).where(Vm.id == vm_id).values(state=VmState.UNKNOWN.value, state_reason=reason,
                                                      host_id=host_id, last_host_id=host_id,
                                                      state_changed_at=utcnow()))
    record(s, "vm_state", f"VM {name} is unknown ({reason})", severity=Severity.WARNING,
           object_type="vm", object_id=vm_id,
           detail={"from": VmState.STARTING.value, "to": VmState.UNKNOWN.value, "host_id": host_id})


def restore(s: Session, vm_id: str, state: str, reason: str) -> None:
    s.execute(update(Vm).where(Vm.id == vm_id).values(state=state, state_reason=reason, state_changed_at=utcnow()))


async def start(ctx: EngineContext, task: TaskContext, vm_id: str, old_state: str,
                host_ref: str | None, claimed: Vm | None = None) -> dict[str, Any]:
    """``claimed``: the row ``claim`` returned (its spec cannot change while the VM is starting), which saves
    reading it again when no host is named."""
    def load(s: Session) -> tuple[dict[str, Any], str, str | None, str, str | None]:
        vm = s.get(Vm, vm_id)
        assert vm is not None and vm.spec is not None
        only = None
        if host_ref is not None:
            h = s.get(Host, host_ref) or s.scalar(select(Host).where(Host.name == host_ref))
            if h is None:
                raise NotFound(f"no host {host_ref!r}", field="host")
            if h.cluster_id != vm.cluster_id:
                raise Conflict(f"host {h.name} is not in the VM's cluster", field="host")
            only = h.id
        _progress(s, task, "choosing a host")
        return vm.spec, vm.name, vm.last_host_id, vm.cluster_id, only

    restored = False  # the VM's state was already set by the failure's own rule (``lost_start``)
    try:
        if claimed is not None and host_ref is None and claimed.spec is not None:
            spec_json, name, former, cluster_id, only = (claimed.spec, claimed.name, claimed.last_host_id,
                                                         claimed.cluster_id, None)
        else:
            spec_json, name, former, cluster_id, only = await ctx.db.run(load)
        if any(not n.get("mac") for n in spec_json.get("nics") or []):  # stored before the engine chose MACs
            spec_json = await macs.run(ctx.db, lambda s: macs.fill_before_start(s, vm_id))
        spec = parse_spec(spec_json)
        # the cluster's console policy may have changed since the spec was stored (issue 14)
        await ctx.db.run_read(lambda s: consolepolicy.check(spec, s.get_one(Cluster, cluster_id)))
        volumes: list[vmvolumes.DiskVolume] = []
        if any(d.volume is not None for d in spec.disks):
            volumes = await ctx.db.run_read(lambda s: vmvolumes.resolve(s, cluster_id, spec))
        nets: tuple[NetworkNeed, ...] = ()
        if networks.named(spec):  # logical networks: their bridges, which placement requires (issue 18)
            nets = await ctx.db.run_read(lambda s: networks.needs(s, cluster_id, spec))
            spec = networks.for_host(spec, nets)
        policy, candidates = await ctx.scheduler.candidates(ctx.db, cluster_id)
        placement = await ctx.scheduler.place(vmvolumes.for_host(spec, volumes, pending_too=False), candidates,
                                              flavor_policy=policy, only_host=only,
                                              storage=vmvolumes.needs(volumes), networks=nets)
        if placement.host_id is not None:  # at once, before another start places against the same figures
            ctx.scheduler.claim(cluster_id, vm_id, placement.host_id, placement.memory_mib)
        decision = placement.as_dict()

        def save_placement(s: Session) -> tuple[tuple[AgentTarget, str] | None, tuple[AgentTarget, str] | None]:
            s.execute(update(Vm).where(Vm.id == vm_id).values(placement=decision))
            if placement.host_id is None:
                record(s, "vm_no_host", f"no host can run VM {name}: {placement.summary() or 'no hosts'}",
                       severity=Severity.WARNING, object_type="vm", object_id=vm_id, detail=decision)
                return None, None
            record(s, "vm_placed", f"VM {name} placed on {placement.host_name}", object_type="vm",
                   object_id=vm_id, detail=decision)
            _progress(s, task, f"starting on {placement.host_name}")
            return _target(s, placement.host_id), _target(s, former) if former != placement.host_id else None
        chosen, old = await ctx.db.run(save_placement)
        if placement.host_id is None:
            raise Conflict(f"no host can run VM {name}: {placement.summary() or 'the cluster has no hosts'}",
                           code="no_host", rejections=decision["rejected"], placement=decision)
        host_id = placement.host_id
        assert chosen is not None
        target, host_name = chosen
        if old is not None:
            await _undefine(ctx, old[0], vm_id)
        if any(v.pending for v in volumes):
            await task.progress(f"creating the VM's volumes on {host_name}")
            volumes = await vmvolumes.make_pending(ctx.db, ctx.agents, target, host_id, host_name, volumes)
        spec = vmvolumes.for_host(spec, volumes)
        try:
            try:
                info = await ctx.agents.create_vm(target, spec.model_dump(mode="json"), start=True)
            except AgentError as exc:
                if exc.status != 409:
                    raise
                # the host has a definition of this VM from an earlier run: replace it with the current spec
                await _undefine(ctx, target, vm_id)
                info = await ctx.agents.create_vm(target, spec.model_dump(mode="json"), start=True)
        except (AgentUnreachable, TimeoutError, asyncio.CancelledError) as exc:
            if not isinstance(exc, AgentUnreachable) or exc.maybe_delivered:
                lost: BaseException = exc
                await ctx.db.run(lambda s: lost_start(s, vm_id, name, host_id, host_name, lost))
                restored = True
            raise
        result = await ctx.db.run(lambda s: apply_info(s, vm_id, host_id, info, "start"))
        return {**result, "host": host_name, "placement": decision}
    except BaseException as exc:
        if not restored:
            reason = exc.message if isinstance(exc, (ApiError, AgentError)) else f"start failed: {exc}"
            await ctx.db.run(lambda s: restore(s, vm_id, old_state if old_state != "crashed" else "down", reason))
        raise
    finally:
        ctx.scheduler.release(vm_id)


def _progress(s: Session, task: TaskContext, message: str) -> None:
    """``TaskContext.progress`` inside a transaction the start makes anyway (one commit less each)."""
    s.execute(update(Task).where(Task.id == task.id).values(message=message, updated_at=utcnow()))


async def _undefine(ctx: EngineContext, target: AgentTarget, vm_id: str) -> None:
    try:
        await ctx.agents.delete_vm(target, vm_id)
    except AgentError as exc:
        if exc.code != "not_found" and exc.status != 404:
            raise


async def simple(ctx: EngineContext, task: TaskContext, vm_id: str, action: str, old_state: str,
                 body: dict[str, Any] | None) -> dict[str, Any]:
    """shutdown / stop / reboot / pause / resume on the VM's current host."""
    _, _, endpoint = ACTIONS[action]
    def where(s: Session) -> tuple[str | None, tuple[AgentTarget, str] | None]:
        vm = s.get(Vm, vm_id)
        return (None, None) if vm is None else (vm.host_id, _target(s, vm.host_id))

    host_id, target = await ctx.db.run(where)
    try:
        if host_id is None or target is None:
            raise Conflict("the VM has no current host", code="conflict")
        await task.progress(f"{action} on {target[1]}")
        b = body or {}
        if action == "shutdown":
            info = await ctx.agents.shutdown(target[0], vm_id, timeout=int(b.get("timeout", 60)),
                                             force=bool(b.get("force", False)))
        elif action == "stop" and b.get("timeout") is not None:
            info = await ctx.agents.shutdown(target[0], vm_id, timeout=int(b["timeout"]), force=True)
        else:
            info = await ctx.agents.action(target[0], vm_id, endpoint)
    except BaseException as exc:
        if ACTIONS[action][1] is not None:
            reason = exc.message if isinstance(exc, (ApiError, AgentError)) else str(exc)
            await ctx.db.run(lambda s: restore(s, vm_id, old_state, f"{action} failed: {reason}"))
        raise
    return await ctx.db.run(lambda s: apply_info(s, vm_id, host_id, info, action))
