"""The agent as one object: settings, libvirt connection, detection, VM manager, events, watchdog."""

from __future__ import annotations

import json
import logging
import threading
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import libvirt

from corral.agent.connection import Connection, Unavailable
from corral.agent.events import EventBus
from corral.agent.hooks import Hooks
from corral.agent.host import Detection, HostProbe, capabilities, detect, libvirt_bridges
from corral.agent.hostfacts import HostView
from corral.agent.identity import host_uuid
from corral.agent.netlink import LinkControl
from corral.agent.netsetup.safe import HostNetwork
from corral.agent.vms import VmManager, state_name
from corral.agent.watchdog import DeviceModelWatchdog
from corral.domain.flavors import ACCELS, FLAVOR_NAMES, SOFTWARE_ACCEL
from corral.private import private_dir, private_file

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/corral/agent.toml")

_LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined", libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started", libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed", libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
# The state an event leaves the domain in, from the event itself: the handler runs after the fact, and the
# domain's state() by then may be a later one (a 'suspended' event read back as 'up' after a quick resume).
# Only 'defined' (of a stopped or of a running domain) asks libvirt.
_EVENT_STATE = {"started": "up", "suspended": "paused", "resumed": "up", "stopped": "down",
                "shutdown": "shutting_down", "pmsuspended": "paused"}


_TOML_KINDS = {"str": "a string", "str | None": "a string", "Path": "a path (string)", "Path | None": "a path (string)",
               "bool": "true or false", "float": "a number", "list[str]": "a list of strings"}


def _toml_type_ok(kind: str, value: Any) -> bool:
    """Does a config value fit the Settings field's (string) annotation? Wrong types must not reach the agent."""
    if kind in ("str", "str | None", "Path", "Path | None"):
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return True


@dataclass
class Settings:
    libvirt: str = "test:///default"
    listen: str = "127.0.0.1:8470"
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    state_dir: Path = Path("/var/lib/corral")
    hooks_dir: Path | None = None
    emulate: str | None = None
    allow_tcg: bool = False
    accel: str = "auto"
    bridges: list[str] = field(default_factory=list)
    hook_timeout: float = 30.0
    xen_console_dir: Path = Path("/var/log/xen/console")
    # the network namespace (``ip netns`` name) whose links the host network routes manage; None: the host's own,
    # except on libvirt's test driver, where host networks are then refused (corral.agent.netsetup.routes)
    netns: str | None = None

    @classmethod
    def from_toml(cls, path: Path) -> dict[str, Any]:
        """Read a config file; unknown keys are an error naming the key."""
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ValueError(f"{path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
        names = {f.name: f for f in fields(cls)}
        out: dict[str, Any] = {}
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in names:
                raise ValueError(f"{path}: unknown setting {key!r}")
            kind = str(names[key].type)
            if not _toml_type_ok(kind, value):
                raise ValueError(f"{path}: setting {key!r} must be {_TOML_KINDS.get(kind, kind)}, got {value!r}")
            out[key] = Path(value) if "Path" in kind else value
        return out

    def token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            private_file(self.token_file)  # 0600: the token is root on this host (corral.private)
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"token file {self.token_file}: {exc.strerror}") from None
        if len(token) < 16:
            raise ValueError(f"token file {self.token_file}: the token must be at least 16 characters")
        return token


