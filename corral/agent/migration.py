"""Live migration, source side, and adoption on the destination (issue 13; docs/migration.md).

The flavor says how (``Feature.MIGRATION``, a ``MigrationMechanism``): managed peer-to-peer on every flavor
today -- the source libvirtd connects to the destination's libvirtd and drives the whole migration, so this
agent alone starts it (``virDomainMigrateToURI3`` in a thread), reads its progress (``jobStats``) and aborts it
(``abortJob``, where ``Feature.MIGRATION_ABORT`` is not refused: libxl has none [L15]). The destination is
defined persistently and the source's definition removed (``PERSIST_DEST | UNDEFINE_SOURCE``): the VM exists
on exactly one host before and after. The data is tunnelled through the libvirt connection (authenticated:
TLS or a local unix socket, never a plain TCP port) unless the request names a migration network (``data_uri``,
e.g. ``tcp://10.77.0.2``), where QEMU sends it directly (measured on the QEMU pair: 128 MiB in 4.9 s direct
against 8.0 s tunnelled).

The destination agent learns the VM by ``adopt``: it reads the running domain back from libvirt (its spec is in
the domain's ``<metadata>``, which travels with it) and does what the agent does after a start there.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import libvirt
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.agent.errors import AgentError, Conflict, Invalid, NotFound, Unsupported, from_libvirt
from corral.agent.vms import VmManager
from corral.domain.flavors.base import Outcome
from corral.domain.flavors.features import Feature, MigrationMechanism
from corral.domain.spec import GuestType

MIGRATE_CALL = "virDomainMigrateToURI3"
# how long ``start`` waits for the migration to be under way (or to fail at once) before answering
START_WAIT_S = 2.0
# libvirt's job types (virDomainJobType): NONE, BOUNDED, UNBOUNDED, COMPLETED, FAILED, CANCELLED
_JOB_ACTIVE = (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED)
_CPU_RESULTS = {libvirt.VIR_CPU_COMPARE_INCOMPATIBLE: "incompatible", libvirt.VIR_CPU_COMPARE_IDENTICAL: "identical",
                libvirt.VIR_CPU_COMPARE_SUPERSET: "superset"}
ENDPOINT_ENV = "CORRAL_AGENT_MIGRATION_URI"


def migration_flags(mechanism: MigrationMechanism, live: bool, data_uri: str | None) -> int:
    """virDomainMigrateToURI3's flags for the flavor's mechanism: always managed peer-to-peer, the destination
    defined and the source undefined; tunnelled through libvirtd only where the mechanism allows it and the
    request names no migration network."""
    flags: int = (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                  | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if live:
        flags |= libvirt.VIR_MIGRATE_LIVE
    if data_uri is None and mechanism is MigrationMechanism.PEER2PEER:
        flags |= libvirt.VIR_MIGRATE_TUNNELLED
    return flags


class MigrateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: str = Field(min_length=3, max_length=1024,
                             description="libvirt URI of the destination's libvirtd, as this host reaches it")
    live: bool = True
    bandwidth_mib: int | None = Field(None, ge=1, le=1_000_000, description="MiB/s")
    data_uri: str | None = Field(None, max_length=256, description="e.g. tcp://10.77.0.2: data direct over it")


class CheckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: str = Field(min_length=3, max_length=1024)


def parse_body(kind: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise Invalid("the body must be a JSON object", field="body")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise Invalid(f"{where}: {err['msg']}", field=where) from None


def peer_uri(own_uri: str) -> str:
    """The URI by which another host's libvirtd reaches this host's, for peer-to-peer migration: the agent's
    setting ``$CORRAL_AGENT_MIGRATION_URI`` (production: ``qemu+tls://HOST/system``), else the agent's own URI
    with the ``unix`` transport where it names no transport (a local, root-only socket: hosts on one machine,
    as in labs/qemu-pair). The remote driver must be forced: inside libvirtd a bare driver URI would open the
    source's own driver."""
    configured = os.environ.get(ENDPOINT_ENV)
    if configured:
        return configured
    parts = urlsplit(own_uri)
    if "+" in parts.scheme or parts.netloc:
        return own_uri
    return f"{parts.scheme}+unix://{parts.path}" + (f"?{parts.query}" if parts.query else "")


@dataclass
class Job:
    uuid: str
    name: str
    destination: str
    live: bool
    bandwidth_mib: int | None
    started_at: str
    started: float = field(default_factory=time.monotonic)
    state: str = "running"  # running | completed | failed | cancelled
    error: dict[str, Any] | None = None
    exc: AgentError | None = None  # the failure as the agent's error (answered when it failed at once)
    ended: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    abort_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        end = self.ended if self.ended is not None else time.monotonic()
        return {"id": self.uuid, "name": self.name, "state": self.state, "destination": self.destination,
                "live": self.live, "bandwidth_mib": self.bandwidth_mib, "started_at": self.started_at,
                "elapsed_s": round(end - self.started, 3), **self.progress, "error": self.error,
                "warnings": self.warnings}


def progress_of(stats: dict[str, Any]) -> dict[str, Any]:
    """Bytes and percent from libvirt's job stats (``virDomainGetJobStats``); keys it lacks are None (then only
    the elapsed time is known)."""
    total, processed, remaining = stats.get("data_total"), stats.get("data_processed"), stats.get("data_remaining")
    percent = None
    if isinstance(total, int) and total > 0 and isinstance(processed, int):
        done = total - remaining if isinstance(remaining, int) else processed
        percent = round(min(100.0, 100.0 * done / total), 1)
    return {"data_total": total, "data_processed": processed, "data_remaining": remaining, "percent": percent,
            "memory_dirty_rate": stats.get("memory_dirty_rate"), "job_time_ms": stats.get("time_elapsed")}


class Migrations:
    """The migrations this agent runs as a source, one per VM, and adoption of VMs migrated here."""

    def __init__(self, get_vms: Callable[[], VmManager], own_uri: Callable[[], str]) -> None:
        self._get_vms = get_vms
        self._own_uri = own_uri
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    @property
    def vms(self) -> VmManager:
        return self._get_vms()

    def _rule(self, feature: Feature, guest_type: GuestType | None) -> Any:
        return self.vms.flavor.rule(feature, guest_type or GuestType.HVM)

    def endpoint(self) -> dict[str, Any]:
        flavor = self.vms.flavor
        rule = flavor.rule(Feature.MIGRATION, GuestType.HVM)
        return {"uri": peer_uri(self._own_uri()), "flavor": flavor.name,
                "mechanism": rule.value if rule.outcome is not Outcome.REFUSED else None,
                "abort": flavor.rule(Feature.MIGRATION_ABORT, GuestType.HVM).outcome is not Outcome.REFUSED}

    # ---- source side ----------------------------------------------------------------------------------------

    def start(self, uuid: str, data: Any) -> dict[str, Any]:
        body: MigrateBody = parse_body(MigrateBody, data)
        manager = self.vms
        vm, dom, _ = manager.managed(uuid)
        mechanism = self._rule(Feature.MIGRATION, vm.guest_type)
        if mechanism.outcome is Outcome.REFUSED:
            raise Unsupported(f"migration: {mechanism.reason}", field="migration", feature=Feature.MIGRATION.value)
        if body.bandwidth_mib is not None:
            rule = self._rule(Feature.MIGRATION_BANDWIDTH, vm.guest_type)
            if rule.outcome is Outcome.REFUSED:
                raise Unsupported(f"bandwidth_mib: {rule.reason}", field="bandwidth_mib",
                                  feature=Feature.MIGRATION_BANDWIDTH.value)
        assert mechanism.value in (MigrationMechanism.PEER2PEER, MigrationMechanism.PEER2PEER_DIRECT)
        with self._lock:
            running = self.jobs.get(uuid)
            if running is not None and running.state == "running":
                raise Conflict(f"VM {vm.name} is already migrating to {running.destination}", field="id")
        lock = manager.vm_lock(uuid)
        if not lock.acquire(blocking=False):
            raise Conflict(f"VM {vm.name} is busy with another action; try again", field="id")
        try:
            if not dom.isActive():
                raise Conflict(f"VM {vm.name} is not running; only a running VM migrates live", field="id")
            xml_flags = libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
            hooked = manager.hooks.run("before_vm_migrate_source", lambda: dom.XMLDesc(xml_flags), vm.uuid, vm.name)
            flags = migration_flags(mechanism.value, body.live, body.data_uri)
            params: dict[str, Any] = {}
            if body.data_uri:
                params[libvirt.VIR_MIGRATE_PARAM_URI] = body.data_uri
            if body.bandwidth_mib is not None:
                params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = body.bandwidth_mib
            if hooked.changed:
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = hooked.xml
            job = Job(uuid, vm.name, body.destination, body.live, body.bandwidth_mib,
                      datetime.now(UTC).isoformat(), warnings=list(hooked.warnings))
            with self._lock:
                self.jobs[uuid] = job
            thread = threading.Thread(target=self._run, args=(job, dom, params, flags, lock),
                                      name=f"migrate-{vm.name}", daemon=True)
            thread.start()
        except BaseException:
            lock.release()
            raise
        manager.bus.publish("migration", uuid, vm.name, "started", destination=body.destination)
        # answer once the migration is under way, or with its error when it failed at once (a driver without
        # migration, a destination that does not answer): the caller learns that from this call, not a poll
        deadline = time.monotonic() + START_WAIT_S
        while not job.done.wait(0.05) and not _active(dom) and time.monotonic() < deadline:
            pass
        if job.state == "failed" and job.exc is not None:
            raise job.exc
        return self.status(uuid)

    def _run(self, job: Job, dom: libvirt.virDomain, params: dict[str, Any], flags: int,
             lock: threading.Lock) -> None:
        manager = self.vms
        try:
            dom.migrateToURI3(job.destination, params, flags)
        except libvirt.libvirtError as exc:
            if job.abort_requested or exc.get_error_code() == libvirt.VIR_ERR_OPERATION_ABORTED:
                job.state = "cancelled"
                job.error = {"code": "cancelled", "message": f"migration cancelled: {exc.get_error_message()}",
                             "field": None}
            else:
                job.state = "failed"
                job.exc = from_libvirt(exc, MIGRATE_CALL)
                job.error = job.exc.body()
            manager.bus.publish("migration", job.uuid, job.name, job.state, reason=job.error["message"])
        except Exception as exc:  # never leave a job "running" for ever
            job.state, job.error = "failed", {"code": "internal", "message": f"{MIGRATE_CALL}: {exc}", "field": None}
        else:
            job.state = "completed"
            job.progress["percent"] = 100.0
            manager.registry.forget(job.uuid)  # undefined here by libvirt (UNDEFINE_SOURCE)
            after = manager.hooks.run("after_vm_migrate_source", "", job.uuid, job.name)
            job.warnings += after.warnings
            manager.bus.publish("migration", job.uuid, job.name, "completed", destination=job.destination)
        finally:
            job.ended = time.monotonic()
            lock.release()
            job.done.set()

    def status(self, uuid: str) -> dict[str, Any]:
        with self._lock:
            job = self.jobs.get(uuid)
        if job is None:
            raise NotFound(f"no migration of VM {uuid} known to this host", field="id")
        if job.state == "running":
            try:
                dom = self.vms.conn.lookupByUUIDString(uuid)
                stats = dom.jobStats()
                if stats.get("type") in _JOB_ACTIVE:
                    job.progress = progress_of(stats)
            except libvirt.libvirtError:  # the driver fills no job stats, or the domain just left: elapsed only
                pass
        return job.as_dict()

    def abort(self, uuid: str) -> dict[str, Any]:
        with self._lock:
            job = self.jobs.get(uuid)
        vm = self.vms.known(uuid)
        rule = self._rule(Feature.MIGRATION_ABORT, vm.guest_type if vm is not None else None)
        if rule.outcome is Outcome.REFUSED:
            raise Unsupported(f"cancel a migration: {rule.reason}", field="migration",
                              feature=Feature.MIGRATION_ABORT.value)
        if job is None or job.state != "running":
            raise Conflict(f"VM {uuid} has no migration running on this host", field="id")
        job.abort_requested = True
        try:
            self.vms.conn.lookupByUUIDString(uuid).abortJob()
        except libvirt.libvirtError as exc:
            if not job.done.is_set():
                raise from_libvirt(exc, "virDomainAbortJob") from None
        job.done.wait(30)
        return job.as_dict()

    def check(self, uuid: str, data: Any) -> dict[str, Any]:
        """Whether the destination's hypervisor can run this VM's CPU: ``virConnectCompareHypervisorCPU`` on the
        destination with the VM's live ``<cpu>``; where that call is unsupported (libxl [L2]),
        ``virConnectCompareCPU`` against the destination's host CPU; where neither is, ``unknown`` with why."""
        body: CheckBody = parse_body(CheckBody, data)
        _vm, dom, _ = self.vms.managed(uuid)
        root = etree.fromstring(dom.XMLDesc(0).encode())
        cpu = root.find("cpu")
        if cpu is None:
            return {"result": "not_checked", "call": None, "detail": "the VM names no CPU: the hypervisor's default"}
        cpu_xml = etree.tostring(cpu).decode()
        os_type = root.find("os/type")
        # the VM's own emulator, arch, machine and domain type: without them libvirt compares against the
        # default virt type (kvm where /dev/kvm exists), and a TCG guest's CPU reads as incompatible
        emulator, arch, machine, virt = (root.findtext("devices/emulator"), os_type.get("arch") if os_type is not None
                                         else None, os_type.get("machine") if os_type is not None else None,
                                         root.get("type"))
        fail = libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE  # incompatible: an error that says which features
        try:
            dest = libvirt.open(body.destination)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"connect to the destination {body.destination}") from None
        try:
            unsupported = []
            comparisons: tuple[tuple[str, Callable[[], int]], ...] = (
                ("virConnectCompareHypervisorCPU",
                 lambda: int(dest.compareHypervisorCPU(emulator, arch, machine, virt, cpu_xml, fail))),
                ("virConnectCompareCPU", lambda: int(dest.compareCPU(cpu_xml, fail))))
            for call, compare in comparisons:
                try:
                    result = compare()
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE:
                        return {"result": "incompatible", "call": call,
                                "detail": f"{call} on the destination: {exc.get_error_message()}"}
                    err = from_libvirt(exc, call)
                    if isinstance(err, Unsupported):
                        unsupported.append(call)
                        continue
                    return {"result": "unknown", "call": call, "detail": err.message}
                return {"result": _CPU_RESULTS.get(result, "unknown"), "call": call,
                        "detail": f"{call} on the destination: {_CPU_RESULTS.get(result, result)}"}
            return {"result": "unknown", "call": None,
                    "detail": f"the destination's driver has neither {' nor '.join(unsupported)}"}
        finally:
            dest.close()

    # ---- destination side -----------------------------------------------------------------------------------

    def adopt(self, uuid: str) -> dict[str, Any]:
        """Take a VM that arrived here (its definition and spec came with it) as managed, as after a start."""
        manager = self.vms
        manager.registry.forget(uuid)  # read it anew: an older entry may predate its arrival
        with manager.vm_lock(uuid):
            vm, dom, _ = manager.managed(uuid)
            warnings: list[str] = []
            if dom.isActive():
                vm.domid = None
                warnings += manager.nic_links.reapply(vm, dom)
            warnings += manager.hooks.run("after_vm_migrate_destination", lambda: dom.XMLDesc(0), vm.uuid,
                                          vm.name).warnings
        manager.bus.publish("migration", uuid, vm.name, "adopted")
        info = manager.info(vm, dom)
        return {**info, "warnings": [*info.get("warnings", []), *warnings]}


def _active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.jobInfo()[0] in _JOB_ACTIVE)
    except libvirt.libvirtError:
        return False

