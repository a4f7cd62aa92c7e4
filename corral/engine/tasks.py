"""Long operations: the API answers ``202`` with a task row and runs the work in the background.

Tasks run in the engine's event loop; their rows are the durable record a client polls
(``GET /api/v1/tasks/{id}``). A task may hold a VM "busy" so monitoring does not overwrite the transitional
state (``starting``, ``shutting_down``) the task set. Tasks still pending or running when the engine stops
cannot finish; ``fail_orphans`` marks them failed at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.engine.agent_client import AgentError
from corral.engine.db.models import Host, Severity, Task, TaskState, Vm, VmState, utcnow
from corral.engine.db.session import Database
from corral.engine.errors import ApiError
from corral.engine.events import record
from corral.engine.ids import new_id

log = logging.getLogger(__name__)

Work = Callable[["TaskContext"], Awaitable[dict[str, Any] | None]]


@dataclass
class TaskContext:
    """Handed to a task's coroutine: its id and a way to report progress."""

    id: str
    runner: TaskRunner

    async def progress(self, message: str) -> None:
        def write(s: Session) -> None:
            s.execute(update(Task).where(Task.id == self.id).values(message=message, updated_at=utcnow()))
        await self.runner.db.run(write)


def task_dict(t: Task) -> dict[str, Any]:
    return {"id": t.id, "kind": t.kind, "state": t.state, "object_type": t.object_type,
            "object_id": t.object_id, "message": t.message, "result": t.result, "error": t.error,
            "created_at": t.created_at, "updated_at": t.updated_at, "finished_at": t.finished_at}


def error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ApiError):
        return exc.body()
    if isinstance(exc, AgentError):
        return {"code": exc.code, "message": exc.message, "field": exc.field, "agent_status": exc.status}
    return {"code": "internal", "message": f"{type(exc).__name__}: {exc}", "field": None}


