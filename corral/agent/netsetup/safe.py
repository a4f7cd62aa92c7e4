"""Safe host network changes: apply, then keep only what the engine confirms (oVirt's "verify connectivity").

A change that cuts the host off the engine must not need someone at the console. So ``change`` applies a config
and answers with a *pending* change and a deadline; the engine, having reached the agent again over the new
network, confirms it, and only then is it the *last good* config. If no confirmation comes before the deadline
(a timer thread), or the agent restarts with the change still pending on disk, the agent restores the last good
config by itself. At every start the last good config is applied again: the host's network survives reboots.

Files (state dir ``hostnet/``, 0600): ``good.json`` (the last good config), ``pending.json`` (the change waiting
for its confirmation; written *before* the change is applied, so a crash in the middle rolls back too) and
``originals.json`` (the NICs' MTU and state from before Corral used them, corral.agent.netsetup.apply).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.agent.errors import AgentError, Conflict, NotFound
from corral.agent.netsetup.apply import NetApplier
from corral.agent.netsetup.config import HostNetConfig, parse_config
from corral.private import private_dir

log = logging.getLogger(__name__)


def _iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class HostNetwork:
    def __init__(self, state_dir: Path, netns: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.dir = state_dir / "hostnet"
        self.netns = netns
        self.clock = clock
        self.applier = NetApplier(netns, self.dir / "originals.json")
        self.lock = threading.RLock()
        self.timer: threading.Timer | None = None
        self.last_rollback: dict[str, Any] | None = None
        self.last_error: str | None = None

    # -- the files ----------------------------------------------------------------------------------------

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("host network: %s unreadable (%s): ignored", self.dir / name, exc)
            return None
        return data if isinstance(data, dict) else None

    def _write(self, name: str, data: dict[str, Any]) -> None:
        private_dir(self.dir)
        tmp = self.dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.dir / name)

    def _drop(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)

    def _good(self) -> HostNetConfig:
        """The last good config; none yet is the empty one (nothing of Corral's on the host)."""
        data = self._read("good.json")
        return parse_config(data) if data is not None else HostNetConfig()

    # -- the agent's life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """At agent start: a change left pending rolls back; else the last good config is applied again."""
        private_dir(self.dir)
        with self.lock:
            pending = self._read("pending.json")
            if pending is not None:
                self._rollback(str(pending.get("id")), "the agent restarted before the change was confirmed")
                return
            if self._read("good.json") is None:
                return  # no config was ever given: the host's network is not touched
            try:
                changes = self.applier.apply(self._good(), force=True)
                self.last_error = None
                if changes:
                    log.info("host network: the last good configuration applied again: %s", "; ".join(changes))
            except Exception as exc:
                self.last_error = f"applying the last good configuration at start: {_message(exc)}"
                log.error("host network: %s", self.last_error)

    def stop(self) -> None:
        """The timer goes with the agent; the pending change stays on disk and rolls back at the next start."""
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    # -- the API ------------------------------------------------------------------------------------------

    def show(self) -> dict[str, Any]:
        with self.lock:
            good = self._read("good.json")
            pending = self._read("pending.json")
            rollback, error = self.last_rollback, self.last_error
        return {"config": good, "pending": pending, "last_rollback": rollback, "error": error,
                "netns": self.netns, "live": self.applier.live()}

    def change(self, config: HostNetConfig) -> dict[str, Any]:
        """Apply ``config`` as a pending change: kept if confirmed within ``rollback_seconds``, else undone."""
        with self.lock:
            pending = self._read("pending.json")
            if pending is not None:
                raise Conflict(f"change {pending.get('id')} is pending until {pending.get('deadline')}: confirm it "
                               "or wait for its rollback first", field="id", pending=pending.get("id"))
            change_id = uuid.uuid4().hex
            record: dict[str, Any] = {"id": change_id, "config": config.stored(), "created": _iso(self.clock()),
                                      "deadline": _iso(self.clock() + config.rollback_seconds), "changes": []}
            self._write("pending.json", record)  # first: a crash while applying rolls back at the next start
            try:
                changes = self.applier.apply(config)
            except Exception as exc:
                self._rollback(change_id, f"the change failed: {_message(exc)}")
                if isinstance(exc, AgentError):
                    exc.message += " (the last good configuration was restored)"
                    exc.extra["rolled_back"] = True
                raise
            deadline = self.clock() + config.rollback_seconds
            record.update(deadline=_iso(deadline), changes=changes)
            self._write("pending.json", record)
            self.timer = threading.Timer(config.rollback_seconds, self._expire, args=(change_id,))
            self.timer.name = f"hostnet-rollback-{change_id[:8]}"
            self.timer.daemon = True
            self.timer.start()
            log.info("host network: change %s applied, rollback at %s unless confirmed", change_id, record["deadline"])
            return {"id": change_id, "status": "pending", "deadline": record["deadline"],
                    "rollback_seconds": config.rollback_seconds, "changes": changes}

    def confirm(self, change_id: str) -> dict[str, Any]:
        """The engine reached the agent after the change: it becomes the last good config."""
        with self.lock:
            pending = self._read("pending.json")
            if pending is None or pending.get("id") != change_id:
                rolled = self.last_rollback
                if rolled is not None and rolled.get("id") == change_id:
                    raise Conflict(f"change {change_id} was rolled back at {rolled['at']} ({rolled['reason']}): "
                                   "apply it again", field="id", rolled_back=rolled)
                raise NotFound(f"no pending host network change {change_id}", field="id",
                               pending=pending.get("id") if pending else None)
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self._write("good.json", pending["config"])
            self._drop("pending.json")
            log.info("host network: change %s confirmed", change_id)
            return {"id": change_id, "status": "confirmed", "config": pending["config"]}

    # -- rollback -----------------------------------------------------------------------------------------

    def _expire(self, change_id: str) -> None:
        with self.lock:
            pending = self._read("pending.json")
            if pending is not None and pending.get("id") == change_id:
                self._rollback(change_id, "not confirmed before its deadline")

    def _rollback(self, change_id: str, reason: str) -> None:
        """Back to the last good config, whatever was started on the new one meanwhile (``force``)."""
        record: dict[str, Any] = {"id": change_id, "at": _iso(self.clock()), "reason": reason}
        try:
            record["changes"] = self.applier.apply(self._good(), force=True)
            self.last_error = None
        except Exception as exc:
            record["error"] = _message(exc)
            self.last_error = f"rolling back change {change_id}: {record['error']}"
            log.error("host network: %s", self.last_error)
        self._drop("pending.json")
        self.timer = None
        self.last_rollback = record
        log.warning("host network: change %s rolled back (%s)", change_id, reason)


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
