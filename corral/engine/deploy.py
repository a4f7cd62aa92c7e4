"""Deploy a host over SSH: detect the hypervisor, check what it needs, install the agent, trust it over mTLS.

Steps (each one an event and a task progress line; a failure names the step and why):

1. ``connect``  -- SSH (asyncssh) as root; the host key is shown and pinned on first use (``hosts.ssh_host_key``);
   later connections (a rerun, reinstall, certificate renewal) refuse any other key.
2. ``detect``   -- Xen dom0 (``/proc/xen/capabilities`` holds ``control_d``, ``/sys/hypervisor/type``, ``xl``),
   KVM (``/dev/kvm``, vmx/svm) or none (QEMU under TCG when the deploy allows it).
3. ``packages`` -- what the agent needs from the host's package manager (python3 + venv, libvirt's Python
   binding, virsh), only where missing.
4. ``check``    -- what that hypervisor needs. Xen: Xen and libxl versions, xenstored and xenconsoled running,
   libvirt's libxl driver answering on ``xen:///system``, a bridge. KVM: ``/dev/kvm`` creating VMs, vmx/svm,
   libvirt's QEMU driver, a bridge. A failed item ends the deploy: the host is ``non_operational`` and the
   reason names every failed item.
5. ``install``  -- the wheel of the running Corral (and, for a host of the same Python and architecture, its
   dependencies) over SFTP into ``/opt/corral/wheels``, a virtualenv ``/opt/corral/venv``
   (``--system-site-packages``: the distribution's libvirt binding serves), the engine's SSH key authorized.
6. ``configure``-- ``/etc/corral/agent.toml`` and a systemd unit, or a start script with a pidfile where the host
   has no systemd.
7. ``certificate`` -- a server certificate from the engine's CA (``/etc/corral/pki``).
8. ``start``    -- (re)start the agent and wait for its health over TLS verified against the engine's CA.
9. ``activate`` -- ``GET /v1/host`` with the engine's client certificate (mutual TLS) and the agent's own
   hardware check decide ``up`` or ``non_operational``.

Every step is idempotent, so rerunning ``host add`` on a host whose deploy failed resumes safely: the pinned key
is enforced, unchanged wheels are not sent again and an installed wheel of the same hash is not reinstalled.
``install_root`` puts every file the deploy writes under a prefix (used by the tests, which deploy to this
machine inside a network namespace; a prefix always uses the start script, never systemd).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncssh
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine import hostops
from corral.engine.agent_client import AgentError, AgentTarget
from corral.engine.context import EngineContext
from corral.engine.db.models import Host, HostState, Severity, utcnow
from corral.engine.errors import ApiError
from corral.engine.events import record
from corral.engine.pki import RENEW_BEFORE, EnginePki
from corral.engine.tasks import TaskContext
from corral.engine.wheels import Wheel, WheelError, corral_wheel, dependency_wheels, engine_platform

log = logging.getLogger(__name__)

STEPS = ("connect", "detect", "packages", "check", "install", "configure", "certificate", "start", "activate")
AGENT_PORT = 8470
MIN_PYTHON = (3, 11)
SERVICE = "corral-agent"


# ---------------------------------------------------------------------------------------------- API models

class SshIn(BaseModel):
    """How to reach the host. The password and key are used for this deploy only and never stored: the deploy
    authorizes the engine's own SSH key on the host for later operations."""

    model_config = ConfigDict(extra="forbid")
    address: str = Field(pattern=r"^[A-Za-z0-9._:\[\]-]{1,255}$", description="host name or IP address")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field("root", pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")
    password: str | None = Field(None, max_length=1024)
    private_key: str | None = Field(None, max_length=65536, description="private key text (OpenSSH or PEM)")
    passphrase: str | None = Field(None, max_length=1024)
    host_key_fingerprint: str | None = Field(None, description="expected SHA256:... (else pinned on first use)")
    connect_timeout: float = Field(15.0, gt=0, le=300)


class DeployOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow_tcg: bool = Field(False, description="accept a host without KVM: QEMU under TCG (slow; labs, tests)")
    libvirt_uri: str | None = Field(None, description="default: xen:///system or qemu:///system")
    agent_port: int = Field(AGENT_PORT, ge=1, le=65535, description="port the agent listens on")
    agent_url: str | None = Field(None, pattern=r"^https://[^\s/]+$",
                                  description="how the engine reaches the agent (NAT, tunnels); "
                                              "default https://ADDRESS:AGENT_PORT")
    install_root: str = Field("/", pattern=r"^/[A-Za-z0-9._/-]*$",
                              description="prefix for every file the deploy writes (tests, chroots)")
    install_packages: bool = True
    cert_days: int = Field(365, ge=1, le=3650)
    health_timeout: float = Field(120.0, gt=0, le=3600)
    command_timeout: float = Field(900.0, gt=0, le=7200)


# ---------------------------------------------------------------------------------------------- failures

class DeployFailed(ApiError):
    status = 502
    code = "deploy_failed"

    def __init__(self, step: str, message: str, *, code: str | None = None,
                 state: HostState = HostState.NON_OPERATIONAL, items: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"deploy step {step!r} failed: {message}", code=code, step=step,
                         failed_items=items or [])
        self.step = step
        self.reason = message
        self.host_state = state


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail}


# ---------------------------------------------------------------------------------------------- SSH

class _HostKeyCheck(asyncssh.SSHClient):
    """Pin on first use: accept any key when none is pinned (unless a fingerprint is expected), else only it."""

    def __init__(self, pinned: asyncssh.SSHKey | None, expected: str | None) -> None:
        self.pinned = pinned
        self.expected = expected
        self.seen: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.seen = key
        if self.pinned is not None:
            return bool(key.public_data == self.pinned.public_data)
        if self.expected:
            return fingerprint(key) == normalize_fingerprint(self.expected)
        return True


def fingerprint(key: asyncssh.SSHKey) -> str:
    return str(key.get_fingerprint("sha256"))


def normalize_fingerprint(value: str) -> str:
    value = value.strip()
    return value if value.startswith("SHA256:") else f"SHA256:{value}"