class Agent:
    def __init__(self, settings: Settings, probe: HostProbe | None = None) -> None:
        self.settings = settings
        self.probe = probe or HostProbe()
        self.bus = EventBus()
        self.connection = Connection(settings.libvirt, on_connect=self._on_connect)
        self.detection: Detection | None = None
        self.vms: VmManager | None = None
        self.watchdog: DeviceModelWatchdog | None = None
        self._callbacks: list[int] = []
        self.host_uuid: str | None = None
        self.hostnet: HostNetwork | None = None

    def start(self) -> None:
        # 0711: QEMU must reach the cloud-init seeds and console sockets inside by name; no one else lists it
        private_dir(self.settings.state_dir, 0o711)
        self.connection.open()
        conn = self.connection.conn
        if self.settings.emulate and self.settings.emulate not in FLAVOR_NAMES:
            raise ValueError(f"--emulate: expected one of {', '.join(FLAVOR_NAMES)}, got {self.settings.emulate!r}")
        if self.settings.accel not in ("auto", *ACCELS):
            raise ValueError(f"accel: expected auto or one of {', '.join(ACCELS)}, got {self.settings.accel!r}")
        self.detection = detect(conn, self.probe, self.settings.emulate, self.settings.accel)
        self.host_uuid = host_uuid(conn, self.settings.state_dir, self.detection.emulated)
        if self.settings.netns or not self.detection.emulated:  # the last good host network, before any VM
            self.hostnet = HostNetwork(self.settings.state_dir, self.settings.netns)
            self.hostnet.start()
        if self.settings.libvirt.startswith("test:"):
            self._load_test_state(conn)
        self.vms = VmManager(lambda: self.connection.conn, self.detection, self.bus,
                             Hooks(self.settings.hooks_dir, self.settings.hook_timeout),
                             LinkControl(self.detection.emulated), self.settings.state_dir,
                             self.settings.xen_console_dir, self._host_view)
        self.vms.log_root = self.probe.root  # the host's logs a failed start quotes (corral.agent.startlog)
        counts = self.vms.recover()
        log.info("recovered %s", counts)
        if self.detection.flavor.device_model_watchdog and not self.detection.emulated:
            self.watchdog = DeviceModelWatchdog(self.vms)
            self.watchdog.start()

    def _host_view(self) -> HostView:
        """The bridges, networks and files a VM may name on this host (corral.agent.hostfacts)."""
        assert self.detection is not None
        conn = self.connection.conn
        emulated = self.detection.emulated
        bridges = set(self.probe.bridges() if not emulated else []) | set(libvirt_bridges(conn)) \
            | set(self.settings.bridges)
        try:
            networks = {n.name() for n in conn.listAllNetworks()}
        except libvirt.libvirtError:
            networks = set()
        return HostView(frozenset(bridges), frozenset(networks), files_checked=not emulated)

    def stop(self) -> None:
        if self.watchdog:
            self.watchdog.stop()
        if self.hostnet is not None:
            self.hostnet.stop()
        if self.settings.libvirt.startswith("test:"):
            try:
                self._save_test_state(self.connection.conn)
            except Exception as exc:  # never block shutdown
                log.warning("could not save the test driver's domains: %s", exc)
        # a stopped agent hears no more events: libvirt keeps a closed connection alive (and its callbacks
        # called) while any of its domain objects lives, and the handlers would then find no connection
        try:
            conn = self.connection.conn
        except Unavailable:
            conn = None
        for callback in self._callbacks if conn is not None else []:
            try:
                conn.domainEventDeregisterAny(callback)
            except libvirt.libvirtError:
                pass
        self._callbacks = []
        self.connection.close()

    # libvirt's test driver keeps domains in memory only; an emulated host keeps them in its state dir so
    # that a restart of the agent (e.g. of ``corral all-in-one``) finds the same VMs, as a real host would.

    @property
    def _test_state(self) -> Path:
        return self.settings.state_dir / "test-driver-domains.json"

    def _save_test_state(self, conn: libvirt.virConnect) -> None:
        doms = [{"xml": d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "active": bool(d.isActive())}
                for d in conn.listAllDomains(0) if d.name() != "test"]
        tmp = self._test_state.with_suffix(".tmp")
        tmp.write_text(json.dumps(doms))
        tmp.replace(self._test_state)

    def _load_test_state(self, conn: libvirt.virConnect) -> None:
        try:
            doms = json.loads(self._test_state.read_text())
        except (OSError, ValueError):
            return
        for item in doms:
            try:
                dom = conn.defineXML(item["xml"])
                if item.get("active") and not dom.isActive():
                    dom.create()
            except libvirt.libvirtError as exc:
                log.warning("could not restore an emulated domain: %s", exc)

    def _on_connect(self, conn: libvirt.virConnect) -> None:
        self._callbacks = [
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None),
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._device_removed,
                                        None)]
        if self.vms is not None:  # a reconnect: libvirtd may have changed while we were away
            try:
                self.vms.recover()
            except libvirt.libvirtError as exc:
                log.warning("recovery after reconnect failed: %s", exc)

    def _lifecycle(self, _conn: Any, dom: libvirt.virDomain, event: int, detail: int, _opaque: Any) -> None:
        """Runs on libvirt's event thread for every lifecycle change: kept to two libvirt calls (each one hands
        the GIL over, and the API thread is usually waiting for it) and no read-back in the common cases."""
        kind = _LIFECYCLE.get(event) or str(event)
        try:
            uuid, name = dom.UUIDString(), dom.name()
        except libvirt.libvirtError:
            return
        vms = self.vms
        vm = None
        if vms is not None and kind != "undefined":
            vm = vms.vms.get(uuid)  # one dict read (atomic): the registry lock is for writers
            if vm is None:
                try:
                    vm = vms.known(uuid)
                except Unavailable:  # an event still queued while the connection went away: report it all the same
                    vm = None
            if vm is not None:
                vm.domid = None  # started, stopped, restarted: the domain id is read again
                if kind == "started" and vms.needs_after_start(vm):  # a guest reboot or on_crash restart too
                    threading.Thread(target=vms.restarted, args=(uuid,), name="after-start", daemon=True).start()
        if kind == "crashed" or (kind == "stopped" and detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED):
            label = "crashed"
        elif kind == "undefined":
            label = "deleted"
        else:
            if kind == "defined" and detail == libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED:
                label_or_none: str | None = "down"  # a new definition is inactive
            else:
                label_or_none = _EVENT_STATE.get(kind)
            if label_or_none is None:
                try:
                    label_or_none = state_name(*dom.state())
                except libvirt.libvirtError:
                    return
            label = label_or_none
            if vm is not None and vm.fault and label == "down":
                label = vm.fault
        self.bus.publish("lifecycle", uuid, name, label, event=kind, detail=detail,
                         external=vm.external if vm is not None else None)

    def _device_removed(self, _conn: Any, dom: libvirt.virDomain, alias: str, _opaque: Any) -> None:
        self.bus.publish("device", dom.UUIDString(), dom.name(), None, change="removed", alias=alias)

    def host(self) -> dict[str, Any]:
        assert self.detection is not None
        return capabilities(self.connection.conn, self.detection, self.probe, self.settings.bridges,
                            self.settings.allow_tcg or self.settings.accel == SOFTWARE_ACCEL, self.host_uuid)

    def host_stats(self) -> dict[str, Any]:
        conn = self.connection.conn
        info = conn.getInfo()
        assert self.vms is not None
        vms = self.vms.list()
        running = [v for v in vms if v["state"] in ("up", "paused", "shutting_down")]
        try:
            free = conn.getFreeMemory() // (1024 * 1024)
        except libvirt.libvirtError:
            free = None
        try:
            cpu = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
        except libvirt.libvirtError:
            cpu = {}
        return {"cpu": {"count": info[2], **{f"{k}_ns": v for k, v in cpu.items()}},
                "memory": {"total_mib": info[1], "free_mib": free},
                "vms": {"total": len(vms), "running": len(running),
                        "memory_mib": sum(v["memory_mib"] or 0 for v in running),
                        "vcpus": sum(v["vcpus"] or 0 for v in running)}}
