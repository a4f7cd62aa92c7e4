"""High availability: a host that stopped answering is fenced, and only then are its HA VMs started elsewhere.

The monitor makes a host ``unreachable`` after ``MonitorSettings.unreachable_after`` missed polls (the issue's
"non_responsive": one state, not two) and its VMs ``unknown``. After every monitoring cycle the monitor kicks
this controller (``Monitor.cycle_hooks``), which works in the background, one tick at a time:

1. An unreachable host with HA VMs on it and no fencing yet is **fenced**: ``fence_state`` ``fencing``, its
   power management agent runs ``off`` then ``status`` (``corral.engine.fencing``), and the host becomes
   ``fenced`` or ``fence_failed`` with the reason. A host without power management is ``fence_failed`` at once.
   Every step is an event; a failure's event asks the operator to check the host and confirm it was rebooted
   (``POST /hosts/{id}/confirm-rebooted``: ``confirmed``).
2. Only a ``fenced`` or ``confirmed`` host's VMs are released: all of them become ``down`` (no longer on that
   host, which is neither their current nor their last host any more: a later start does not try to undefine
   them on a dead host), and the HA ones owe a restart (``vms.ha_pending_since``). Without a successful fence
   nothing is released and nothing restarted: a host that merely lost its network may still run them, and
   two copies on shared disks would destroy them (no split brain).
3. Owed restarts go through the normal start path (a ``vm_start`` task, the scheduler, which places only on
   ``up`` hosts, so never on the fenced one): highest ``ha_priority`` first, at most ``restart_parallel`` at
   once. A VM that cannot be placed keeps its debt, gets an event with the reason (again only when the reason
   changes), and is tried again after a backoff that starts at the next cycle and doubles up to ``retry_max``.
   The debt ends when the VM runs (or is no longer down, or no longer HA).

A host that answers again has its fencing state cleared (an event says so). Fencing state lives in the
database, so an engine restarted during a fence finds ``fencing`` and fences again (``off`` is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.engine import fencing, vmops
from corral.engine.agent_client import AgentError
from corral.engine.context import EngineContext
from corral.engine.db.models import Host, HostState, Severity, Vm, VmState, utcnow
from corral.engine.errors import ApiError
from corral.engine.events import event_row, record_many
from corral.engine.tasks import TaskContext

log = logging.getLogger(__name__)

FENCING, FENCED, FENCE_FAILED, CONFIRMED = "fencing", "fenced", "fence_failed", "confirmed"
RELEASED = (FENCED, CONFIRMED)  # a host whose VMs may be started elsewhere
CONFIRM_HINT = ("check the host is powered off or was rebooted, then confirm it "
                "(corral host confirm-rebooted, or POST /api/v1/hosts/{id}/confirm-rebooted)")


@dataclass
class HaSettings:
    restart_parallel: int = 2
    status_tries: int = 5
    status_delay: float = 1.0
    retry_max: float = 60.0


@dataclass
class _Fence:
    host_id: str
    name: str
    config: dict[str, Any]


@dataclass
class _Retry:
    after: float = 0.0
    delay: float = 0.0
    reason: str = ""


@dataclass
class _Scan:
    fences: list[_Fence] = field(default_factory=list)
    restarts: list[tuple[str, str]] = field(default_factory=list)  # (vm id, name), highest priority first


def set_fence_state(s: Session, host_id: str, state: str, reason: str, events: list[dict[str, Any]]) -> None:
    s.execute(update(Host).where(Host.id == host_id).values(fence_state=state, fence_reason=reason,
                                                            fence_changed_at=utcnow()))
    record_many(s, events)


def _host_event(type_: str, message: str, host_id: str, severity: Severity = Severity.INFO,
                detail: dict[str, Any] | None = None) -> dict[str, Any]:
    return event_row(type_, message, severity=severity, object_type="host", object_id=host_id, detail=detail)


class HaController:
    """Fences lost hosts and restarts their HA VMs (module docstring). ``kick`` after each monitoring cycle."""

    def __init__(self, ctx: EngineContext, settings: HaSettings | None = None) -> None:
        self.ctx = ctx
        self.settings = settings or HaSettings()
        self._task: asyncio.Task[None] | None = None
        self._fencing: set[str] = set()  # hosts whose agent runs now (this process)
        self._retry: dict[str, _Retry] = {}
        self._restarting: set[str] = set()

    def kick(self) -> None:
        """Run a tick in the background unless one runs (a slow fence does not hold up monitoring)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._safe_tick(), name="ha-tick")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _safe_tick(self) -> None:
        try:
            await self.tick()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HA tick failed")

    async def tick(self) -> None:
        scan = await self.ctx.db.run(self._scan)
        if scan.fences:
            await asyncio.gather(*(self._fence(f) for f in scan.fences))
            scan = await self.ctx.db.run(self._scan)  # a host just fenced: its VMs now
        await self._restart(scan.restarts)

    # --- reading and releasing, one transaction --------------------------------------------------------------
    def _scan(self, s: Session) -> _Scan:
        out = _Scan()
        events: list[dict[str, Any]] = []
        busy = set(self.ctx.tasks.busy_vms)
        rows = s.execute(select(Host.id, Host.name, Host.state, Host.fence, Host.fence_state)
                         .where((Host.state == HostState.UNREACHABLE.value) | (Host.fence_state != ""))).all()
        for host_id, name, state, config, fstate in rows:
            if host_id in self._fencing:
                continue
            if state != HostState.UNREACHABLE.value:
                s.execute(update(Host).where(Host.id == host_id).values(fence_state="", fence_reason="",
                                                                        fence_changed_at=utcnow()))
                events.append(_host_event("host_fence_cleared", f"host {name} is {state}: its fencing state "
                                          f"({fstate}) is cleared", host_id))
            elif fstate in RELEASED:
                self._release(s, host_id, name, fstate, busy, events)
            elif fstate in ("", FENCING) and self._has_ha_vms(s, host_id):
                if not config or not config.get("agent"):
                    reason = f"no power management configured; {CONFIRM_HINT}"
                    set_fence_state(s, host_id, FENCE_FAILED, reason, [_host_event(
                        "host_fence_failed", f"host {name} cannot be fenced: {reason}", host_id, Severity.ERROR)])
                else:
                    out.fences.append(_Fence(host_id, name, dict(config)))
        record_many(s, events)
        out.restarts = self._owed(s, busy)
        return out

    @staticmethod
    def _has_ha_vms(s: Session, host_id: str) -> bool:
        return s.scalar(select(Vm.id).where(Vm.host_id == host_id, Vm.ha.is_(True)).limit(1)) is not None

    @staticmethod
    def _release(s: Session, host_id: str, name: str, fstate: str, busy: set[str],
                 events: list[dict[str, Any]]) -> None:
        """A fenced (or confirmed) host's VMs are down, off that host; the HA ones owe a restart."""
        vms = s.execute(select(Vm.id, Vm.name, Vm.ha, Vm.state).where(Vm.host_id == host_id)).all()
        now = utcnow()
        how = "fenced" if fstate == FENCED else "confirmed rebooted by the operator"
        for vm_id, vm_name, ha, state in vms:
            if vm_id in busy:
                continue
            reason = f"host {name} was {how}" + ("; HA restart pending" if ha else "")
            s.execute(update(Vm).where(Vm.id == vm_id, Vm.host_id == host_id).values(
                state=VmState.DOWN.value, state_reason=reason, host_id=None, last_host_id=None,
                state_changed_at=now, ha_pending_since=now if ha else None))
            events.append(event_row("vm_state", f"VM {vm_name} is down ({reason})", severity=Severity.WARNING,
                                    object_type="vm", object_id=vm_id,
                                    detail={"from": state, "to": VmState.DOWN.value, "host_id": host_id,
                                            "ha": bool(ha)}))

    def _owed(self, s: Session, busy: set[str]) -> list[tuple[str, str]]:
        rows = s.execute(select(Vm.id, Vm.name, Vm.state, Vm.ha).where(Vm.ha_pending_since.is_not(None))
                         .order_by(Vm.ha_priority.desc(), Vm.ha_pending_since, Vm.name)).all()
        owed = []
        for vm_id, name, state, ha in rows:
            if vm_id in busy or vm_id in self._restarting:
                continue
            if not ha or state not in (VmState.DOWN.value, VmState.CRASHED.value):
                s.execute(update(Vm).where(Vm.id == vm_id).values(ha_pending_since=None))
                self._retry.pop(vm_id, None)
                continue
            owed.append((vm_id, name))
        return owed

    # --- fencing ---------------------------------------------------------------------------------------------
    async def _fence(self, f: _Fence) -> None:
        self._fencing.add(f.host_id)
        try:
            agent = f.config.get("agent")
            await self.ctx.db.run(lambda s: set_fence_state(s, f.host_id, FENCING, f"running {agent} off", [
                _host_event("host_fencing", f"host {f.name} does not answer and runs HA VMs: fencing it with "
                            f"{agent}", f.host_id, Severity.WARNING)]))
            outcome = await fencing.fence_off(f.config, f.name, status_tries=self.settings.status_tries,
                                              status_delay=self.settings.status_delay)
            runs = [r.as_dict() for r in outcome.runs]
            if outcome.fenced:
                state, reason = FENCED, outcome.reason
                ev = _host_event("host_fenced", f"host {f.name} fenced: {outcome.reason}", f.host_id,
                                 Severity.WARNING, {"runs": runs})
            else:
                state, reason = FENCE_FAILED, f"{outcome.reason}; nothing restarted; {CONFIRM_HINT}"
                ev = _host_event("host_fence_failed", f"fencing host {f.name} failed: {reason}", f.host_id,
                                 Severity.ERROR, {"runs": runs})
            # written even if the host answered meanwhile: the next scan clears the state of a host that is up
            await self.ctx.db.run(lambda s: set_fence_state(s, f.host_id, state, reason, [ev]))
        finally:
            self._fencing.discard(f.host_id)

    # --- restarting ------------------------------------------------------------------------------------------
    async def _restart(self, owed: list[tuple[str, str]]) -> None:
        now = time.monotonic()
        due = [(v, n) for v, n in owed if self._retry.get(v, _Retry()).after <= now]
        if not due:
            return
        gate = asyncio.Semaphore(max(1, self.settings.restart_parallel))

        async def one(vm_id: str, name: str) -> None:
            async with gate:
                await self._restart_one(vm_id, name)

        self._restarting.update(v for v, _ in due)
        try:
            await asyncio.gather(*(one(v, n) for v, n in due))
        finally:
            self._restarting.difference_update(v for v, _ in due)

    async def _restart_one(self, vm_id: str, name: str) -> None:
        ctx = self.ctx
        try:
            row, old = await ctx.db.run(lambda s: vmops.claim(s, vm_id, "start"))
        except ApiError:
            return  # its state changed meanwhile (started by hand, deleted): the next scan settles its debt
        done = asyncio.Event()
        failure: list[BaseException] = []

        async def work(task: TaskContext) -> dict[str, Any]:
            try:
                return await vmops.start(ctx, task, vm_id, old, None, claimed=row)
            except BaseException as exc:
                failure.append(exc)
                raise
            finally:
                done.set()

        await ctx.db.run(lambda s: record_many(s, [event_row(
            "vm_ha_restart", f"HA restart of VM {name} (its host was fenced)", object_type="vm", object_id=vm_id)]))
        await ctx.tasks.submit("vm_start", work, object_type="vm", object_id=vm_id, busy_vm=vm_id,
                               message=f"HA restart of {name}")
        await done.wait()
        if not failure:
            self._retry.pop(vm_id, None)
            await ctx.db.run(lambda s: s.execute(update(Vm).where(Vm.id == vm_id).values(ha_pending_since=None)))
            return
        exc = failure[0]
        reason = exc.message if isinstance(exc, (ApiError, AgentError)) else f"{type(exc).__name__}: {exc}"
        retry = self._retry.setdefault(vm_id, _Retry())
        retry.delay = min(self.settings.retry_max, max(retry.delay * 2, 0.5))
        retry.after = time.monotonic() + retry.delay
        if retry.reason != reason:
            retry.reason = reason
            await ctx.db.run(lambda s: record_many(s, [event_row(
                "vm_ha_restart_failed", f"HA restart of VM {name} failed: {reason}; tried again later",
                severity=Severity.ERROR, object_type="vm", object_id=vm_id)]))


def fence_view(h: Host) -> dict[str, Any]:
    """A host's power management and fencing state, as the API answers it (secrets redacted)."""
    changed: datetime | None = h.fence_changed_at
    return {"host_id": h.id, "host": h.name, "host_state": h.state, "config": fencing.redacted(h.fence),
            "state": h.fence_state or "", "reason": h.fence_reason or "",
            "changed_at": changed.isoformat() if changed else None}