def key_line(key: asyncssh.SSHKey) -> str:
    return bytes(key.export_public_key("openssh")).decode().strip()


@dataclass
class Credentials:
    address: str
    port: int = 22
    user: str = "root"
    password: str | None = None
    private_keys: list[bytes] = field(default_factory=list)
    passphrase: str | None = None
    expected_fingerprint: str | None = None
    connect_timeout: float = 15.0


class Remote:
    """One SSH connection to the host: run commands, write files (SFTP, else ``cat``)."""

    def __init__(self, conn: asyncssh.SSHClientConnection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self._sftp: asyncssh.SFTPClient | None = None
        self._no_sftp = False

    async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None,
                  step: str = "run") -> tuple[int, str, str]:
        try:
            res = await asyncio.wait_for(self.conn.run(command, input=stdin, check=False),
                                         timeout or self.timeout)
        except TimeoutError:
            raise DeployFailed(step, f"{command.split()[0]!r} did not finish within {timeout or self.timeout:g} s",
                               state=HostState.NON_OPERATIONAL) from None
        except (asyncssh.Error, OSError) as exc:
            raise DeployFailed(step, f"SSH connection lost: {exc}", code="unreachable",
                               state=HostState.UNREACHABLE) from None
        out = res.stdout if isinstance(res.stdout, str) else (res.stdout or b"").decode(errors="replace")
        err = res.stderr if isinstance(res.stderr, str) else (res.stderr or b"").decode(errors="replace")
        return int(res.exit_status if res.exit_status is not None else 255), out, err

    async def must(self, command: str, step: str, what: str, *, stdin: str | None = None,
                   timeout: float | None = None) -> str:
        rc, out, err = await self.run(command, stdin=stdin, timeout=timeout, step=step)
        if rc != 0:
            tail = " | ".join((err or out).strip().splitlines()[-6:])
            raise DeployFailed(step, f"{what} failed (exit {rc}): {tail}")
        return out

    async def sftp(self) -> asyncssh.SFTPClient | None:
        if self._sftp is None and not self._no_sftp:
            try:
                self._sftp = await self.conn.start_sftp_client()
            except (asyncssh.Error, OSError) as exc:
                log.info("no SFTP on the host (%s); writing files through the shell", exc)
                self._no_sftp = True
        return self._sftp

    async def write(self, path: str, data: bytes, mode: int, step: str) -> None:
        """Write ``path`` atomically (temp file + rename) with ``mode`` from the start."""
        tmp = f"{path}.corral-tmp"
        sftp = await self.sftp()
        try:
            if sftp is not None:
                async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as fh:
                    await fh.write(data)
                await sftp.chmod(tmp, mode)
                await sftp.posix_rename(tmp, path)
                return
        except (asyncssh.SFTPError, OSError) as exc:
            raise DeployFailed(step, f"writing {path}: {exc}") from None
        q, qt = shlex.quote(path), shlex.quote(tmp)
        res = await asyncio.wait_for(
            self.conn.run(f"umask 077 && cat > {qt} && chmod {mode:o} {qt} && mv -f {qt} {q}", input=data,
                          encoding=None, check=False), self.timeout)
        if res.exit_status != 0:
            raise DeployFailed(step, f"writing {path} failed: {(res.stderr or b'')!r}")

    async def put(self, local: Path, path: str, step: str) -> None:
        sftp = await self.sftp()
        if sftp is None:
            await self.write(path, local.read_bytes(), 0o644, step)
            return
        tmp = f"{path}.corral-tmp"
        try:
            await sftp.put(str(local), tmp)
            await sftp.chmod(tmp, 0o644)
            await sftp.posix_rename(tmp, path)
        except (asyncssh.SFTPError, OSError) as exc:
            raise DeployFailed(step, f"sending {local.name} to {path}: {exc}") from None

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
        self.conn.close()


async def connect(creds: Credentials, pinned_line: str | None) -> tuple[Remote, asyncssh.SSHKey, bool]:
    """Connect and authenticate; returns the connection, the host key and whether it was first seen now."""
    step = "connect"
    pinned = asyncssh.import_public_key(pinned_line) if pinned_line else None
    checker = _HostKeyCheck(pinned, creds.expected_fingerprint)
    keys = []
    for data in creds.private_keys:
        try:
            keys.append(asyncssh.import_private_key(data, creds.passphrase))
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise DeployFailed(step, f"the private key cannot be read: {exc}", code="invalid") from None
    where = f"{creds.user}@{creds.address}:{creds.port}"
    host_key_algs: Any = [a.decode() for a in pinned.sig_algorithms] if pinned is not None else ()
    try:
        conn = await asyncio.wait_for(asyncssh.connect(
            creds.address, creds.port, username=creds.user, password=creds.password,
            client_keys=keys or None, passphrase=creds.passphrase, agent_path=None, config=None,
            known_hosts=([], [], []), client_factory=lambda: checker, server_host_key_algs=host_key_algs,
            connect_timeout=creds.connect_timeout, login_timeout=creds.connect_timeout * 2,
            keepalive_interval=30), creds.connect_timeout * 3)
    except asyncssh.HostKeyNotVerifiable:
        seen = fingerprint(checker.seen) if checker.seen is not None else "none"
        if pinned is not None:
            msg = (f"the host key of {creds.address}:{creds.port} changed: pinned {fingerprint(pinned)}, "
                   f"offered {seen}; if the host was reinstalled, remove it from Corral and add it again")
        else:
            msg = (f"the host key of {creds.address}:{creds.port} is {seen}, not the expected "
                   f"{normalize_fingerprint(creds.expected_fingerprint or '')}")
        raise DeployFailed(step, msg, code="host_key_mismatch") from None
    except asyncssh.PermissionDenied as exc:
        how = ", ".join(m for m, v in (("password", creds.password), ("key", keys)) if v) or "no credential"
        raise DeployFailed(step, f"SSH authentication as {where} failed ({how}): {exc.reason}",
                           code="ssh_auth_failed") from None
    except TimeoutError:
        raise DeployFailed(step, f"cannot reach {creds.address}:{creds.port}: no answer within "
                           f"{creds.connect_timeout:g} s", code="unreachable", state=HostState.UNREACHABLE) from None
    except OSError as exc:
        raise DeployFailed(step, f"cannot reach {creds.address}:{creds.port}: {exc.strerror or exc}",
                           code="unreachable", state=HostState.UNREACHABLE) from None
    except asyncssh.Error as exc:
        raise DeployFailed(step, f"SSH to {where} failed: {exc.reason}", code="ssh_error",
                           state=HostState.UNREACHABLE) from None
    key = conn.get_server_host_key() or checker.seen
    assert key is not None
    return Remote(conn, 900.0), key, pinned is None


