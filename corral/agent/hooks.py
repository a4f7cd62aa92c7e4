"""Operator hooks: executable scripts in ``<hooks-dir>/<hook_point>/``, run in name order.

Each script gets the domain (or device) XML in a file named by ``$CORRAL_DOMXML`` and may rewrite it. Exit 0
is success, 1 a warning that is logged and reported, 2 (or any other status, or a timeout) fails the
operation before libvirt is asked anything.

A hook runs as the agent (root on a real host), so it runs only when the script, its hook point's folder and
the hooks folder are owned by root (or the agent's own user) and writable by no group and no other user:
otherwise whoever could change it would run code as root. Such a hook is refused like a failing one, with
the reason (``unsafe_hook``): it fails a ``before_*`` operation, and is a warning of an ``after_*`` one; it is
never skipped silently, since a hook may be a policy the operator relies on.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from corral.agent.errors import HookFailed

log = logging.getLogger(__name__)

HOOK_POINTS = ("before_vm_define", "before_vm_start", "after_vm_start", "before_vm_shutdown",
               "after_vm_shutdown", "before_vm_destroy", "after_vm_destroy", "before_vm_undefine",
               "before_device_hotplug", "after_device_hotplug", "before_device_unplug", "after_device_unplug",
               "before_vm_migrate_source", "after_vm_migrate_source", "after_vm_migrate_destination")


@dataclass
class HookResult:
    xml: str
    warnings: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    changed: bool = False  # a hook rewrote the XML


class Hooks:
    def __init__(self, hooks_dir: Path | None, timeout: float = 30.0) -> None:
        self.hooks_dir = hooks_dir
        self.timeout = timeout

    def installed(self, point: str) -> bool:
        return bool(self.scripts(point))

    def scripts(self, point: str) -> list[Path]:
        if self.hooks_dir is None:
            return []
        folder = self.hooks_dir / point
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_file() and os.access(p, os.X_OK))

    def run(self, point: str, xml: str | Callable[[], str], vm_id: str, vm_name: str) -> HookResult:
        """``xml`` may be a function that fetches it: called only when a hook is installed at ``point``
        (the agent's hot paths then skip a libvirt XMLDesc call per hook point)."""
        if point not in HOOK_POINTS:
            raise ValueError(f"unknown hook point {point}")
        scripts = self.scripts(point)
        if not scripts:
            return HookResult(xml=xml if isinstance(xml, str) else "")
        if not isinstance(xml, str):
            xml = xml()
        result = HookResult(xml=xml)
        with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="corral-hook-", delete=False) as tmp:
            tmp.write(xml)
            path = Path(tmp.name)
        env = {**os.environ, "CORRAL_DOMXML": str(path), "CORRAL_HOOK": point, "CORRAL_VM_ID": vm_id,
               "CORRAL_VM_NAME": vm_name}
        try:
            for script in scripts:
                result.ran.append(script.name)
                try:
                    self._run_one(point, script, env, result)
                except HookFailed as exc:
                    if not point.startswith("after_"):
                        raise
                    # the operation has happened: an after_* hook can only report, never undo it
                    log.warning(exc.message)
                    result.warnings.append(exc.message)
            result.xml = path.read_text()
            result.changed = result.xml != xml
            return result
        finally:
            path.unlink(missing_ok=True)

    def _run_one(self, point: str, script: Path, env: dict[str, str], result: HookResult) -> None:
        assert self.hooks_dir is not None
        reason = unsafe(script, script.parent, self.hooks_dir)
        if reason is not None:
            msg = f"hook {point}/{script.name} refused: {reason}"
            log.error(msg)
            raise HookFailed(msg, hook=script.name, reason="unsafe_hook")
        try:
            proc = _run(script, env, self.timeout)
        except subprocess.TimeoutExpired:
            raise HookFailed(f"hook {point}/{script.name} timed out after {self.timeout:g} s",
                             hook=script.name) from None
        except OSError as exc:
            raise HookFailed(f"hook {point}/{script.name} could not run: {exc}", hook=script.name) from None
        output = (proc.stderr or proc.stdout).strip()[-500:]
        if proc.returncode == 1:
            msg = f"hook {point}/{script.name} warned: {output}"
            log.warning(msg)
            result.warnings.append(msg)
        elif proc.returncode != 0:
            raise HookFailed(f"hook {point}/{script.name} failed (exit {proc.returncode}): {output}",
                             hook=script.name, exit_status=proc.returncode)


def unsafe(*paths: Path) -> str | None:
    """Why running these (a script and the folders holding it) would let someone other than root run code as
    the agent: an owner other than root or the agent's user, or group/other write permission. None when safe.
    The script's target is checked (a symlink's own mode means nothing), the folders as they are."""
    trusted = {0, os.geteuid()}
    for p in paths:
        try:
            st = p.stat()
        except OSError as exc:
            return f"{p}: {exc.strerror}"
        if st.st_uid not in trusted:
            return f"{p} is owned by uid {st.st_uid}, not root"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            who = " and ".join(w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if st.st_mode & bit)
            return f"{p} is writable by {who} (mode {st.st_mode & 0o7777:o})"
    return None


def _run(script: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run one hook in its own process group; on timeout the whole group is killed, not only the script
    (a shell script's ``sleep`` or a daemon it spawned would otherwise outlive the failed operation)."""
    with subprocess.Popen([str(script)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()  # not communicate(): a process that left the group may still hold the pipes
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
