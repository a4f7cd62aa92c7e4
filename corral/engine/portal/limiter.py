"""Failed portal logins, limited per account, per client address and per both.

Counting per (address, account) pair alone lets an attacker try one password on many accounts (spraying) or
one account from many addresses. So there are three counters: the pair (a user mistyping is blocked soonest),
the account (however many addresses try it) and the address (however many accounts it tries). Each lives in a
bounded cache that forgets the least recently used keys first and every key ``window`` seconds after its last
failure: many addresses or names cannot grow memory, nor reset everyone's counts at once (the former limiter
cleared its whole table past 10,000 keys). The address is the connection's peer unless the server was told
which proxies to believe (``corral engine serve --forwarded-allow-ips``), so a client cannot choose it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cachetools import TTLCache


class _Counter:
    def __init__(self, limit: int, window: float, size: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.failures: TTLCache[str, list[float]] = TTLCache(size, window, timer=clock)

    def wait(self, key: str, now: float) -> float:
        recent = [t for t in self.failures.get(key, ()) if t > now - self.window]
        if len(recent) < self.limit:
            return 0.0
        return recent[-self.limit] + self.window - now

    def add(self, key: str, now: float) -> None:
        recent = [t for t in self.failures.get(key, ()) if t > now - self.window][-self.limit:]
        self.failures[key] = [*recent, now]  # set again: the entry lives ``window`` past its latest failure


class LoginLimiter:
    """``blocked`` says how many seconds a login must wait (0: go ahead)."""

    def __init__(self, *, per_pair: int = 5, per_account: int = 10, per_address: int = 20, window: float = 300.0,
                 size: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._pair = _Counter(per_pair, window, size, clock)
        self._account = _Counter(per_account, window, size, clock)
        self._address = _Counter(per_address, window, size, clock)

    def _keys(self, address: str, account: str) -> tuple[tuple[_Counter, str], ...]:
        account = account.strip().lower()
        return ((self._pair, f"{address}\0{account}"), (self._account, account), (self._address, address))

    def blocked(self, address: str, account: str) -> float:
        with self._lock:
            now = self._clock()
            return max(counter.wait(key, now) for counter, key in self._keys(address, account))

    def failed(self, address: str, account: str) -> None:
        with self._lock:
            now = self._clock()
            for counter, key in self._keys(address, account):
                counter.add(key, now)

    def succeeded(self, address: str, account: str) -> None:
        """Only the pair is forgiven: a success elsewhere must not reset what an attacker's failures count."""
        with self._lock:
            self._pair.failures.pop(self._keys(address, account)[0][1], None)