# ---------------------------------------------------------------------------------------------- remote probes

PROBE = r"""
set +e
echo "uid=$(id -u)"
echo "hostname=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)"
echo "arch=$(uname -m)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "os=$ID $VERSION_ID"; fi
[ -r /proc/xen/capabilities ] && echo "xen_caps=$(tr '\n' ' ' < /proc/xen/capabilities)"
[ -r /sys/hypervisor/type ] && echo "hv_type=$(cat /sys/hypervisor/type)"
command -v xl >/dev/null 2>&1 && echo "xl=$(command -v xl)"
[ -e /dev/kvm ] && echo "kvm_dev=1"
[ -c /dev/kvm ] && echo "kvm_chr=1"
for f in $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2); do
  case $f in vmx|svm) echo "cpu_virt=$f";; esac
done
[ -d /run/systemd/system ] && echo "systemd=1"
for pm in apt-get dnf yum zypper apk; do command -v $pm >/dev/null 2>&1 && { echo "pkg=$pm"; break; }; done
if command -v python3 >/dev/null 2>&1; then
  echo "python=$(python3 -c 'import sys, sysconfig; v = sys.version_info
print("%d.%d %s" % (v[0], v[1], sysconfig.get_platform()))' 2>/dev/null)"
  python3 -c 'import venv, ensurepip' 2>/dev/null && echo "venv=1"
  python3 -c 'import libvirt' 2>/dev/null && echo "py_libvirt=1"
fi
command -v virsh >/dev/null 2>&1 && echo "virsh=1"
command -v setsid >/dev/null 2>&1 && echo "setsid=1"
for d in /sys/class/net/*; do [ -d "$d/bridge" ] && echo "bridge=${d##*/}"; done
echo "home=$HOME"
"""

PROCS = r"""
for n in xenstored oxenstored xenconsoled; do
  for p in /proc/[0-9]*; do
    if [ "$(cat $p/comm 2>/dev/null)" = "$n" ]; then echo "$n"; break; fi
  done
done
"""

LIBXL = r"""
for f in /usr/lib/libxenlight.so.* /usr/lib64/libxenlight.so.* /usr/lib/*/libxenlight.so.* \
         /usr/local/lib/libxenlight.so.*; do
  [ -e "$f" ] && echo "${f##*libxenlight.so.}"
done
"""

KVM_TRY = ("python3 -c 'import fcntl, os; fd = os.open(\"/dev/kvm\", os.O_RDWR); "
           "print(fcntl.ioctl(fd, 0xAE00), fcntl.ioctl(fd, 0xAE01, 0))'")


