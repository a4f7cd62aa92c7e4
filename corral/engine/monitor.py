"""Host monitoring: per host, the agent's event stream for immediate changes plus a periodic full poll.

Everything runs in the engine's event loop on the one pooled ``AgentClient``; a host costs two coroutines
and, while idle, one small request per poll interval. Nothing is written per poll: each watcher compares
the poll with the previous one and hands the monitor only what changed (plus a forced full report every
``full_every`` polls, which also corrects drift from writes elsewhere). The monitor's writer flushes all
hosts' changes together in one database transaction (see ``reconcile``), so write cost follows the number of
changes, not of hosts or VMs.

A host that fails ``unreachable_after`` consecutive polls becomes ``unreachable`` and its VMs ``unknown``;
when it answers again its capabilities are re-read and its state re-evaluated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.engine.agent_client import AgentClient, AgentError, AgentTarget, AgentUnreachable
from corral.engine.db.models import Host, HostState, Severity, utcnow
from corral.engine.db.session import Database
from corral.engine.events import event_row, record_many
from corral.engine.hostinfo import evaluate, host_fields
from corral.engine.reconcile import KNOWN, HostReport, apply_reports, mark_unreachable

log = logging.getLogger(__name__)

EVENT_SEVERITY = {"device_model_lost": Severity.ERROR, "agent": Severity.INFO, "device": Severity.INFO}


@dataclass
class MonitorSettings:
    poll_interval: float = 3.0
    flush_interval: float = 0.2
    full_every: int = 10
    unreachable_after: int = 2
    sync_interval: float = 10.0
    use_events: bool = True


@dataclass
class _Pending:
    reports: list[HostReport] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    host_updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.reports or self.unreachable or self.host_updates or self.events)


class HostWatcher:
    """Polls one agent and follows its event stream."""

    def __init__(self, monitor: Monitor, host_id: str, name: str, target: AgentTarget, state: str,
                 last_seq: int) -> None:
        self.monitor, self.host_id, self.name, self.target, self.state = monitor, host_id, name, target, state
        self.last_seq = last_seq
        self.reachable: bool | None = None
        self._failures = 0
        self._kick = asyncio.Event()
        self._last: dict[str, tuple[Any, ...]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_loop(), name=f"poll-{self.name}")]
        if self.monitor.settings.use_events:
            self._tasks.append(loop.create_task(self._event_loop(), name=f"events-{self.name}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def force_full(self) -> None:
        self._last = None

    async def poll_once(self, n: int = 0) -> None:
        settings, agents = self.monitor.settings, self.monitor.agents
        try:
            items = await agents.list_vms(self.target)
        except AgentUnreachable as exc:
            self._failures += 1
            if self._failures >= settings.unreachable_after and self.reachable is not False:
                self._lost()
                self.monitor.host_unreachable(self.host_id, self.name, exc.message)
            return
        except AgentError as exc:
            self._failures += 1
            if self.reachable is not False:
                self._lost()
                self.monitor.host_unreachable(self.host_id, self.name, f"agent error: {exc.code}: {exc.message}")
            return
        self._failures = 0
        if self.reachable is not True:
            await self._recovered()
        snapshot = {str(i.get("id")): (i.get("state"), i.get("reason")) for i in items}
        full = n % settings.full_every == 0
        if full or snapshot != self._last:
            self.monitor.submit(HostReport(self.host_id, items, True))
            if full:
                self.monitor.touch(self.host_id, self.last_seq)
        self._last = snapshot

    def _lost(self) -> None:
        self.reachable = False
        self._last = None
        if self.state != HostState.MAINTENANCE.value:
            self.state = HostState.UNREACHABLE.value

    async def _recovered(self) -> None:
        was = self.reachable
        self.reachable = True
        if was is None and self.state not in (HostState.UNREACHABLE.value, HostState.INSTALLING.value):
            return
        try:
            info = await self.monitor.agents.host(self.target)
        except AgentError:
            self.reachable = None
            return
        values = host_fields(info)
        if self.state != HostState.MAINTENANCE.value:
            state, reason = evaluate(info)
            values.update(state=state.value, state_reason=reason)
            self.state = state.value
        self.monitor.host_update(self.host_id, values,
                                 event_row("host_state", f"host {self.name} answers again: {self.state}",
                                           object_type="host", object_id=self.host_id))

    async def _poll_loop(self) -> None:
        n = 0
        while True:
            try:
                await self.poll_once(n)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("polling host %s", self.name)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.monitor.settings.poll_interval)
            self._kick.clear()

    def poll_soon(self) -> None:
        """Poll now with a full report (after an event the stream cannot express as a state)."""
        self._last = None
        self._kick.set()

    async def _event_loop(self) -> None:
        backoff = 1.0
        while True:
            try:
                async for ev in self.monitor.agents.events_stream(self.target, self.last_seq):
                    backoff = 1.0
                    seq = ev.get("seq")
                    if isinstance(seq, int) and seq > self.last_seq:
                        self.last_seq = seq
                    self.monitor.agent_event(self.host_id, self.name, ev)
            except asyncio.CancelledError:
                raise
            except AgentError as exc:
                if exc.status in (404, 405):
                    backoff = 60.0  # an agent without an event stream: the poll alone keeps up
            except Exception:
                log.exception("event stream of host %s", self.name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


class Monitor:
    """Owns the watchers and the batched writer."""

    def __init__(self, db: Database, agents: AgentClient, busy: set[str],
                 settings: MonitorSettings | None = None) -> None:
        self.db, self.agents, self.busy = db, agents, busy
        self.settings = settings or MonitorSettings()
        self.watchers: dict[str, HostWatcher] = {}
        self._pending = _Pending()
        self._seqs: dict[str, int] = {}
        self._seen: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self.sync_hosts()
        self._tasks = [loop.create_task(self._writer(), name="monitor-writer"),
                       loop.create_task(self._sync_loop(), name="monitor-sync")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await asyncio.gather(*(w.stop() for w in self.watchers.values()))
        self.watchers.clear()
        with contextlib.suppress(Exception):
            await self.flush()

    async def sync_hosts(self) -> None:
        """Start watchers for new hosts, stop those of removed hosts (one query for all hosts)."""
        def load(s: Session) -> list[tuple[str, str, str, str | None, str, int]]:
            q = select(Host.id, Host.name, Host.agent_url, Host.agent_token, Host.state, Host.last_event_seq)
            return [tuple(r) for r in s.execute(q)]  # type: ignore[misc]
        rows = await self.db.run(load)
        ids = {r[0] for r in rows}
        for host_id in [h for h in self.watchers if h not in ids]:
            await self.unwatch(host_id)
        for host_id, name, url, token, state, seq in rows:
            w = self.watchers.get(host_id)
            target = AgentTarget(url, token)
            if w is not None and w.target == target:
                w.state = state
                continue
            if w is not None:
                await self.unwatch(host_id)
            self.watch(host_id, name, target, state, seq)

    def watch(self, host_id: str, name: str, target: AgentTarget, state: str, last_seq: int = 0) -> HostWatcher:
        w = HostWatcher(self, host_id, name, target, state, last_seq)
        self.watchers[host_id] = w
        w.start()
        return w

    async def unwatch(self, host_id: str) -> None:
        w = self.watchers.pop(host_id, None)
        if w is not None:
            await w.stop()

    def set_host_state(self, host_id: str, state: str) -> None:
        w = self.watchers.get(host_id)
        if w is not None:
            w.state = state

    # inputs from watchers
    def submit(self, report: HostReport) -> None:
        self._pending.reports.append(report)
        self._wake.set()

    def host_unreachable(self, host_id: str, name: str, reason: str) -> None:
        self._pending.unreachable[host_id] = reason
        self._pending.events.append(event_row("host_unreachable", f"host {name} is unreachable: {reason}",
                                              severity=Severity.ERROR, object_type="host", object_id=host_id))
        self._wake.set()

    def host_update(self, host_id: str, values: dict[str, Any], event: dict[str, Any] | None = None) -> None:
        self._pending.unreachable.pop(host_id, None)
        self._pending.host_updates.setdefault(host_id, {}).update(values)
        if event:
            self._pending.events.append(event)
        self._wake.set()

    def touch(self, host_id: str, seq: int) -> None:
        """Remember the host answered and its event position (written with the next batch)."""
        self._seen.add(host_id)
        self._seqs[host_id] = seq

    def agent_event(self, host_id: str, host_name: str, ev: dict[str, Any]) -> None:
        kind = str(ev.get("type") or "")
        vm_id = ev.get("vm_id")
        if kind == "lifecycle" and vm_id and ev.get("state") not in KNOWN:
            # "deleted" (undefined) or an agent-specific label: let a full poll say what is there now
            w = self.watchers.get(host_id)
            if w is not None:
                w.poll_soon()
        elif kind == "lifecycle" and vm_id:
            self.submit(HostReport(host_id, [{"id": vm_id, "name": ev.get("vm_name"), "state": ev["state"],
                                              "reason": ev.get("detail") or ""}], False))
        elif kind in EVENT_SEVERITY:
            obj = ("vm", str(vm_id)) if vm_id else ("host", host_id)
            detail = ev.get("detail")
            text = f"{kind} on {host_name}" + (f" ({ev.get('vm_name')})" if ev.get("vm_name") else "")
            if isinstance(detail, str) and detail:
                text += f": {detail}"
            self._pending.events.append(event_row(
                f"agent_{kind}", text, severity=EVENT_SEVERITY[kind], object_type=obj[0], object_id=obj[1],
                detail={"host_id": host_id, "agent_event": ev}))
            self._wake.set()

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            try:
                await self.sync_hosts()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reloading the host list")

    # writer
    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.settings.flush_interval)  # let a burst of changes gather
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("monitor flush failed; next polls send full reports")
                for w in self.watchers.values():
                    w.force_full()

    async def flush(self) -> None:
        pending, self._pending = self._pending, _Pending()
        seqs, self._seqs = self._seqs, {}
        seen, self._seen = self._seen, set()
        if pending.empty() and not seqs:
            return
        busy = set(self.busy)
        now = utcnow()

        def write(s: Session) -> None:
            if pending.unreachable:
                for host_id, reason in pending.unreachable.items():
                    mark_unreachable(s, [host_id], reason, busy)
            host_rows: dict[str, dict[str, Any]] = {h: dict(v) for h, v in pending.host_updates.items()}
            for host_id, seq in seqs.items():
                host_rows.setdefault(host_id, {})["last_event_seq"] = seq
            for host_id in seen:
                host_rows.setdefault(host_id, {})["last_seen_at"] = now
            if host_rows:
                by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                for host_id, values in host_rows.items():
                    values = {**values, "updated_at": now}
                    by_keys.setdefault(tuple(sorted(values)), []).append({"id": host_id, **values})
                existing = set(s.scalars(select(Host.id).where(Host.id.in_(list(host_rows)))).all())
                for batch in by_keys.values():
                    batch = [b for b in batch if b["id"] in existing]
                    if batch:
                        s.execute(update(Host), batch)
            apply_reports(s, pending.reports, busy)
            record_many(s, pending.events)

        await self.db.run(write)
