"""Host monitoring: per host, the agent's event stream for immediate changes plus a periodic full poll.

Everything runs in the engine's event loop on the one pooled ``AgentClient``. Polls run in *cycles*: every
``poll_interval`` the monitor polls every host (at most ``poll_concurrency`` requests in flight), then
reconciles and writes what the cycle found in one transaction; the time from the cycle's start to that
commit is the cycle time, kept (with its parts) in ``Monitor.cycles`` and shown by ``GET /api/v1/_metrics``.
A poll reads only what monitoring needs from the agent's ``GET /v1/vms`` (``AgentClient.list_vm_states``:
ids, states, reasons; the specs stay unparsed bytes until a VM is new to the database). Nothing is written per
poll: each watcher compares the poll with the previous one and hands the monitor only what changed (plus a
full report every ``full_every`` polls, staggered across hosts, which also corrects drift from writes
elsewhere), so write cost follows the number of changes, not of hosts or VMs. Between cycles the writer
flushes what the event streams report every ``flush_interval``.

A host that fails ``unreachable_after`` consecutive polls becomes ``unreachable`` and its VMs ``unknown``;
when it answers again its capabilities are re-read and its state re-evaluated. A host known to be down is
polled beside the cycle, so its timeouts do not hold up the others' writes. Hosts being added (``installing``)
are watched from the moment their activation has read their capabilities (``hostops.activate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.engine import storage
from corral.engine.agent_client import AgentClient, AgentError, AgentTarget, AgentUnreachable, VmBrief
from corral.engine.db.models import Host, HostState, Severity, utcnow
from corral.engine.db.session import Database
from corral.engine.events import event_row, record_many
from corral.engine.hostinfo import evaluate, host_fields
from corral.engine.reconcile import (
    CONTROL_DOMAIN_UUID,
    KNOWN,
    HostReport,
    Outcome,
    apply_reports,
    mark_unreachable,
)

log = logging.getLogger(__name__)

EVENT_SEVERITY = {"device_model_lost": Severity.ERROR, "agent": Severity.INFO, "device": Severity.INFO}


def agent_time(ev: dict[str, Any]) -> datetime | None:
    """When an agent event happened, by the agent's clock (seconds since the epoch); None if it says nothing."""
    value = ev.get("time")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass
class MonitorSettings:
    poll_interval: float = 3.0
    flush_interval: float = 0.2
    full_every: int = 10
    unreachable_after: int = 2
    sync_interval: float = 10.0
    use_events: bool = True
    # agent polls in flight at once: enough to hide network latency, few enough that API requests in the same
    # event loop do not queue behind hundreds of poll callbacks (256 made a VM detail's p99 5x worse)
    poll_concurrency: int = 32
    # a poll's timeout; a cycle waits this long for answers (later ones are written by the next flush)
    poll_deadline: float = 10.0


@dataclass
class CycleStats:
    """One monitoring cycle: poll every host, reconcile, write. Seconds; ``started`` is wall-clock time."""

    number: int
    started: float
    duration: float
    poll: float
    write: float
    hosts: int
    answered: int
    failed: int
    late: int
    reports: int
    vm_inserts: int = 0
    vm_updates: int = 0
    vm_deletes: int = 0
    events: int = 0


@dataclass
class _Pending:
    reports: list[HostReport] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    host_updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.reports or self.unreachable or self.host_updates or self.events)


class _StreamEnded(Exception):
    """The agent closed its event stream (e.g. it stopped)."""


