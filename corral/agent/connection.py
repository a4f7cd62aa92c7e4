"""One libvirt connection per agent, reconnected with backoff, and libvirt's event loop on its own thread.

libvirt-python objects are thread-safe; the HTTP handlers share this connection. When libvirtd restarts,
the connection's close callback fires, ``conn`` raises ``Unavailable`` until a reconnect succeeds, and the
event callbacks are registered again on the new connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt

log = logging.getLogger(__name__)

_loop_lock = threading.Lock()
_loop_started = False


def _ignore_errors(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; the agent reports them itself."""


def start_event_loop() -> None:
    """Register libvirt's default event implementation and run it on a daemon thread (once per process)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(_ignore_errors, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class Unavailable(RuntimeError):
    """libvirt cannot be reached right now (libvirtd down or restarting)."""


EventHandler = Callable[[libvirt.virConnect], None]


class Connection:
    """Holds the agent's single libvirt connection and brings it back when it drops."""

    def __init__(self, uri: str, on_connect: EventHandler | None = None, max_backoff: float = 10.0) -> None:
        self.uri = uri
        self._on_connect = on_connect
        self._max_backoff = max_backoff
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._reconnecting = False
        self.reconnects = 0

    def open(self) -> None:
        start_event_loop()
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise Unavailable(f"cannot connect to {self.uri}: {exc.get_error_message()}") from None
        if not self.uri.startswith("test:"):
            try:
                conn.setKeepAlive(5, 3)
            except libvirt.libvirtError:
                pass
        conn.registerCloseCallback(self._closed_cb, None)
        self._conn = conn
        if self._on_connect is not None:
            self._on_connect(conn)

    def _closed_cb(self, _conn: Any, reason: int, _opaque: Any) -> None:
        log.warning("libvirt connection to %s closed (reason %s); reconnecting", self.uri, reason)
        self._conn = None
        self._start_reconnect()

    def _start_reconnect(self) -> None:
        with self._lock:
            if self._reconnecting or self._closed:
                return
            self._reconnecting = True
        threading.Thread(target=self._reconnect_loop, name="libvirt-reconnect", daemon=True).start()

    def _reconnect_loop(self) -> None:
        delay = 0.2
        while not self._closed:
            try:
                with self._lock:
                    self._open_locked()
                self.reconnects += 1
                log.info("reconnected to %s", self.uri)
                break
            except Unavailable:
                time.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
        self._reconnecting = False

    @property
    def conn(self) -> libvirt.virConnect:
        conn = self._conn
        if conn is None:
            self._start_reconnect()
            raise Unavailable(f"libvirt at {self.uri} is not connected (reconnecting)")
        return conn

    def check(self) -> bool:
        """True when the connection is alive; a dead one starts a reconnect."""
        conn = self._conn
        if conn is None:
            return False
        try:
            if conn.isAlive():
                return True
        except libvirt.libvirtError:
            pass
        self._conn = None
        self._start_reconnect()
        return False

    def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
