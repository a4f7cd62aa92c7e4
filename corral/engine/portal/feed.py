"""Live updates for portal pages: one poller of the ``events`` and ``tasks`` tables, fanned out to every open
server-sent-event stream.

Everything that changes a VM or a host in the engine writes an event row (monitoring, actions, host
activation), and every long operation is a task row. While at least one browser listens, one coroutine reads
the new events (``id > last``, the primary key) and the tasks that are or just were active (the ``state``
index) every ``interval`` seconds, looks up the current state of the VMs and hosts they name in one query
each, and hands each subscriber the same batch of messages. The database cost is therefore a few indexed
queries per second whatever the number of open pages, and nothing when nobody watches.

Messages are ``(kind, data)`` with kind ``event`` (an event row), ``vm`` and ``host`` (current state of an
object an event or task touched) and ``task`` (a task's state and progress message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from corral.engine.db.models import Cluster, Event, Host, Task, TaskState, Vm
from corral.engine.db.session import Database

log = logging.getLogger(__name__)

Message = tuple[str, dict[str, Any]]
ACTIVE = (TaskState.PENDING.value, TaskState.RUNNING.value)
BATCH = 500
QUEUE_SIZE = 2000


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


@dataclass
class Batch:
    messages: list[Message]
    last_event: int
    active_tasks: dict[str, tuple[str, str]]
    full: bool = False


def collect(s: Session, after: int, known_tasks: dict[str, tuple[str, str]], *, limit: int = BATCH,
            with_tasks: bool = True) -> Batch:
    """Messages for the events after ``after`` and the tasks that changed since ``known_tasks`` was seen."""
    events = list(s.scalars(select(Event).where(Event.id > after).order_by(Event.id).limit(limit)))
    last = events[-1].id if events else after
    vm_ids: set[str] = set()
    host_ids: set[str] = set()
    out: list[Message] = []
    task_msgs: list[Message] = []
    active: dict[str, tuple[str, str]] = {}
    if with_tasks:
        conds = [Task.state.in_(ACTIVE)]
        if known_tasks:
            conds.append(Task.id.in_(list(known_tasks)))
        for t in s.scalars(select(Task).where(or_(*conds)).limit(limit)):
            seen = (t.state, t.message)
            if t.state in ACTIVE:
                active[t.id] = seen
            if known_tasks.get(t.id) != seen:
                task_msgs.append(("task", {"id": t.id, "kind": t.kind, "state": t.state, "message": t.message,
                                           "object_type": t.object_type, "object_id": t.object_id,
                                           "error": t.error}))
                if t.object_type == "vm" and t.object_id:
                    vm_ids.add(t.object_id)
                elif t.object_type == "host" and t.object_id:
                    host_ids.add(t.object_id)
    for e in events:
        if e.object_type == "vm" and e.object_id:
            vm_ids.add(e.object_id)
        elif e.object_type == "host" and e.object_id:
            host_ids.add(e.object_id)
    names: dict[str, str] = {}
    vm_msgs: list[Message] = []
    if vm_ids:
        rows = s.execute(select(Vm.id, Vm.name, Vm.state, Vm.state_reason, Vm.host_id)
                         .where(Vm.id.in_(sorted(vm_ids)))).all()
        host_ids.update(r.host_id for r in rows if r.host_id)
        names.update({r.id: r.name for r in rows})
        vm_rows = rows
    else:
        vm_rows = []
    host_msgs: list[Message] = []
    host_names: dict[str, str] = {}
    if host_ids:
        for h in s.execute(select(Host.id, Host.name, Host.state, Host.state_reason)
                           .where(Host.id.in_(sorted(host_ids)))):
            host_names[h.id] = h.name
            host_msgs.append(("host", {"id": h.id, "name": h.name, "state": h.state, "state_reason": h.state_reason}))
    for r in vm_rows:
        vm_msgs.append(("vm", {"id": r.id, "name": r.name, "state": r.state, "state_reason": r.state_reason,
                               "host_id": r.host_id, "host_name": host_names.get(r.host_id or "")}))
    cluster_ids = {e.object_id for e in events if e.object_type == "cluster" and e.object_id}
    if cluster_ids:
        names.update({r[0]: r[1] for r in s.execute(select(Cluster.id, Cluster.name)
                                                     .where(Cluster.id.in_(sorted(cluster_ids))))})
    names.update(host_names)
    for e in events:
        out.append(("event", {"id": e.id, "time": _iso(e.time), "severity": e.severity, "type": e.type,
                              "object_type": e.object_type, "object_id": e.object_id,
                              "object_name": names.get(e.object_id or ""), "message": e.message}))
    return Batch([*vm_msgs, *host_msgs, *task_msgs, *out], last, active if with_tasks else known_tasks,
                 full=len(events) >= limit)


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[list[Message] | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: bool = False


class Feed:
    """The shared poller; ``subscribe`` starts it, and it stops by itself when the last subscriber leaves."""

    def __init__(self, db: Database, interval: float = 1.0) -> None:
        self.db = db
        self.interval = interval
        self.subscribers: set[Subscriber] = set()
        self.last_event: int | None = None
        self.tasks: dict[str, tuple[str, str]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def subscribe(self) -> Subscriber:
        if self._runner is None or self._runner.done():
            last = await self.db.run(lambda s: s.scalar(select(func.max(Event.id))) or 0)
            if self._runner is None or self._runner.done():
                self.last_event, self.tasks = last, {}
        sub = Subscriber()
        self.subscribers.add(sub)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def catch_up(self, after: int) -> list[Message]:
        """Events a reconnecting stream missed (after ``Last-Event-ID``), up to the feed's position."""
        upto = self.last_event or 0
        if after >= upto:
            return []
        batch = await self.db.run(lambda s: collect(s, after, {}, limit=min(BATCH, upto - after),
                                                    with_tasks=False))
        return batch.messages

    async def _run(self) -> None:
        while self.subscribers:
            try:
                batch = await self.db.run(lambda s: collect(s, self.last_event or 0, self.tasks))
            except Exception:
                log.exception("portal feed: poll failed")
                await asyncio.sleep(self.interval * 5)
                continue
            self.last_event, self.tasks = batch.last_event, batch.active_tasks
            if batch.messages:
                for sub in list(self.subscribers):
                    try:
                        sub.queue.put_nowait(batch.messages)
                    except asyncio.QueueFull:
                        sub.dropped = True  # a stuck client: its stream ends and the browser reconnects
                        self.subscribers.discard(sub)
                        with contextlib.suppress(asyncio.QueueFull):
                            sub.queue.put_nowait(None)
                if batch.full:
                    continue  # more waiting: read on at once
            await asyncio.sleep(self.interval)
