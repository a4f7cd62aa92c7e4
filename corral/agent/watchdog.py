"""Xen device-model watchdog [L7].

When the qemu serving an HVM domain dies, libvirt keeps saying "running" and sends no event (measured).
Every few seconds the agent checks each running Xen HVM domain's device-model pid (xenstore, else the
process table); when it is gone while the domain lives, it emits ``device_model_lost`` and applies the VM's
policy: destroy and report ``crashed``, or restart.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
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
    def __init__(self, vms: VmManager, interval: float = 2.0) -> None:
        self.vms = vms
        self.interval = interval
        self._pids: dict[str, int] = {}
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
        """One pass; returns the ids of VMs whose device model was found dead."""
        lost = []
        for vm in list(self.vms.vms.values()):
            if vm.spec is None or vm.guest_type is not GuestType.HVM:
                continue
            try:
                dom = self.vms.conn.lookupByUUIDString(vm.uuid)
                if not dom.isActive():
                    self._pids.pop(vm.uuid, None)
                    continue
                domid = dom.ID()
            except libvirt.libvirtError:
                continue
            pid = self._pids.get(vm.uuid)
            if pid is None:
                pid = device_model_pid(domid)
                if pid is not None:
                    self._pids[vm.uuid] = pid
                continue
            if pid_alive(pid):
                continue
            self._pids.pop(vm.uuid, None)
            lost.append(vm.uuid)
            self._apply(vm.uuid, dom, pid)
        return lost

    def _apply(self, uuid: str, dom: libvirt.virDomain, pid: int) -> None:
        vm = self.vms.vms[uuid]
        policy = vm.spec.on_device_model_lost if vm.spec else DeviceModelPolicy.DESTROY
        self.vms.bus.publish("device_model_lost", vm.uuid, vm.name, "crashed", pid=pid, policy=policy.value)
        log.error("VM %s: device model (pid %s) died under a live domain; policy %s", vm.name, pid, policy.value)
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            log.error("VM %s: destroy after device-model loss failed: %s", vm.name, exc)
        if policy is DeviceModelPolicy.RESTART:
            try:
                dom.create()
                vm.fault = None
                self.vms.bus.publish("lifecycle", vm.uuid, vm.name, "up", event="restarted",
                                     reason="device_model_lost")
                return
            except libvirt.libvirtError as exc:
                log.error("VM %s: restart after device-model loss failed: %s", vm.name, exc)
        vm.fault = "crashed"
        self.vms.bus.publish("lifecycle", vm.uuid, vm.name, "crashed", event="crashed", reason="device_model_lost")
