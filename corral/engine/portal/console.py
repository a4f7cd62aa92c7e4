"""Browser consoles: where noVNC is installed, one-time console tickets, and what the console page can offer.

noVNC is not part of Corral's source: ``scripts/install`` fetches the npm package ``@novnc/novnc`` into
``<venv>/share/corral/novnc`` and the engine serves its ES modules from there (``CORRAL_NOVNC_DIR`` points
elsewhere; Debian's ``novnc`` package in ``/usr/share/novnc`` works too). ``novnc_dir`` returns None when
none is found and the console page says so.

A console page asks for a **ticket**: a random string bound to the VM, the console's kind (vnc or serial) and
the session's user, valid once and for ``TICKET_TTL`` seconds, to open the WebSocket. The WebSocket is accepted
only with such a ticket, a valid session cookie of the same user and a same-origin ``Origin``; the engine then
relays it through the agent of the VM's host (``corral.engine.consoles``): VNC servers listen on the hosts'
loopback, the engine never dials a hypervisor's port and the browser sees only the engine.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICKET_TTL = 30.0
RUNNING = ("up", "paused", "shutting_down")


def _npm_package(env: str, share: str, package: str, marker: str, system: str | None = None) -> Path | None:
    """Where ``scripts/install`` put an npm package (``<prefix>/share/corral/<share>/node_modules/<package>``),
    or the directory the environment variable ``env`` names, or a Debian package's directory; the first that
    holds ``marker``."""
    candidates: list[Path] = []
    given = os.environ.get(env)
    if given:
        candidates += [Path(given), Path(given) / "node_modules" / package]
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        candidates.append(Path(prefix) / "share" / "corral" / share / "node_modules" / package)
    repo = Path(__file__).resolve().parents[3]
    candidates.append(repo / ".venv" / "share" / "corral" / share / "node_modules" / package)
    if system:
        candidates.append(Path(system))
    return next((c for c in candidates if (c / marker).is_file()), None)


def novnc_dir() -> Path | None:
    """The directory that holds noVNC's ``core/rfb.js``, or None."""
    return _npm_package("CORRAL_NOVNC_DIR", "novnc", "@novnc/novnc", "core/rfb.js", "/usr/share/novnc")


def xterm_dir() -> Path | None:
    """The directory that holds xterm.js's ``lib/xterm.mjs`` and ``css/xterm.css`` (npm ``@xterm/xterm``), or
    None. Debian's ``libjs-xterm`` is xterm.js 3 (no ES module), so it is not looked for."""
    return _npm_package("CORRAL_XTERM_DIR", "xterm", "@xterm/xterm", "lib/xterm.mjs")


@dataclass(frozen=True)
class Ticket:
    vm_id: str
    kind: str
    username: str
    expires: float


def console_problem(vm: dict[str, Any], kind: str) -> str | None:
    """Why the VM (its API detail: state, live devices, spec) has no console of ``kind`` now, or None."""
    if vm.get("state") not in RUNNING:
        return f"the VM is {vm.get('state')}; its console exists while it runs"
    if kind == "serial":
        return None  # every VM has one: its serial port, or the PV console the hypervisor gives it
    graphics = [d for d in vm.get("devices") or [] if d.get("kind") == "graphics"]
    if not graphics:
        spec = vm.get("spec") or {}
        if not spec.get("graphics"):
            return "the VM has no graphics device; use its serial console"
        return "the host did not report the VM's live devices"
    g = graphics[0]
    if g.get("type") != "vnc":
        return f"the VM's graphics are {g.get('type')}, not VNC"
    port = g.get("port")
    if not isinstance(port, int) or port <= 0:
        return "the host reports no VNC port for this VM (the driver runs no VNC server)"
    return None


class ConsoleTickets:
    """One-time console tickets of this engine process (a console page and its WebSocket meet on one node)."""

    def __init__(self) -> None:
        self._tickets: dict[str, Ticket] = {}

    def issue(self, vm_id: str, kind: str, username: str) -> str:
        now = time.monotonic()
        for key in [k for k, v in self._tickets.items() if v.expires < now]:
            del self._tickets[key]
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = Ticket(vm_id, kind, username, now + TICKET_TTL)
        return ticket

    def take(self, ticket: str, vm_id: str, kind: str, username: str) -> bool:
        """True once for a live ticket of this VM, kind and user; the ticket is spent either way."""
        found = self._tickets.pop(ticket, None)
        return (found is not None and found.expires >= time.monotonic() and found.vm_id == vm_id
                and found.kind == kind and found.username == username)


ConsoleTokens = ConsoleTickets  # the name ``core.Portal`` knows it by
