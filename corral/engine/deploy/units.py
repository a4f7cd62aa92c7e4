"""What the deploy writes on the host: where (``Layout``, under an optional prefix), the agent's configuration,
and how it is run (a systemd unit, or a start script with a pidfile where the host has no systemd)."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

SERVICE = "corral-agent"


@dataclass(frozen=True)
class Layout:
    root: str

    def p(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.root, path.lstrip("/")))

    @property
    def venv(self) -> str:
        return self.p("/opt/corral/venv")

    @property
    def wheels(self) -> str:
        return self.p("/opt/corral/wheels")

    @property
    def config(self) -> str:
        return self.p("/etc/corral/agent.toml")

    @property
    def pki(self) -> str:
        return self.p("/etc/corral/pki")

    @property
    def ctl(self) -> str:
        return self.p(f"/etc/init.d/{SERVICE}")

    @property
    def unit(self) -> str:
        return self.p(f"/etc/systemd/system/{SERVICE}.service")

    @property
    def log(self) -> str:
        return self.p("/var/log/corral/agent.log")

    @property
    def pidfile(self) -> str:
        return self.p("/var/lib/corral/agent.pid")

    @property
    def state_dir(self) -> str:
        return self.p("/var/lib/corral")


def agent_toml(values: dict[str, Any]) -> str:
    lines = ["# written by the Corral engine's deploy; reinstall rewrites it"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")  # JSON strings, booleans and arrays are valid TOML
    return "\n".join(lines) + "\n"


CTL_SCRIPT = """#!/bin/sh
# {service}: start|stop|restart|status of the Corral agent on a host without systemd.
# Written by the Corral engine's deploy; reinstall rewrites it.
PIDFILE={pidfile}
LOG={log}
running() {{ [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }}
start() {{
  if running; then echo "{service} is running (pid $(cat "$PIDFILE"))"; return 0; fi
  mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOG")"
  if command -v setsid >/dev/null 2>&1; then
    setsid {venv}/bin/corral agent serve --config {config} </dev/null >>"$LOG" 2>&1 &
  else
    nohup {venv}/bin/corral agent serve --config {config} </dev/null >>"$LOG" 2>&1 &
  fi
  echo $! > "$PIDFILE"
  sleep 1
  if ! running; then echo "{service} exited at once; the end of $LOG:" >&2; tail -n 20 "$LOG" >&2; return 1; fi
  echo "{service} started (pid $(cat "$PIDFILE"))"
}}
stop() {{
  if running; then
    pid=$(cat "$PIDFILE"); kill "$pid"; i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$PIDFILE"; echo "{service} stopped"
}}
case "$1" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE"))"; else echo "stopped"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
"""

UNIT = """[Unit]
Description=Corral host agent
After=network-online.target libvirtd.service
Wants=network-online.target

[Service]
ExecStart={venv}/bin/corral agent serve --config {config}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""