@dataclass
class TaskRunner:
    db: Database
    busy_vms: set[str] = field(default_factory=set)
    # VM id -> when (time.monotonic()) its last task ended: monitoring reports taken before that are older than
    # the task's answer and are not applied to the VM (``HostReport.superseded``); pruned by the monitor
    released: dict[str, float] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # task id -> how to cancel it, for the tasks that can be (a migration: its agent's abort); a task sets and
    # removes its own entry. ``DELETE /api/v1/tasks/{id}`` (corral.engine.api.migrate) calls it
    cancellers: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def fail_orphans(self) -> int:
        """Fail the tasks a previous run left unfinished, and release the VMs they left ``starting``.

        Monitoring corrects a VM only when a host reports it or the database has it on a host, so a VM whose
        start was cut short before it had a host would stay ``starting`` for good (and could be neither started
        nor deleted): it goes back to ``down``. If the start did reach the host, the host's first poll shows
        the VM running there. No task runs yet when this is called (the engine is starting)."""
        message = "the engine stopped before the task finished"

        def fix(s: Session) -> int:
            now = utcnow()
            rows = s.scalars(select(Task).where(Task.state.in_([TaskState.PENDING, TaskState.RUNNING]))).all()
            for t in rows:
                t.state, t.message, t.finished_at, t.updated_at = TaskState.FAILED.value, message, now, now
                t.error = {"code": "interrupted", "message": message, "field": None}
                record(s, "task_failed", f"{t.kind} failed: {message}", severity=Severity.ERROR,
                       object_type=t.object_type, object_id=t.object_id, detail={"task": t.id})
            for vm in s.scalars(select(Vm).where(Vm.state == VmState.STARTING.value)).all():
                # with a host, let that host's poll say what it is; without one it never got anywhere. The host
                # this start chose counts (its placement, written before the agent was asked): the start may
                # have reached it, and a down VM could be started elsewhere on the same disks (issue 14)
                target = _placed_by_this_start(s, vm)
                if vm.host_id is None and target is not None:
                    vm.host_id = vm.last_host_id = target
                vm.state = VmState.UNKNOWN.value if vm.host_id else VmState.DOWN.value
                vm.state_reason, vm.state_changed_at = "start interrupted: the engine stopped", now
                record(s, "vm_state", f"VM {vm.name} is {vm.state} (start interrupted by an engine restart)",
                       severity=Severity.WARNING, object_type="vm", object_id=vm.id,
                       detail={"from": VmState.STARTING.value, "to": vm.state, "host_id": vm.host_id})
            return len(rows)
        return self.db.call(fix)

    async def submit(self, kind: str, work: Work, *, object_type: str | None = None,
                     object_id: str | None = None, busy_vm: str | None = None,
                     message: str = "") -> dict[str, Any]:
        """Record a task, start ``work`` in the background, return the task as the API shows it."""
        task_id = new_id()

        def create(s: Session) -> dict[str, Any]:
            t = Task(id=task_id, kind=kind, state=TaskState.PENDING.value, object_type=object_type,
                     object_id=object_id, message=message)
            s.add(t)
            s.flush()
            return task_dict(t)

        row = await self.db.run(create)
        if busy_vm:
            self.busy_vms.add(busy_vm)
        handle = asyncio.get_running_loop().create_task(self._run(task_id, kind, work, busy_vm))
        self._tasks.add(handle)
        handle.add_done_callback(self._tasks.discard)
        return row

    async def _run(self, task_id: str, kind: str, work: Work, busy_vm: str | None) -> None:
        ctx = TaskContext(task_id, self)
        try:
            await self._set(task_id, state=TaskState.RUNNING.value)
            result = await work(ctx)
        except asyncio.CancelledError:
            await self._finish(task_id, TaskState.FAILED, error={"code": "interrupted", "field": None,
                                                                  "message": "the engine is stopping"})
            raise
        except Exception as exc:
            if not isinstance(exc, (ApiError, AgentError)):
                log.exception("task %s (%s) failed", task_id, kind)
            await self._finish(task_id, TaskState.FAILED, error=error_body(exc))
        else:
            await self._finish(task_id, TaskState.SUCCEEDED, result=result or {})
        finally:
            if busy_vm:
                self.released[busy_vm] = time.monotonic()
                self.busy_vms.discard(busy_vm)

    async def _set(self, task_id: str, **values: Any) -> None:
        def write(s: Session) -> None:
            s.execute(update(Task).where(Task.id == task_id).values(updated_at=utcnow(), **values))
        await self.db.run(write)

    async def _finish(self, task_id: str, state: TaskState, *, result: dict[str, Any] | None = None,
                      error: dict[str, Any] | None = None) -> None:
        def write(s: Session) -> None:
            now = utcnow()
            t = s.get(Task, task_id)
            if t is None:
                return
            t.state, t.result, t.error, t.finished_at, t.updated_at = state.value, result, error, now, now
            if error:
                t.message = str(error.get("message", ""))
                record(s, "task_failed", f"{t.kind} failed: {t.message}", severity=Severity.ERROR,
                       object_type=t.object_type, object_id=t.object_id, detail={"task": t.id})
        await self.db.run(write)

    async def wait_all(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self.wait_all()


def _placed_by_this_start(s: Session, vm: Vm) -> str | None:
    """The host of the VM's placement if the start that left it ``starting`` made it (the placement is newer
    than the claim) and the host still exists; else None."""
    placement = vm.placement or {}
    host_id, placed_at = placement.get("host_id"), placement.get("time")
    if not isinstance(host_id, str) or not isinstance(placed_at, str) or vm.state_changed_at is None:
        return None
    try:
        when = datetime.fromisoformat(placed_at)
    except ValueError:
        return None
    claimed = vm.state_changed_at if vm.state_changed_at.tzinfo else vm.state_changed_at.replace(tzinfo=UTC)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when < claimed or s.get(Host, host_id) is None:
        return None
    return host_id