def parse_probe(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def first(probe: dict[str, list[str]], key: str) -> str:
    return probe.get(key, [""])[0]


@dataclass
class Detected:
    kind: Literal["xen", "kvm", "qemu", "none"]
    evidence: list[dict[str, str]]

    @property
    def flavor(self) -> str:
        return "xen" if self.kind == "xen" else "kvm"


def detect(probe: dict[str, list[str]], allow_tcg: bool) -> Detected:
    caps = first(probe, "xen_caps")
    hv = first(probe, "hv_type")
    evidence = [{"source": "/proc/xen/capabilities", "value": caps or "(absent)"},
                {"source": "/sys/hypervisor/type", "value": hv or "(absent)"},
                {"source": "xl", "value": first(probe, "xl") or "(absent)"},
                {"source": "/dev/kvm", "value": "character device" if "kvm_chr" in probe else
                 ("present" if "kvm_dev" in probe else "(absent)")},
                {"source": "cpu flags", "value": ", ".join(probe.get("cpu_virt", [])) or "no vmx/svm"}]
    if "control_d" in caps.split() or "control_d" in caps:
        return Detected("xen", evidence)
    if "kvm_chr" in probe or probe.get("cpu_virt"):
        return Detected("kvm", evidence)
    if allow_tcg:
        return Detected("qemu", evidence)
    return Detected("none", evidence)


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- files

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


def _toml(values: dict[str, Any]) -> str:
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

PACKAGES: dict[str, dict[str, str]] = {
    "apt-get": {"python3": "python3", "venv": "python3-venv", "libvirt": "python3-libvirt",
                "virsh": "libvirt-clients"},
    "dnf": {"python3": "python3", "libvirt": "python3-libvirt", "virsh": "libvirt-client"},
    "yum": {"python3": "python3", "libvirt": "python3-libvirt", "virsh": "libvirt-client"},
    "zypper": {"python3": "python3", "libvirt": "python3-libvirt-python", "virsh": "libvirt-client"},
    "apk": {"python3": "python3", "libvirt": "py3-libvirt", "virsh": "libvirt-client"},
}
INSTALL_CMD = {
    "apt-get": "export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q {p} || "
               "{{ apt-get update -q && apt-get install -y -q {p}; }}",
    "dnf": "dnf install -y {p}", "yum": "yum install -y {p}", "zypper": "zypper --non-interactive install {p}",
    "apk": "apk add {p}",
}


# ---------------------------------------------------------------------------------------------- the deploy

Mode = Literal["add", "reinstall", "renew"]


class Deployer:
    """One run of the deploy (or reinstall, or certificate renewal) of one host."""

    def __init__(self, ctx: EngineContext, task: TaskContext, host_id: str, creds: Credentials,
                 options: DeployOptions, mode: Mode = "add") -> None:
        if ctx.pki is None:
            raise ApiError("this engine has no data directory, so no CA: deploy is unavailable",
                           code="unavailable", status=503)
        self.ctx, self.task, self.host_id, self.creds, self.opts, self.mode = ctx, task, host_id, creds, options, mode
        self.pki: EnginePki = ctx.pki
        self.layout = Layout(options.install_root)
        self.name = ""
        self.remote: Remote | None = None
        self.probe: dict[str, list[str]] = {}
        self.detected: Detected | None = None
        self.timings: dict[str, float] = {}
        self.n = 0

    # bookkeeping
    @property
    def agent_url(self) -> str:
        if self.opts.agent_url:
            return self.opts.agent_url.rstrip("/")
        addr = self.creds.address
        host = f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
        return f"https://{host}:{self.opts.agent_port}"

    async def _event(self, kind: str, message: str, severity: Severity = Severity.INFO,
                     detail: dict[str, Any] | None = None, **host_values: Any) -> None:
        def write(s: Session) -> None:
            h = s.get(Host, self.host_id)
            if h is None:
                return
            for key, value in host_values.items():
                setattr(h, key, value)
            record(s, kind, f"host {h.name}: {message}", severity=severity, object_type="host", object_id=h.id,
                   detail=detail)
        await self.ctx.db.run(write)

    async def _progress(self, step: str, message: str, event: bool = True) -> None:
        self.n = STEPS.index(step) + 1
        await self.task.progress(f"[{self.n}/{len(STEPS)}] {step}: {message}")
        if event:
            await self._event("host_deploy_step", f"{step}: {message}", detail={"step": step})

    async def _step(self, step: str, fn: Callable[[], Awaitable[str]]) -> None:
        started = time.monotonic()
        await self._progress(step, "...", event=False)
        message = await fn()
        self.timings[step] = round(time.monotonic() - started, 2)
        await self._progress(step, message)
        await self._save_deploy(steps={step: {"done_at": utcnow().isoformat(), "seconds": self.timings[step]}})

    async def _save_deploy(self, **values: Any) -> None:
        def write(s: Session) -> None:
            h = s.get(Host, self.host_id)
            if h is None:
                return
            data = dict(h.deploy or {})
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(data.get(key), dict):
                    data[key] = {**data[key], **value}
                else:
                    data[key] = value
            h.deploy = data
        await self.ctx.db.run(write)

    async def run(self) -> dict[str, Any]:
        monitor = self.ctx.monitor
        held = getattr(monitor, "held", None)
        if isinstance(held, set):
            held.add(self.host_id)
            await monitor.unwatch(self.host_id)
        started = time.monotonic()
        try:
            self.name = await self.ctx.db.run(lambda s: self._host(s).name)
            await self._save_deploy(options=self.opts.model_dump(), mode=self.mode, started_at=utcnow().isoformat(),
                                    error=None)
            await self._step("connect", self._connect)
            if self.mode == "renew":
                await self._step("certificate", self._certificate)
                await self._step("start", self._start)
                result = {"host_id": self.host_id, "name": self.name, "renewed": True}
            else:
                for step, fn in (("detect", self._detect), ("packages", self._packages), ("check", self._check),
                                 ("install", self._install), ("configure", self._configure),
                                 ("certificate", self._certificate), ("start", self._start)):
                    await self._step(step, fn)
                if isinstance(held, set):
                    held.discard(self.host_id)
                result = await self._activate()
            result["timings"] = {**self.timings, "total": round(time.monotonic() - started, 2)}
            await self._save_deploy(finished_at=utcnow().isoformat(), timings=result["timings"])
            return result
        except DeployFailed as exc:
            await self._failed(exc)
            raise
        except ApiError:
            raise
        except Exception as exc:
            if not isinstance(exc, WheelError | OSError):
                log.exception("deploy of host %s", self.host_id)
            failure = DeployFailed(STEPS[max(self.n - 1, 0)], f"{type(exc).__name__}: {exc}")
            await self._failed(failure)
            raise failure from None
        finally:
            if self.remote is not None:
                self.remote.close()
            if isinstance(held, set) and self.host_id in held:
                held.discard(self.host_id)
                if self.mode == "renew":
                    with contextlib.suppress(Exception):
                        await monitor.sync_hosts()

    def _host(self, s: Session) -> Host:
        h = s.get(Host, self.host_id)
        if h is None:
            raise ApiError("the host was removed meanwhile", code="not_found", status=404)
        return h

    async def _failed(self, exc: DeployFailed) -> None:
        renew = self.mode == "renew"
        await self._save_deploy(error={"step": exc.step, "message": exc.reason, "code": exc.code,
                                       "failed_items": exc.extra.get("failed_items", [])},
                                finished_at=utcnow().isoformat())
        values: dict[str, Any] = {}
        if not renew:
            values = {"state": exc.host_state.value, "state_reason": f"deploy failed at {exc.step}: {exc.reason}"}
        await self._event("host_deploy_failed" if not renew else "host_cert_renew_failed",
                          f"{'certificate renewal' if renew else 'deploy'} failed at {exc.step}: {exc.reason}",
                          Severity.ERROR, detail={"step": exc.step, "code": exc.code,
                                                  "failed_items": exc.extra.get("failed_items", [])},
                          **values)

    # steps
    async def _connect(self) -> str:
        pinned = await self.ctx.db.run(lambda s: self._host(s).ssh_host_key)
        creds = self.creds
        if pinned is None and self.mode != "add":
            raise DeployFailed("connect", "no host key is pinned for this host; add it over SSH first")
        remote, key, first_use = await connect(creds, pinned)
        remote.timeout = self.opts.command_timeout
        self.remote = remote
        fp = fingerprint(key)
        if first_use:
            await self._event("host_key_pinned", f"SSH host key {key.get_algorithm()} {fp} pinned on first use",
                              detail={"fingerprint": fp}, ssh_host_key=key_line(key))
        await self._save_deploy(host_key_fingerprint=fp)
        uid = (await remote.must("id -u", "connect", "id -u")).strip()
        if uid != "0":
            raise DeployFailed("connect", f"{creds.user} is not root on the host (uid {uid}); deploy needs root")
        how = "pinned on first use" if first_use else "matches the pinned key"
        return f"connected to {creds.user}@{creds.address}:{creds.port}; host key {key.get_algorithm()} {fp} ({how})"

    async def _probe(self) -> dict[str, list[str]]:
        assert self.remote is not None
        out = await self.remote.must("sh -s", "detect", "probing the host", stdin=PROBE, timeout=120)
        self.probe = parse_probe(out)
        return self.probe

    async def _detect(self) -> str:
        probe = await self._probe()
        det = detect(probe, self.opts.allow_tcg)
        self.detected = det
        await self._save_deploy(hypervisor=det.kind, detection=det.evidence, os=first(probe, "os"),
                                remote_python=first(probe, "python"))
        await self._event("host_detected", f"hypervisor {det.kind}",
                          detail={"evidence": det.evidence}, hypervisor=det.kind if det.kind != "none" else None)
        evidence = "; ".join(f"{e['source']}: {e['value']}" for e in det.evidence)
        label = {"xen": "Xen dom0", "kvm": "KVM", "qemu": "QEMU under TCG (no KVM; allowed by the deploy)",
                 "none": "no hypervisor (neither a Xen dom0 nor KVM)"}[det.kind]
        return f"{label} [{evidence}] on {first(probe, 'os') or 'unknown OS'} {first(probe, 'arch')}"

    async def _packages(self) -> str:
        assert self.remote is not None
        probe = self.probe
        want = []
        if not first(probe, "python"):
            want += ["python3", "venv"]
        elif "venv" not in probe:
            want.append("venv")
        if "py_libvirt" not in probe:
            want.append("libvirt")
        if "virsh" not in probe:
            want.append("virsh")
        pm = first(probe, "pkg")
        names = [PACKAGES.get(pm, {}).get(w) for w in want]
        todo = [n for n in names if n]
        if not todo:
            return "nothing missing" if not want else f"nothing to install with {pm or 'no package manager'}"
        if not self.opts.install_packages:
            return f"missing {', '.join(todo)}; not installed (install_packages is off)"
        cmd = INSTALL_CMD[pm].format(p=" ".join(shlex.quote(n) for n in todo))
        await self._progress("packages", f"installing {', '.join(todo)} with {pm}", event=False)
        rc, out, err = await self.remote.run(cmd, step="packages")
        if rc != 0:
            tail = " | ".join((err or out).strip().splitlines()[-4:])
            if not set(want) <= {"libvirt", "virsh"}:
                raise DeployFailed("packages", f"{pm} install {' '.join(todo)} failed (exit {rc}): {tail}")
            # the shipped libvirt-python wheel and a Python check of libvirt stand in for them
            await self._event("host_deploy_warning", f"{pm} could not install {', '.join(todo)}: {tail}",
                              Severity.WARNING, detail={"step": "packages"})
            return f"could not install {', '.join(todo)} with {pm} (continuing without): {tail}"
        await self._probe()
        return f"installed {', '.join(todo)} with {pm}"

    async def _check(self) -> str:
        assert self.remote is not None and self.detected is not None
        items = await self._check_items()
        failed = [i for i in items if not i["ok"]]
        await self._save_deploy(check={"ok": not failed, "items": items})
        if failed:
            text = "; ".join(f"{i['name']}: {i['detail']}" for i in failed)
            raise DeployFailed("check", f"hardware check failed: {text}", code="hardware_check_failed",
                               items=failed)
        await self._event("host_checked", "hardware check passed", detail={"items": items})
        return "passed: " + "; ".join(f"{i['name']}: {i['detail']}" for i in items)

    async def _virsh(self, uri: str) -> tuple[bool, str]:
        assert self.remote is not None
        if "virsh" not in self.probe:
            if "py_libvirt" in self.probe:
                code = ("import libvirt, sys; c = libvirt.open(sys.argv[1]); v = c.getVersion(); "
                        "print('Running hypervisor: %s %d.%d.%d' % (c.getType(), v // 1000000, v // 1000 % 1000, "
                        "v % 1000))")
                rc, out, err = await self.remote.run(f"python3 -c {shlex.quote(code)} {shlex.quote(uri)}",
                                                     timeout=60, step="check")
            else:
                return False, "neither virsh nor libvirt's Python binding on the host"
        else:
            rc, out, err = await self.remote.run(f"virsh -c {shlex.quote(uri)} version", timeout=60, step="check")
        if rc != 0:
            return False, f"libvirt does not answer on {uri}: {' '.join((err or out).split())[:300]}"
        running = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                        if line.startswith("Running hypervisor")), "")
        return True, f"libvirt answers on {uri}" + (f" ({running})" if running else "")

    def libvirt_uri(self) -> str:
        assert self.detected is not None
        if self.opts.libvirt_uri:
            return self.opts.libvirt_uri
        return "xen:///system" if self.detected.kind == "xen" else "qemu:///system"

    async def _check_items(self) -> list[dict[str, Any]]:
        assert self.remote is not None and self.detected is not None
        probe, det, items = self.probe, self.detected, []
        py = first(probe, "python")
        ver = _version_tuple(py.split()[0]) if py else ()
        items.append(_check("python3", bool(ver) and ver >= MIN_PYTHON and "venv" in probe,
                            f"Python {py.split()[0]}" + ("" if "venv" in probe else " without the venv module")
                            if py else "no python3 on the host"))
        if det.kind == "none":
            items.append(_check("hypervisor", False, "neither a Xen dom0 (no control_d in /proc/xen/capabilities) "
                                "nor KVM"))
        uri = self.libvirt_uri()
        if det.kind == "xen":
            caps = first(probe, "xen_caps")
            items.append(_check("xen dom0", "control_d" in caps, f"/proc/xen/capabilities: {caps or '(absent)'}"))
            rc, out, err = await self.remote.run("xl info", timeout=120, step="check")
            info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
            version = info.get("xen_version", "")
            items.append(_check("xen version", rc == 0 and bool(version),
                                f"Xen {version}" if rc == 0 and version else
                                f"xl info failed: {' '.join((err or out).split())[:200] or 'xl missing'}"))
            _rc, out, _err = await self.remote.run("sh -s", stdin=LIBXL, timeout=60, step="check")
            libxl = sorted((v for v in out.split() if v), key=_version_tuple)
            items.append(_check("libxl", bool(libxl), f"libxenlight {libxl[-1]}" if libxl
                                else "no libxenlight library found"))
            _rc, out, _err = await self.remote.run("sh -s", stdin=PROCS, timeout=60, step="check")
            procs = set(out.split())
            store = sorted(procs & {"xenstored", "oxenstored"})
            items.append(_check("xenstored", bool(store), f"{store[0]} running" if store else "not running"))
            items.append(_check("xenconsoled", "xenconsoled" in procs,
                                "running" if "xenconsoled" in procs else "not running"))
            ok, detail = await self._virsh(uri)
            items.append(_check("libvirt libxl driver", ok, detail))
            items.append(_check("/dev/kvm", True, "not needed: a Xen dom0 runs guests through Xen"))
        else:
            rc, out, err = (1, "", "absent")
            if "kvm_dev" in probe:
                rc, out, err = await self.remote.run(KVM_TRY, timeout=60, step="check")
            kvm_ok = rc == 0
            if kvm_ok:
                items.append(_check("/dev/kvm", True, f"usable (KVM API {out.split()[0] if out.split() else '?'}, "
                                    "creates VMs)"))
            else:
                why = ("absent" if "kvm_dev" not in probe
                       else f"present but not usable: {' '.join(err.split())[-200:]}")
                if self.opts.allow_tcg:
                    items.append(_check("/dev/kvm", True, f"{why}; QEMU under TCG allowed by the deploy (slow)"))
                else:
                    items.append(_check("/dev/kvm", False, f"{why}: no KVM"))
            virt = probe.get("cpu_virt", [])
            if virt:
                items.append(_check("cpu virtualization", True, f"cpu flags: {', '.join(sorted(set(virt)))}"))
            elif kvm_ok:
                items.append(_check("cpu virtualization", True, "no vmx/svm in /proc/cpuinfo (nested or masked), "
                                    "but /dev/kvm creates VMs"))
            else:
                items.append(_check("cpu virtualization", self.opts.allow_tcg,
                                    "no vmx/svm in /proc/cpuinfo" + ("; TCG allowed" if self.opts.allow_tcg else "")))
            ok, detail = await self._virsh(uri)
            items.append(_check("libvirt qemu driver" if not uri.startswith("test:") else "libvirt test driver",
                                ok, detail))
        bridges = probe.get("bridge", [])
        items.append(_check("bridge", bool(bridges), f"bridges: {', '.join(bridges)}" if bridges
                            else "no bridge for the management network"))
        return items

    async def _wheels(self) -> tuple[Wheel, list[Wheel], bool]:
        assert self.ctx.pki is not None
        cache = self.ctx.pki.dir.parent / "wheels"
        same = first(self.probe, "python") == f"{engine_platform()['python']} {engine_platform()['platform']}"

        def build() -> tuple[Wheel, list[Wheel]]:
            return corral_wheel(cache), (dependency_wheels(cache) if same else [])
        main, deps = await asyncio.to_thread(build)
        return main, deps, same

    async def _install(self) -> str:
        assert self.remote is not None
        r, lay = self.remote, self.layout
        t0 = time.monotonic()
        main, deps, same = await self._wheels()
        wheels = [main, *deps]
        split = {"wheels": time.monotonic() - t0}
        q = shlex.quote
        await r.must(f"mkdir -p {q(lay.wheels)} {q(lay.p('/etc/corral'))} {q(lay.state_dir)} "
                     f"{q(posixpath.dirname(lay.log))}", "install", "creating directories")
        _rc, out, _err = await r.run(f"cd {q(lay.wheels)} && sha256sum *.whl 2>/dev/null", step="install")
        remote_sha = {name: sha for sha, _, name in (line.partition("  ") for line in out.splitlines())}
        sent = 0
        for w in wheels:
            if remote_sha.get(w.path.name) != w.sha256:
                await r.put(w.path, f"{lay.wheels}/{w.path.name}", "install")
                sent += 1
        keep = {w.path.name for w in wheels}
        split["send"] = time.monotonic() - t0 - sum(split.values())
        stale = [n for n in remote_sha if n not in keep]
        if stale:
            await r.run(f"cd {q(lay.wheels)} && rm -f {' '.join(q(n) for n in stale)}", step="install")
        py = f"{lay.venv}/bin/python"
        rc, _out, _err = await r.run(f"test -x {q(py)}", step="install")
        if rc != 0:
            await r.must(f"python3 -m venv --system-site-packages {q(lay.venv)}", "install",
                         f"creating the virtualenv {lay.venv}")
        split["venv"] = time.monotonic() - t0 - sum(split.values())
        marker = f"{lay.venv}/.corral-wheel.sha256"
        _rc, installed, _err = await r.run(f"cat {q(marker)} 2>/dev/null", step="install")
        pip = f"{q(py)} -m pip install -q --disable-pip-version-check --no-compile"
        index = f"--no-index --find-links {q(lay.wheels)}" if same else ""
        whl = q(f"{lay.wheels}/{main.path.name}")
        if installed.strip() == main.sha256 and self.mode != "reinstall":
            pip_note = "the same wheel is installed already"
        else:
            await r.must(f"{pip} {index} {whl}", "install", "pip install (dependencies)")
            await r.must(f"{pip} --no-deps --force-reinstall {index} {whl}", "install", "pip install corral")
            await r.must(f"echo {main.sha256} > {q(marker)}", "install", "recording the installed wheel")
            pip_note = "installed with pip" + (" from the shipped wheels" if same else " (dependencies from the "
                                                                                      "host's package index)")
        split["pip"] = time.monotonic() - t0 - sum(split.values())
        version = (await r.must(f"{q(py)} -c 'import corral; print(corral.__version__)'", "install",
                                "importing corral in the virtualenv")).strip()
        await self._authorize_engine_key()
        await self._save_deploy(install_seconds={k: round(v, 2) for k, v in split.items()})
        took = ", ".join(f"{k} {v:.1f} s" for k, v in split.items())
        return (f"corral {version} (wheel sha256 {main.sha256[:12]}) in {lay.venv}: {pip_note}; "
                f"{sent} of {len(wheels)} wheel(s) sent ({took})")

    async def _authorize_engine_key(self) -> None:
        assert self.remote is not None
        line = self.pki.ssh_public_line
        home = first(self.probe, "home") or "/root"
        path = self.layout.p(f"{home}/.ssh/authorized_keys")
        q = shlex.quote
        script = (f"mkdir -p {q(posixpath.dirname(path))} && chmod 700 {q(posixpath.dirname(path))} && "
                  f"touch {q(path)} && chmod 600 {q(path)} && "
                  f"(grep -qxF {q(line)} {q(path)} || echo {q(line)} >> {q(path)})")
        await self.remote.must(script, "install", "authorizing the engine's SSH key")

    async def _configure(self) -> str:
        assert self.remote is not None
        r, lay = self.remote, self.layout
        settings: dict[str, Any] = {
            "libvirt": self.libvirt_uri(), "listen": f"0.0.0.0:{self.opts.agent_port}",
            "tls_cert": f"{lay.pki}/agent.crt", "tls_key": f"{lay.pki}/agent.key", "tls_ca": f"{lay.pki}/ca.crt",
            "state_dir": lay.state_dir, "allow_tcg": self.opts.allow_tcg,
        }
        await r.must(f"mkdir -p {shlex.quote(lay.pki)} {shlex.quote(posixpath.dirname(lay.ctl))} && "
                     f"chmod 700 {shlex.quote(lay.pki)}", "configure", "creating directories")
        await r.write(lay.config, _toml(settings).encode(), 0o644, "configure")
        values = {"service": SERVICE, "venv": shlex.quote(lay.venv), "config": shlex.quote(lay.config),
                  "pidfile": shlex.quote(lay.pidfile), "log": shlex.quote(lay.log)}
        await r.write(lay.ctl, CTL_SCRIPT.format(**values).encode(), 0o755, "configure")
        if self._systemd:
            await r.must(f"mkdir -p {shlex.quote(posixpath.dirname(lay.unit))}", "configure", "mkdir")
            await r.write(lay.unit, UNIT.format(**values).encode(), 0o644, "configure")
            await r.must(f"systemctl daemon-reload && systemctl enable {SERVICE}.service", "configure",
                         "enabling the systemd unit")
            return f"{lay.config}; systemd unit {SERVICE}.service (enabled)"
        return f"{lay.config}; start script {lay.ctl} (no systemd: pidfile {lay.pidfile}, log {lay.log})"

    @property
    def _systemd(self) -> bool:
        return "systemd" in self.probe and self.layout.root == "/"

    async def _certificate(self) -> str:
        assert self.remote is not None
        r, lay = self.remote, self.layout
        if not self.probe:
            await self._probe()
        hostname = first(self.probe, "hostname")
        url_host = urlsplit(self.agent_url).hostname or ""
        sans = [self.creds.address, url_host, hostname]
        issued = await asyncio.to_thread(self.pki.issue_server, hostname or self.creds.address, sans,
                                         self.opts.cert_days)
        await r.must(f"mkdir -p {shlex.quote(lay.pki)} && chmod 700 {shlex.quote(lay.pki)}", "certificate", "mkdir")
        await r.write(f"{lay.pki}/agent.key", issued.key_pem, 0o600, "certificate")
        await r.write(f"{lay.pki}/agent.crt", issued.cert_pem, 0o644, "certificate")
        await r.write(f"{lay.pki}/ca.crt", self.pki.ca_pem, 0o644, "certificate")
        await self._save_deploy(cert={"serial": format(issued.serial, "x"), "not_after": issued.not_after.isoformat(),
                                      "sha256": issued.fingerprint, "sans": [s for s in sans if s]})
        await self._event("host_cert_issued", f"agent certificate issued, valid until {issued.not_after:%Y-%m-%d}",
                          detail={"serial": format(issued.serial, "x")}, cert_expires_at=issued.not_after)
        return (f"server certificate for {', '.join(dict.fromkeys(s for s in sans if s))} from the engine CA, "
                f"valid until {issued.not_after:%Y-%m-%d %H:%M} UTC")

    async def _start(self) -> str:
        assert self.remote is not None
        r, lay = self.remote, self.layout
        if not self.probe:
            await self._probe()
        if self._systemd:
            await r.must(f"systemctl restart {SERVICE}.service", "start", "systemctl restart")
        else:
            await r.must(f"{shlex.quote(lay.ctl)} restart", "start", f"{lay.ctl} restart")
        started = time.monotonic()
        target = AgentTarget(self.agent_url)
        last = ""
        while time.monotonic() - started < self.opts.health_timeout:
            try:
                health = await self.ctx.agents.health(target)
                if health.get("status") == "ok":
                    await self._set_url()
                    waited = time.monotonic() - started
                    return (f"agent {health.get('version')} answers at {self.agent_url} over TLS (certificate "
                            f"verified against the engine CA) after {waited:.1f} s; libvirt "
                            f"{'connected' if health.get('libvirt') else 'NOT connected'}")
                last = f"health: {health}"
            except AgentError as exc:
                last = exc.message
            await asyncio.sleep(0.5)
        _rc, tail, _err = await r.run(
            f"tail -n 15 {shlex.quote(lay.log)} 2>/dev/null" if not self._systemd
            else f"journalctl -u {SERVICE} -n 15 --no-pager 2>/dev/null", step="start")
        raise DeployFailed("start", f"the agent did not answer at {self.agent_url} within "
                           f"{self.opts.health_timeout:g} s ({last}); its log ends: "
                           + " | ".join(tail.strip().splitlines()[-8:]))

    async def _set_url(self) -> None:
        url = self.agent_url

        def write(s: Session) -> None:
            h = self._host(s)
            other = s.scalar(select(Host.id).where(Host.agent_url == url, Host.id != h.id))
            if other is not None:
                raise DeployFailed("start", f"another host already uses the agent URL {url}", code="conflict")
            h.agent_url, h.agent_token = url, None
        await self.ctx.db.run(write)

    async def _activate(self) -> dict[str, Any]:
        await self._progress("activate", "reading the host over mutual TLS")
        started = time.monotonic()
        try:
            result = await hostops.activate(self.ctx, self.task, self.host_id, adding=False)
        except ApiError as exc:
            raise DeployFailed("activate", exc.message, code=exc.code) from None
        self.timings["activate"] = round(time.monotonic() - started, 2)
        await self._progress("activate", f"host {result['name']} is {result['state']}"
                             + (f": {result['reason']}" if result.get("reason") else ""))
        await self._save_deploy(steps={"activate": {"done_at": utcnow().isoformat(),
                                                    "seconds": self.timings["activate"]}})
        fp = (await self.ctx.db.run(lambda s: (self._host(s).deploy or {}).get("host_key_fingerprint")))
        return {**result, "hypervisor": self.detected.kind if self.detected else None,
                "host_key_fingerprint": fp, "agent_url": self.agent_url}


