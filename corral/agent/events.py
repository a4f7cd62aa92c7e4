"""The agent's event log: sequence-numbered, bounded, readable from any point a client saw last.

libvirt callbacks arrive on the event-loop thread; HTTP streams wait in asyncio. ``publish`` is thread-safe
and wakes every waiting stream with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    type: str
    vm_id: str | None = None
    vm_name: str | None = None
    state: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventBus:
    def __init__(self, keep: int = 10_000) -> None:
        self._events: deque[Event] = deque(maxlen=keep)
        self._seq = 0
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, type_: str, vm_id: str | None = None, vm_name: str | None = None,
                state: str | None = None, **detail: Any) -> Event:
        with self._lock:
            self._seq += 1
            event = Event(self._seq, time.time(), type_, vm_id, vm_name, state, detail)
            self._events.append(event)
            waiters = list(self._waiters)
        for loop, flag in waiters:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # loop closed
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
