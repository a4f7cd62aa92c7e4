"""Live migration behind the API (issue 13; docs/migration.md): claim, choose the destination, let the source's
agent migrate, follow its progress, hand the VM to the destination.

- Claim: ``up`` -> ``migrating`` with one conditional UPDATE (two clients cannot both win); the task holds the
  VM busy so monitoring does not take the VM's absence from the source (or its arrival elsewhere) for a change.
- Destination: the scheduler's placement over the VM's cluster minus its current host (the same filters as a
  start: state, flavor policy, memory, CPUs, bridges, networks, storage -- a volume that lives on the source
  only keeps the VM there), or only the named host, which must pass them too. Then CPU compatibility: the
  source's agent compares the VM's CPU with the destination's hypervisor (``virConnectCompareHypervisorCPU``
  there; ``virConnectCompareCPU`` where that is unsupported; ``unknown`` said by name where neither is). An
  incompatible host is rejected with libvirt's reason and the next best is tried.
- The destination's agent says how its libvirtd is reached (``GET /v1/migration/endpoint``); the source's agent
  migrates (``POST /v1/vms/{id}/migrate``); the task polls its progress (``GET .../migration``) into its message
  and ``result.progress``; ``DELETE /api/v1/tasks/{id}`` asks the source's agent to abort (refused by name
  where the flavor has no abort). On success the destination's agent adopts the VM and the VM's row moves
  there (same spec: device ids, MACs, console); on failure or cancel the VM stays on its source, running,
  with the reason in the task, the VM's state reason and an event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.domain.spec import parse_spec
from corral.engine import networks, vmvolumes
from corral.engine.agent_client import AgentError, AgentTarget
from corral.engine.context import EngineContext
from corral.engine.db.models import Host, Severity, Task, Vm, VmState, utcnow
from corral.engine.errors import ApiError, Conflict, NotFound
from corral.engine.events import record
from corral.engine.reconcile import agent_state, reason_of
from corral.engine.scheduler import NetworkNeed, Placement
from corral.engine.tasks import TaskContext

POLL_S = 0.5
MIGRATABLE = (VmState.UP.value,)
MAX_CPU_TRIES = 5  # destinations rejected for their CPU before the migration gives up


def claim(s: Session, vm_ref: str, host_ref: str | None = None) -> Vm:
    """``up`` -> ``migrating``, or 404/409 naming why not (a named destination that is the VM's own host or in
    another cluster too, before any task exists)."""
    vm = s.get(Vm, vm_ref) or s.scalar(select(Vm).where(Vm.name == vm_ref, Vm.external.is_(False)))
    if vm is None:
        raise NotFound(f"no VM {vm_ref!r}")
    if vm.external or vm.spec is None:
        raise Conflict(f"VM {vm.name} is external (not created by Corral); Corral does not migrate it")
    if vm.state not in MIGRATABLE or vm.host_id is None:
        raise Conflict(f"cannot migrate VM {vm.name} while it is {vm.state}: only a running VM migrates live",
                       state=vm.state)
    if host_ref is not None:
        h = s.get(Host, host_ref) or s.scalar(select(Host).where(Host.name == host_ref))
        if h is None:
            raise NotFound(f"no host {host_ref!r}", field="host")
        if h.cluster_id != vm.cluster_id:
            raise Conflict(f"host {h.name} is not in the VM's cluster", field="host")
        if h.id == vm.host_id:
            raise Conflict(f"VM {vm.name} runs on {h.name} already", field="host")
    res = s.execute(update(Vm).where(Vm.id == vm.id, Vm.state == vm.state)
                    .values(state=VmState.MIGRATING.value, state_reason="migration requested",
                            state_changed_at=utcnow())
                    .execution_options(synchronize_session=False))
    if getattr(res, "rowcount", 1) != 1:
        raise Conflict(f"VM {vm.name} changed state meanwhile; try again")
    s.refresh(vm)
    return vm


def _target(s: Session, host_id: str) -> tuple[AgentTarget, str]:
    h = s.execute(select(Host.agent_url, Host.agent_token, Host.name).where(Host.id == host_id)).one()
    return AgentTarget(h[0], h[1]), h[2]


def _progress_text(dest: str, status: dict[str, Any]) -> str:
    elapsed = f"{status.get('elapsed_s', 0):.1f} s"
    percent, total = status.get("percent"), status.get("data_total")
    if percent is None:
        return f"migrating to {dest}: {elapsed}"
    done = (total or 0) - (status.get("data_remaining") or 0)
    return f"migrating to {dest}: {percent:.0f}% ({done // 2**20}/{(total or 0) // 2**20} MiB), {elapsed}"


async def _set_progress(ctx: EngineContext, task: TaskContext, message: str, progress: dict[str, Any]) -> None:
    def write(s: Session) -> None:
        s.execute(update(Task).where(Task.id == task.id)
                  .values(message=message, result={"progress": progress}, updated_at=utcnow()))
    await ctx.db.run(write)


class Migration:
    """One VM's migration, run by its task."""

    def __init__(self, ctx: EngineContext, task: TaskContext, vm_id: str, host_ref: str | None,
                 bandwidth_mib: int | None, live: bool = True) -> None:
        self.ctx, self.task, self.vm_id = ctx, task, vm_id
        self.host_ref, self.bandwidth_mib, self.live = host_ref, bandwidth_mib, live
        self.name = ""
        self.source_id = ""
        self.source: tuple[AgentTarget, str] | None = None

    async def run(self) -> dict[str, Any]:
        ctx = self.ctx
        try:
            spec_json, cluster_id, only = await ctx.db.run(self._load)
            placement, dest_id, uri = await self._destination(spec_json, cluster_id, only)
            return await self._migrate(placement, dest_id, uri)
        except BaseException as exc:
            await self._stay(exc)
            raise
        finally:
            ctx.tasks.cancellers.pop(self.task.id, None)
            ctx.scheduler.release(self.vm_id)

    def _load(self, s: Session) -> tuple[dict[str, Any], str, str | None]:
        vm = s.get_one(Vm, self.vm_id)
        assert vm.spec is not None and vm.host_id is not None
        self.name, self.source_id = vm.name, vm.host_id
        self.source = _target(s, vm.host_id)
        only = None
        if self.host_ref is not None:
            h = s.get(Host, self.host_ref) or s.scalar(select(Host).where(Host.name == self.host_ref))
            if h is None:
                raise NotFound(f"no host {self.host_ref!r}", field="host")
            if h.cluster_id != vm.cluster_id:
                raise Conflict(f"host {h.name} is not in the VM's cluster", field="host")
            if h.id == vm.host_id:
                raise Conflict(f"VM {vm.name} runs on {h.name} already", field="host")
            only = h.id
        return vm.spec, vm.cluster_id, only

    async def _destination(self, spec_json: dict[str, Any], cluster_id: str,
                           only: str | None) -> tuple[Placement, str, str]:
        """The best host that passes placement and the CPU check, and its libvirt endpoint."""
        ctx = self.ctx
        assert self.source is not None
        await self.task.progress("choosing a destination")
        spec = parse_spec(spec_json)
        volumes: list[vmvolumes.DiskVolume] = []
        if any(d.volume is not None for d in spec.disks):
            volumes = await ctx.db.run_read(lambda s: vmvolumes.resolve(s, cluster_id, spec))
        nets: tuple[NetworkNeed, ...] = ()
        if networks.named(spec):
            nets = await ctx.db.run_read(lambda s: networks.needs(s, cluster_id, spec))
            spec = networks.for_host(spec, nets)
        placed_spec = vmvolumes.for_host(spec, volumes, pending_too=False)
        policy, candidates = await ctx.scheduler.candidates(ctx.db, cluster_id)
        excluded: dict[str, dict[str, Any]] = {
            self.source_id: {"host": self.source[1], "reasons": ["the VM runs here (the migration's source)"]}}
        # a running guest moves only to the hypervisor it runs on: same flavor and the same acceleration (a
        # KVM guest's state cannot resume under TCG, nor a QEMU guest under Xen)
        src = next((c for c in candidates if c.id == self.source_id), None)
        for c in candidates:
            if src is not None and c.id != src.id and (c.flavor, c.accel) != (src.flavor, src.accel):
                excluded[c.id] = {"host": c.name, "reasons": [
                    f"a running VM moves only between hosts of one hypervisor: this host is {c.flavor}"
                    f"{f' ({c.accel})' if c.accel else ''}, the VM runs on {src.flavor}"
                    f"{f' ({src.accel})' if src.accel else ''}"]}
        for _ in range(MAX_CPU_TRIES):
            pool = [c for c in candidates if c.id not in excluded]
            placement = await ctx.scheduler.place(placed_spec, pool, flavor_policy=policy, only_host=only,
                                                  storage=vmvolumes.needs(volumes), networks=nets)
            placement.rejected.update({k: v for k, v in excluded.items() if only is None or k == only})
            if placement.host_id is None:
                break
            dest_id = placement.host_id
            dest_target, dest_name = await ctx.db.run_read(lambda s: _target(s, dest_id))  # noqa: B023
            try:
                endpoint = await ctx.agents.request(dest_target, "GET", "/v1/migration/endpoint")
                check = await ctx.agents.request(self.source[0], "POST", f"/v1/vms/{self.vm_id}/migration/check",
                                                 json_body={"destination": endpoint["uri"]}, timeout=60.0)
            except AgentError as exc:
                excluded[placement.host_id] = {"host": dest_name, "reasons": [f"cannot receive a migration: "
                                                                              f"{exc.message}"]}
                continue
            if check.get("result") == "incompatible":
                excluded[placement.host_id] = {"host": dest_name, "reasons": [f"CPU incompatible: {check['detail']}"]}
                continue
            decision = {**placement.as_dict(), "cpu": check, "endpoint": endpoint}
            message = f"VM {self.name}: migration from {self.source[1]} to {dest_name}"
            await ctx.db.run(lambda s: record(s, "vm_migration_started", message, object_type="vm",  # noqa: B023
                                              object_id=self.vm_id, detail=decision))  # noqa: B023
            ctx.scheduler.claim(cluster_id, self.vm_id, dest_id, placement.memory_mib)
            return placement, dest_id, str(endpoint["uri"])
        else:
            placement = Placement(None, None, excluded)
        summary = "; ".join(f"{v['host']}: {', '.join(v['reasons'])}" for v in placement.rejected.values())
        raise Conflict(f"no host can take VM {self.name}: {summary or 'the cluster has no other host'}",
                       code="no_host", rejections=placement.as_dict()["rejected"])

    async def _migrate(self, placement: Placement, dest_id: str, uri: str) -> dict[str, Any]:
        ctx, task = self.ctx, self.task
        assert self.source is not None
        source, source_name = self.source
        dest_name = placement.host_name or dest_id
        body: dict[str, Any] = {"destination": uri, "live": self.live}
        if self.bandwidth_mib is not None:
            body["bandwidth_mib"] = self.bandwidth_mib
        await task.progress(f"migrating to {dest_name}")
        started = time.monotonic()
        status = await ctx.agents.request(source, "POST", f"/v1/vms/{self.vm_id}/migrate", json_body=body,
                                          timeout=60.0)

        async def cancel() -> None:
            await ctx.agents.request(source, "DELETE", f"/v1/vms/{self.vm_id}/migration", timeout=60.0)
        ctx.tasks.cancellers[task.id] = cancel
        while status.get("state") == "running":
            await _set_progress(ctx, task, _progress_text(dest_name, status), _progress_of(status))
            await asyncio.sleep(POLL_S)
            status = await ctx.agents.request(source, "GET", f"/v1/vms/{self.vm_id}/migration")
        ctx.tasks.cancellers.pop(task.id, None)
        if status.get("state") != "completed":
            error = status.get("error") or {}
            code = "cancelled" if status.get("state") == "cancelled" else str(error.get("code") or "migration_failed")
            raise ApiError(f"migration of VM {self.name} to {dest_name} {status.get('state')}: "
                           f"{error.get('message') or 'no reason given'}", code=code, status=409,
                           progress=_progress_of(status))
        dest_target, _ = await ctx.db.run_read(lambda s: _target(s, dest_id))
        info = await ctx.agents.request(dest_target, "POST", f"/v1/vms/{self.vm_id}/adopt", timeout=60.0)
        elapsed = round(time.monotonic() - started, 3)

        def arrive(s: Session) -> dict[str, Any]:
            vm = s.get_one(Vm, self.vm_id)
            state = agent_state(info)
            vm.host_id = vm.last_host_id = dest_id
            vm.state, vm.state_reason, vm.state_changed_at = state, reason_of(info) or "migrated", utcnow()
            record(s, "vm_migrated", f"VM {self.name} migrated from {source_name} to {dest_name} in {elapsed} s",
                   object_type="vm", object_id=self.vm_id,
                   detail={"from_host_id": self.source_id, "host_id": dest_id, "elapsed_s": elapsed,
                           "agent_elapsed_s": status.get("elapsed_s")})
            return {"vm_id": self.vm_id, "state": state, "host_id": dest_id, "host": dest_name,
                    "from_host_id": self.source_id, "from_host": source_name, "elapsed_s": elapsed,
                    "progress": _progress_of(status), "placement": placement.as_dict()}
        return dict(await ctx.db.run(arrive))

    async def _stay(self, exc: BaseException) -> None:
        """The VM did not move: it stays on its source, in the state its agent reports (running, normally)."""
        reason = exc.message if isinstance(exc, (ApiError, AgentError)) else f"{type(exc).__name__}: {exc}"
        info: dict[str, Any] | None = None
        if self.source is not None:
            try:
                info = await self.ctx.agents.get_vm(self.source[0], self.vm_id)
            except (AgentError, OSError):
                info = None
        state = agent_state(info) if info is not None else VmState.UNKNOWN.value
        cancelled = isinstance(exc, ApiError) and exc.code == "cancelled"

        def write(s: Session) -> None:
            s.execute(update(Vm).where(Vm.id == self.vm_id, Vm.state == VmState.MIGRATING.value)
                      .values(state=state, state_reason=f"migration {'cancelled' if cancelled else 'failed'}: "
                                                        f"{reason}"[:1000], state_changed_at=utcnow()))
            record(s, "vm_migration_cancelled" if cancelled else "vm_migration_failed",
                   f"VM {self.name or self.vm_id} stays on {self.source[1] if self.source else 'its host'}: {reason}",
                   severity=Severity.WARNING if cancelled else Severity.ERROR, object_type="vm",
                   object_id=self.vm_id, detail={"host_id": self.source_id or None, "state": state})
        await self.ctx.db.run(write)


def _progress_of(status: dict[str, Any]) -> dict[str, Any]:
    keys = ("state", "percent", "data_total", "data_processed", "data_remaining", "elapsed_s")
    return {k: status.get(k) for k in keys}
