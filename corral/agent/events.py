"""The agent's event log: sequence-numbered, bounded, readable from any point a client saw last.

libvirt callbacks arrive on the event-loop thread; HTTP streams wait in asyncio. ``publish`` is thread-safe
and wakes every waiting stream with ``call_soon_threadsafe``.

The log lives in memory, so its sequence numbers start again at 1 when the agent restarts. Every event
carries the log's ``epoch`` (an id drawn when the agent started): a client that kept ``(epoch, seq)`` asks
for the events after ``seq - 1`` when it reconnects, and the first one tells it whether its position is
still one of this log (same epoch) or of an earlier run (another epoch, or no event at all).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from typing import Any


class Event:
    """One event. A plain slotted class: libvirt's event thread makes one per lifecycle change, and a frozen
    dataclass (``object.__setattr__`` per field) cost several times as much to build."""

    __slots__ = ("detail", "epoch", "seq", "state", "time", "type", "vm_id", "vm_name")

    def __init__(self, seq: int, time: float, type: str, vm_id: str | None = None,
                 vm_name: str | None = None, state: str | None = None, detail: dict[str, Any] | None = None,
                 epoch: str = "") -> None:
        self.seq, self.time, self.type = seq, time, type
        self.vm_id, self.vm_name, self.state = vm_id, vm_name, state
        self.detail: dict[str, Any] = detail if detail is not None else {}
        self.epoch = epoch

    def __repr__(self) -> str:
        return f"Event({self.as_dict()!r})"

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "epoch": self.epoch, "time": self.time, "type": self.type, "vm_id": self.vm_id,
                "vm_name": self.vm_name, "state": self.state, "detail": dict(self.detail)}


class EventBus:
    def __init__(self, keep: int = 10_000) -> None:
        self._events: deque[Event] = deque(maxlen=keep)
        self._seq = 0
        self.epoch = uuid.uuid4().hex  # this run of the log: sequence numbers restart with the agent
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, type_: str, vm_id: str | None = None, vm_name: str | None = None,
                state: str | None = None, **detail: Any) -> Event:
        with self._lock:
            self._seq += 1
            event = Event(self._seq, time.time(), type_, vm_id, vm_name, state, detail, self.epoch)
            self._events.append(event)
            if not self._waiters:
                return event
            waiters = list(self._waiters)
        for loop, flag in waiters:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # loop closed
                with self._lock:
                    self._waiters.discard((loop, flag))
        return event

    def since(self, after: int, limit: int = 1000) -> list[Event]:
        with self._lock:
            if not self._events or after >= self._seq:
                return []
            first = self._events[0].seq
            start = max(0, after + 1 - first)
            return list(self._events)[start:start + limit]

    async def wait(self, after: int, timeout: float) -> list[Event]:
        """Events after ``after``, waiting up to ``timeout`` seconds for the first one."""
        events = self.since(after)
        if events:
            return events
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(waiter)
        try:
            events = self.since(after)
            if not events:
                try:
                    await asyncio.wait_for(waiter[1].wait(), timeout)
                except TimeoutError:
                    return []
                events = self.since(after)
            return events
        finally:
            with self._lock:
                self._waiters.discard(waiter)