# ---------------------------------------------------------------------------------------------- entry points

def credentials(ssh: SshIn) -> Credentials:
    return Credentials(address=ssh.address.strip("[]"), port=ssh.port, user=ssh.user, password=ssh.password,
                       private_keys=[ssh.private_key.encode()] if ssh.private_key else [],
                       passphrase=ssh.passphrase, expected_fingerprint=ssh.host_key_fingerprint,
                       connect_timeout=ssh.connect_timeout)


def engine_credentials(ctx: EngineContext, h: Host, extra: SshIn | None = None) -> Credentials:
    """For reinstall and renewal: the stored address and the engine's own key (plus what the caller gave)."""
    assert ctx.pki is not None and h.ssh_address is not None
    creds = Credentials(address=h.ssh_address, port=h.ssh_port or 22, user=h.ssh_user or "root",
                        private_keys=[ctx.pki.ssh_private_key])
    if extra is not None:
        creds.password = extra.password
        if extra.private_key:
            creds.private_keys.insert(0, extra.private_key.encode())
        creds.passphrase = extra.passphrase
        creds.connect_timeout = extra.connect_timeout
    return creds


def ssh_placeholder_url(user: str, address: str, port: int) -> str:
    """The agent URL of a host whose agent never answered yet (the monitor does not watch it)."""
    host = f"[{address}]" if ":" in address else address
    return f"ssh://{user}@{host}:{port}"