class HostWatcher:
    """Polls one agent and follows its event stream."""

    def __init__(self, monitor: Monitor, host_id: str, name: str, target: AgentTarget, state: str,
                 last_seq: int, epoch: str | None = None) -> None:
        self.monitor, self.host_id, self.name, self.target, self.state = monitor, host_id, name, target, state
        # the last event taken from the agent: its sequence number in the run (epoch) of the agent's event log
        self.last_seq, self.epoch = last_seq, epoch
        self.reachable: bool | None = None
        self.polling = False
        self._failures = 0
        # full reports every ``full_every`` polls, at a different poll for each host
        self._n = random.randrange(max(1, monitor.settings.full_every))
        self._last: dict[str, tuple[Any, ...]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = []
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

    async def poll_once(self, *, wake: bool = False) -> bool:
        """Poll the agent; hand the monitor a report if anything changed. False if the agent did not answer.
        ``wake``: have the writer flush soon (a poll outside the cycles)."""
        if self.polling:
            return True
        self.polling = True
        try:
            return await self._poll(wake)
        finally:
            self.polling = False

    async def _poll(self, wake: bool) -> bool:
        settings, agents = self.monitor.settings, self.monitor.agents
        n, self._n = self._n, self._n + 1
        observed = time.monotonic()
        try:
            items = await agents.list_vm_states(self.target, timeout=settings.poll_deadline)
        except AgentUnreachable as exc:
            self._failures += 1
            if self._failures >= settings.unreachable_after and self.reachable is not False:
                self._lost()
                self.monitor.host_unreachable(self.host_id, self.name, exc.message)
            return False
        except AgentError as exc:
            self._failures += 1
            if self.reachable is not False:
                self._lost()
                self.monitor.host_unreachable(self.host_id, self.name, f"agent error: {exc.code}: {exc.message}")
            return False
        self._failures = 0
        if self.reachable is not True:
            await self._recovered()
        snapshot = {str(i.id): (i.state, i.reason) for i in items}
        full = n % max(1, settings.full_every) == 0
        if full or snapshot != self._last:
            self.monitor.note_memory(items)
            self.monitor.submit(HostReport(self.host_id, [i.as_dict() for i in items], True, observed), wake=wake)
            if full:
                self.monitor.touch(self.host_id)
        if full:
            self.monitor.refresh_storage(self)
        self._last = snapshot
        return True

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

    def poll_soon(self) -> None:
        """Poll now with a full report (after an event the stream cannot express as a state)."""
        self._last = None
        self.monitor.poll_now(self)

    async def _event_loop(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self._check_position()
                after = self.last_seq
                async for ev in self.monitor.agents.events_stream(self.target, after):
                    backoff = 1.0
                    if not self._take(ev, after):
                        break
                else:
                    raise _StreamEnded
                continue  # the agent restarted since ``after``: read its new log from its start, now
            except asyncio.CancelledError:
                raise
            except _StreamEnded:
                pass
            except AgentError as exc:
                if exc.status in (404, 405):
                    backoff = 60.0  # an agent without an event stream: the poll alone keeps up
            except Exception:
                log.exception("event stream of host %s", self.name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _check_position(self) -> None:
        """Before a stream is opened: is the position still one of the agent's log? Its numbers start again when
        the agent restarts, and a stream opened after a number the new log has not reached would bring nothing
        until it does. The agent's event at the position says it: the same epoch, or another run (an event of
        another epoch, or none at all: the new log is shorter). A position of an earlier run goes back to the
        start of the agent's log, all of which happened after what the engine saw (the agent restarted since)."""
        if self.last_seq <= 0:
            return
        items = (await self.monitor.agents.events_poll(self.target, self.last_seq - 1)).get("items") or []
        first = items[0] if items and isinstance(items[0], dict) else None
        epoch = first.get("epoch") if first is not None else None
        epoch = epoch if isinstance(epoch, str) and epoch else None
        if first is None or (epoch is not None and self.epoch is not None and epoch != self.epoch):
            log.info("host %s: the agent restarted; reading its new event log from the start", self.name)
            self.epoch, self.last_seq = epoch, 0
        elif self.epoch is None:
            self.epoch = epoch  # a position kept before events had epochs

    def _take(self, ev: dict[str, Any], after: int) -> bool:
        """Hand one streamed event to the monitor, unless it was taken already. False: the agent restarted
        between ``_check_position`` and the stream, which reads the new log from the middle: the position is
        reset, for a new stream from the start of the new log."""
        seq, epoch = ev.get("seq"), ev.get("epoch")
        epoch = epoch if isinstance(epoch, str) and epoch else None
        if epoch is not None and epoch != self.epoch:
            if self.epoch is not None and after and seq != 1:
                self.epoch, self.last_seq = epoch, 0
                return False
            self.epoch, self.last_seq = epoch, 0
        if isinstance(seq, int):
            if seq <= self.last_seq:
                return True  # read already (a stream that resent what came before its position)
            self.last_seq = seq
        self.monitor.agent_event(self.host_id, self.name, ev)
        self.monitor.position(self.host_id, self.epoch, self.last_seq)
        return True


class Monitor:
    """Owns the watchers and the batched writer."""

    def __init__(self, db: Database, agents: AgentClient, busy: set[str],
                 settings: MonitorSettings | None = None, released: dict[str, float] | None = None) -> None:
        self.db, self.agents, self.busy = db, agents, busy
        # VM id -> when its last task ended (``TaskRunner.released``): reports taken before are superseded
        self.released: dict[str, float] = released if released is not None else {}
        self.settings = settings or MonitorSettings()
        self.watchers: dict[str, HostWatcher] = {}
        # hosts a deploy (corral.engine.deploy) is working on: not watched until it activates them
        self.held: set[str] = set()
        self._pending = _Pending()
        self._positions: dict[str, tuple[str | None, int]] = {}
        self._seen: set[str] = set()
        self.live_memory: dict[str, int] = {}  # VM id -> MiB it runs with (note_memory)
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._side: set[asyncio.Task[Any]] = set()  # polls outside the cycles, cycle polls past the deadline
        self._storage: set[str] = set()  # hosts whose storage pools are being read
        self._running = False
        self._cycle_number = 0
        self.cycles: deque[CycleStats] = deque(maxlen=1000)
        # called after every cycle, e.g. the HA controller's kick (corral.engine.ha): quick, never awaited
        self.cycle_hooks: list[Callable[[], None]] = []

    # lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self.sync_hosts()
        self._running = True
        self._tasks = [loop.create_task(self._writer(), name="monitor-writer"),
                       loop.create_task(self._sync_loop(), name="monitor-sync"),
                       loop.create_task(self._cycle_loop(), name="monitor-cycles")]

    async def stop(self) -> None:
        self._running = False
        for t in [*self._tasks, *self._side]:
            t.cancel()
        for t in [*self._tasks, *self._side]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await asyncio.gather(*(w.stop() for w in self.watchers.values()))
        self.watchers.clear()
        with contextlib.suppress(Exception):
            await self.flush()

    async def sync_hosts(self) -> None:
        """Start watchers for new hosts, stop those of removed hosts (one query for all hosts)."""
        def load(s: Session) -> list[tuple[str, str, str, str | None, str, int, str | None]]:
            q = select(Host.id, Host.name, Host.agent_url, Host.agent_token, Host.state, Host.last_event_seq,
                       Host.event_epoch)
            # plain rows from the connection: the ORM's row handling costs more than the query for 1,000s of hosts
            return [tuple(r) for r in s.connection().execute(q)]  # type: ignore[misc]
        # a host whose agent never answered has an ``ssh://`` placeholder URL (deploy over SSH)
        rows = [r for r in await self.db.run(load) if r[0] not in self.held and not r[2].startswith("ssh://")]
        ids = {r[0] for r in rows}
        for host_id in [h for h in self.watchers if h not in ids]:
            await self.unwatch(host_id)
        for host_id, name, url, token, state, seq, epoch in rows:
            w = self.watchers.get(host_id)
            target = AgentTarget(url, token)
            if w is not None and w.target == target:
                w.state = state
                continue
            if w is None and state == HostState.INSTALLING.value:
                continue  # being added or activated: the activation starts its watcher when the agent answered
            if w is not None:
                await self.unwatch(host_id)
            self.watch(host_id, name, target, state, seq, epoch)

    def watch(self, host_id: str, name: str, target: AgentTarget, state: str, last_seq: int = 0,
              epoch: str | None = None) -> HostWatcher:
        w = HostWatcher(self, host_id, name, target, state, last_seq, epoch)
        self.watchers[host_id] = w
        w.start()
        if self._running:
            self.poll_now(w)  # a new host's VMs show up now, not at the next cycle
        return w

    def poll_now(self, w: HostWatcher) -> None:
        """Poll one host at once, outside the cycles; the writer flushes what it finds."""
        if self._running and not w.polling:
            self._background(w.poll_once(wake=True), f"poll-{w.name}")

    def _background(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._side.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task[Any]) -> None:
        self._side.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("monitor: %s failed", task.get_name(), exc_info=task.exception())

    async def unwatch(self, host_id: str) -> None:
        w = self.watchers.pop(host_id, None)
        if w is not None:
            await w.stop()
            await self.agents.release(w.target)

    def refresh_storage(self, w: HostWatcher) -> None:
        """After an up host's full poll: its storage pools (one ``GET /v1/storage/pools``, beside the cycle, one
        at a time per host; ``corral.engine.storage.refresh_host``)."""
        if self._running and w.state == HostState.UP.value and w.host_id not in self._storage:
            self._storage.add(w.host_id)
            self._background(self._refresh_storage(w), f"storage-{w.name}")

    async def _refresh_storage(self, w: HostWatcher) -> None:
        try:
            await storage.refresh_host(self.db, self.agents, w.host_id, w.target)
        finally:
            self._storage.discard(w.host_id)

    def set_host_state(self, host_id: str, state: str) -> None:
        w = self.watchers.get(host_id)
        if w is not None:
            w.state = state

    # inputs from watchers
    def note_memory(self, items: list[VmBrief]) -> None:
        """The memory each VM runs with, as its host last reported it (the balloon's current size), for the
        API's ``memory_current_mib``. Kept in memory, not written: it moves with the balloon, and the rows hold
        what was asked (which placement counts). Taken on full polls and on changes, not on every cycle."""
        live = self.live_memory
        for i in items:
            if isinstance(i.memory_mib, int) and not isinstance(i.memory_mib, bool):
                live[str(i.id)] = i.memory_mib

    def submit(self, report: HostReport, *, wake: bool = True) -> None:
        """A report to write; ``wake=False`` (a cycle's poll): the cycle writes it when all hosts answered."""
        self._pending.reports.append(report)
        if wake:
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

    def touch(self, host_id: str) -> None:
        """Remember the host answered (written with the next batch)."""
        self._seen.add(host_id)

    def position(self, host_id: str, epoch: str | None, seq: int) -> None:
        """The host's last event taken: written in the batch that writes what the event made, so an engine
        that restarts reads the agent's log from exactly there (nothing recorded twice, nothing missed)."""
        self._positions[host_id] = (epoch, seq)

    def agent_event(self, host_id: str, host_name: str, ev: dict[str, Any]) -> None:
        """One event of a host's stream: a VM's new state (written as a partial report) or an event row, which
        keeps the agent's time (when it happened, not when the engine heard of it)."""
        kind = str(ev.get("type") or "")
        vm_id = ev.get("vm_id")
        at = agent_time(ev)
        if vm_id == CONTROL_DOMAIN_UUID:
            vm_id = None  # the host's own domain (Xen's Domain-0): the host's event, not a VM's
            if kind == "lifecycle":
                return  # its state comes with the host's polls
        if kind == "lifecycle" and vm_id and ev.get("state") not in KNOWN:
            # "deleted" (undefined) or an agent-specific label: let a full poll say what is there now
            w = self.watchers.get(host_id)
            if w is not None:
                w.poll_soon()
        elif kind == "lifecycle" and vm_id:
            self.submit(HostReport(host_id, [{"id": vm_id, "name": ev.get("vm_name"), "state": ev["state"],
                                              "reason": ev.get("detail") or "", "at": at}], False,
                                    time.monotonic()))
        elif kind in EVENT_SEVERITY:
            obj = ("vm", str(vm_id)) if vm_id else ("host", host_id)
            detail = ev.get("detail")
            text = f"{kind} on {host_name}" + (f" ({ev.get('vm_name')})" if ev.get("vm_name") else "")
            if isinstance(detail, str) and detail:
                text += f": {detail}"
            row = event_row(f"agent_{kind}", text, severity=EVENT_SEVERITY[kind], object_type=obj[0],
                            object_id=obj[1], detail={"host_id": host_id, "agent_event": ev})
            if at is not None:
                row["time"] = at
            self._pending.events.append(row)
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

    # cycles
    async def _cycle_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.cycle()
                for hook in self.cycle_hooks:
                    hook()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("monitoring cycle failed; next polls send full reports")
                for w in self.watchers.values():
                    w.force_full()
            await asyncio.sleep(max(0.0, self.settings.poll_interval - (loop.time() - started)))

    async def cycle(self) -> CycleStats:
        """Poll every host, then reconcile and write what changed; returns (and keeps) the cycle's figures."""
        settings = self.settings
        number, self._cycle_number = self._cycle_number, self._cycle_number + 1
        wall, t0 = time.time(), time.perf_counter()
        watchers = []
        for w in self.watchers.values():
            if w.reachable is False:
                self.poll_now(w)  # a host known down is polled beside the cycle: its timeouts hold no one up
            elif not w.polling:
                watchers.append(w)
        todo = iter(watchers)
        answered = failed = 0

        async def worker() -> None:
            nonlocal answered, failed
            for w in todo:  # the workers share one iterator: each host is polled once
                try:
                    ok = await w.poll_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("polling host %s", w.name)
                    ok = False
                answered, failed = answered + ok, failed + (not ok)

        loop = asyncio.get_running_loop()
        workers = {loop.create_task(worker(), name=f"monitor-poll-{number}")
                   for _ in range(min(len(watchers), max(1, settings.poll_concurrency)))}
        late = 0
        if workers:
            try:
                _, pending = await asyncio.wait(workers, timeout=settings.poll_deadline)
            except asyncio.CancelledError:
                for t in workers:
                    t.cancel()
                raise
            for t in pending:  # hosts slower than the deadline: their answers go to a later flush
                self._side.add(t)
                t.add_done_callback(self._side_done)
            late = len(watchers) - answered - failed
        reports = len(self._pending.reports)
        t1 = time.perf_counter()
        out = await self.flush()
        t2 = time.perf_counter()
        stats = CycleStats(number=number, started=wall, duration=t2 - t0, poll=t1 - t0, write=t2 - t1,
                           hosts=len(watchers), answered=answered, failed=failed, late=late, reports=reports,
                           vm_inserts=len(out.inserts), vm_updates=len(out.updates), vm_deletes=len(out.deletes),
                           events=len(out.events))
        self.cycles.append(stats)
        return stats

    def metrics(self) -> dict[str, Any]:
        """The recent cycles (oldest first) and what is being watched, for ``GET /api/v1/_metrics``. Called from a
        worker thread while the loop appends cycles: ``tuple()`` copies the deque in one step (C code, under the
        GIL), iterating it directly raced ("deque mutated during iteration", a 500)."""
        return {"hosts": len(self.watchers), "poll_interval": self.settings.poll_interval,
                "cycles": [asdict(c) for c in tuple(self.cycles)]}

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

    async def flush(self) -> Outcome:
        """Write everything pending in one transaction (one flush at a time); returns the VM changes."""
        async with self._flushing:
            return await self._flush()

    def _supersede(self, reports: list[HostReport]) -> None:
        """Mark in each report the VMs whose task ended after the report was taken: the task's answer, written
        when it ended, is newer than what the report says of them. A poll that had such VMs is followed by a
        full one (the watcher sends only changes, and the skipped state may be the one that changed). Ends
        older than any report still to come are forgotten: a poll is answered within ``poll_deadline``."""
        if not self.released:
            return
        for rep in reports:
            if rep.observed is None:
                continue
            gone = frozenset(v for v, t in self.released.items() if t >= rep.observed)
            if gone:
                rep.superseded = gone
                w = self.watchers.get(rep.host_id)
                if rep.full and w is not None:
                    w.force_full()
        horizon = time.monotonic() - 2 * self.settings.poll_deadline - 1.0
        horizon = min([horizon, *(r.observed for r in self._pending.reports if r.observed is not None)])
        for v in [v for v, t in self.released.items() if t < horizon]:
            self.released.pop(v, None)

    async def _flush(self) -> Outcome:
        pending, self._pending = self._pending, _Pending()
        positions, self._positions = self._positions, {}
        seen, self._seen = self._seen, set()
        if pending.empty() and not positions and not seen:
            return Outcome()
        busy = set(self.busy)
        self._supersede(pending.reports)
        now = utcnow()

        def write(s: Session) -> Outcome:
            if pending.unreachable:
                for host_id, reason in pending.unreachable.items():
                    mark_unreachable(s, [host_id], reason, busy)
            host_rows: dict[str, dict[str, Any]] = {h: dict(v) for h, v in pending.host_updates.items()}
            for host_id, (epoch, seq) in positions.items():
                host_rows.setdefault(host_id, {}).update(last_event_seq=seq, event_epoch=epoch)
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
            out = apply_reports(s, pending.reports, busy)
            record_many(s, pending.events)
            return out

        return await self.db.run(write)
