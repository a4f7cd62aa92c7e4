"""Device-model watchdog [L7], for flavors whose ``device_model_watchdog`` says so (Xen).

When the qemu serving an HVM domain dies, libvirt keeps saying "running" and sends no event (measured).
Every few seconds the agent checks each running HVM domain's device-model pid (xenstore, else the process
table); when it is gone while the same domain lives, it emits ``device_model_lost`` and applies the VM's
policy: destroy and report ``crashed``, or restart.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import libvirt

from corral.agent.vms import VmManager
from corral.domain.spec import DeviceModelPolicy, GuestType

log = logging.getLogger(__name__)


def device_model_pid(domid: int, proc: Path = Path("/proc")) -> int | None:
    tool = shutil.which("xenstore-read")
    if tool:
        out = subprocess.run([tool, f"/local/domain/{domid}/image/device-model-pid"], capture_output=True,
                             text=True, timeout=5, check=False)
        if out.returncode == 0 and out.stdout.strip().isdigit():
            return int(out.stdout.strip())
    needle = f"-xen-domid\x00{domid}\x00".encode()
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DeviceModelWatchdog:
    """Watches the device model of every running HVM guest of a flavor with ``device_model_watchdog``.

    A device model also goes away when nothing is wrong: the agent stops, shuts down or reboots the VM (the
    agent marks those in ``VmManager.stopping`` and holds the VM's lock), the guest powers off or reboots by
    itself (a reboot is a new domain with a new domain id and a new qemu). So a dead pid is a loss only when it
    is confirmed: the VM's lock is free, the same domain (same domain id) is still active, and xenstore names no
    other live device model for it.
    """

    def __init__(self, vms: VmManager, interval: float = 2.0, find_pid: Callable[[int], int | None] | None = None,
                 alive: Callable[[int], bool] = pid_alive) -> None:
        self.vms = vms
        self.interval = interval
        self.find_pid = find_pid or device_model_pid
        self.alive = alive
        self._pids: dict[str, tuple[int, int]] = {}  # VM uuid -> (domain id, device-model pid) of that domain
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dm-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watchdog must outlive any one failure
                log.exception("device-model watchdog cycle failed")

    def check(self) -> list[str]:
        """One pass; returns the ids of VMs whose device model was found dead (and the policy applied)."""
        lost = []
        for vm in list(self.vms.vms.values()):
            if vm.spec is None or vm.guest_type is not GuestType.HVM:
                continue
            if vm.uuid in self.vms.stopping:
                self._pids.pop(vm.uuid, None)
                continue
            lock = self.vms.vm_lock(vm.uuid)
            if not lock.acquire(blocking=False):  # the agent is acting on it: look again next cycle
                continue
            try:
                if self._check_one(vm.uuid):
                    lost.append(vm.uuid)
            finally:
                lock.release()
        return lost

    def _domain(self, uuid: str) -> tuple[libvirt.virDomain, int] | None:
        """The VM's running domain and its id, or None when it does not run."""
        try:
            dom = self.vms.conn.lookupByUUIDString(uuid)
            if not dom.isActive():
                return None
            return dom, dom.ID()
        except libvirt.libvirtError:
            return None

    def _check_one(self, uuid: str) -> bool:
        found = self._domain(uuid)
        if found is None:
            self._pids.pop(uuid, None)
            return False
        dom, domid = found
        known = self._pids.get(uuid)
        if known is None or known[0] != domid:  # first sight, or a new domain (reboot, restart): a new qemu
            pid = self.find_pid(domid)
            if pid is None:
                self._pids.pop(uuid, None)
            else:
                self._pids[uuid] = (domid, pid)
            return False
        pid = known[1]
        if self.alive(pid):
            return False
        # the pid is gone: confirm with libvirt and xenstore before calling it a loss
        again = self._domain(uuid)
        if again is None or again[1] != domid or uuid in self.vms.stopping:
            self._pids.pop(uuid, None)
            return False
        current = self.find_pid(domid)
        if current is not None and current != pid and self.alive(current):
            self._pids[uuid] = (domid, current)
            return False
        self._pids.pop(uuid, None)
        return self._apply(uuid, dom, pid)

    def _apply(self, uuid: str, dom: libvirt.virDomain, pid: int) -> bool:
        """Apply the VM's policy; False when the domain turned out to be gone already (no loss to report)."""
        vm = self.vms.vms[uuid]
        policy = vm.spec.on_device_model_lost if vm.spec else DeviceModelPolicy.DESTROY
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if self._domain(uuid) is None:  # gone or undefined meanwhile: its end was not a device-model loss
                log.info("VM %s: its domain ended while its lost device model was confirmed: %s", vm.name, exc)
                return False
            log.error("VM %s: destroy after device-model loss failed: %s", vm.name, exc)
        self.vms.bus.publish("device_model_lost", vm.uuid, vm.name, "crashed", pid=pid, policy=policy.value)
        log.error("VM %s: device model (pid %s) died under a live domain; policy %s", vm.name, pid, policy.value)
        if policy is DeviceModelPolicy.RESTART:
            try:
                dom.create()
                vm.fault = None
                self.vms.after_restart(vm, dom)
                self.vms.bus.publish("lifecycle", vm.uuid, vm.name, "up", event="restarted",
                                     reason="device_model_lost")
                return True
            except libvirt.libvirtError as exc:
                log.error("VM %s: restart after device-model loss failed: %s", vm.name, exc)
        vm.fault = "crashed"
        self.vms.bus.publish("lifecycle", vm.uuid, vm.name, "crashed", event="crashed", reason="device_model_lost")
        return True