def stored_options(h: Host, override: DeployOptions | None = None) -> DeployOptions:
    """The last deploy's options, with what ``override`` sets on top (an option it leaves out -- the agent
    port, the agent URL behind NAT -- keeps its stored value instead of falling back to the default)."""
    raw = (h.deploy or {}).get("options") or {}
    changes = override.model_dump(exclude_unset=True) if override is not None else {}
    try:
        return DeployOptions.model_validate({**raw, **changes})
    except ValueError:
        return DeployOptions.model_validate(changes)


async def run_deploy(ctx: EngineContext, task: TaskContext, host_id: str, creds: Credentials,
                     options: DeployOptions, mode: Mode = "add") -> dict[str, Any]:
    running: set[str] = ctx.deploying
    if host_id in running:
        raise ApiError("a deploy of this host is running already", code="conflict", status=409)
    running.add(host_id)
    try:
        return await Deployer(ctx, task, host_id, creds, options, mode).run()
    finally:
        running.discard(host_id)


def interrupted_deploys(s: Session) -> int:
    """At engine start: hosts left ``installing`` by a deploy the previous run could not finish."""
    rows = s.scalars(select(Host).where(Host.state == HostState.INSTALLING.value, Host.deploy.is_not(None))).all()
    for h in rows:
        h.state = HostState.NON_OPERATIONAL.value
        h.state_reason = "the deploy was interrupted by an engine restart; run host add (or reinstall) again"
        record(s, "host_deploy_failed", f"host {h.name}: {h.state_reason}", severity=Severity.ERROR,
               object_type="host", object_id=h.id)
    return len(rows)


# ---------------------------------------------------------------------------------------------- renewal

@dataclass
class CertRenewer:
    """Renews agent certificates with less than ``before`` left (and the engine's client certificate),
    through the same SSH path as the deploy, with the engine's key and the pinned host key."""

    ctx: EngineContext
    interval: float = 6 * 3600.0
    first_delay: float = 60.0
    before: timedelta = RENEW_BEFORE
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="cert-renewer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("certificate renewal check")
            await asyncio.sleep(self.interval)

    async def check(self) -> list[dict[str, Any]]:
        """Submit a renewal task per host whose certificate expires soon; returns the tasks."""
        ctx = self.ctx
        if ctx.pki is None:
            return []
        if await asyncio.to_thread(ctx.pki.renew_client_if_needed, self.before):
            await ctx.db.run(lambda s: record(s, "engine_cert_renewed", "the engine's client certificate was renewed"))
        limit = datetime.now(UTC) + self.before

        def due(s: Session) -> list[str]:
            q = select(Host.id).where(Host.cert_expires_at.is_not(None), Host.cert_expires_at < limit,
                                      Host.ssh_host_key.is_not(None),
                                      Host.state != HostState.INSTALLING.value)
            return list(s.scalars(q))
        tasks = []
        for host_id in await ctx.db.run(due):
            if host_id not in ctx.deploying:
                tasks.append(await submit_renewal(ctx, host_id))
        return tasks


async def submit_renewal(ctx: EngineContext, host_id: str) -> dict[str, Any]:
    def load(s: Session) -> tuple[Credentials, DeployOptions, str]:
        h = s.get(Host, host_id)
        if h is None:
            raise ApiError("no such host", code="not_found", status=404)
        if h.ssh_address is None or h.ssh_host_key is None:
            raise ApiError(f"host {h.name} was not deployed over SSH; nothing to renew", code="conflict", status=409)
        return engine_credentials(ctx, h), stored_options(h), h.name
    creds, options, name = await ctx.db.run(load)

    async def work(task: TaskContext) -> dict[str, Any]:
        return await run_deploy(ctx, task, host_id, creds, options, "renew")
    return await ctx.tasks.submit("host_renew_cert", work, object_type="host", object_id=host_id,
                                  message=f"renewing the agent certificate of {name}")
