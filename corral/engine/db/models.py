"""The engine's tables, as typed SQLAlchemy 2.0 ORM classes.

Shaped for thousands of hosts and tens of thousands of VMs: every column a list filters or sorts on is
indexed, lists page by primary key (``after`` = last id), and the figures the scheduler sums per host
(``memory_mib``, ``vcpus``) are plain columns next to the VM's JSON spec so one GROUP BY answers them.
The VM spec, host capabilities and placement decisions are JSON (JSONB on PostgreSQL): they are read
whole and never queried inside.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an ``INTEGER PRIMARY KEY``; PostgreSQL gets a real 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC everywhere; SQLite drops the zone, so it is put back on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class HostState(StrEnum):
    INSTALLING = "installing"
    UP = "up"
    NON_OPERATIONAL = "non_operational"
    UNREACHABLE = "unreachable"
    MAINTENANCE = "maintenance"


class VmState(StrEnum):
    DOWN = "down"
    STARTING = "starting"
    UP = "up"
    PAUSED = "paused"
    MIGRATING = "migrating"
    SHUTTING_DOWN = "shutting_down"
    CRASHED = "crashed"
    UNKNOWN = "unknown"


# States in which a VM occupies its host (counted against the host's memory, blocks host removal).
RUNNING_STATES = (VmState.STARTING, VmState.UP, VmState.PAUSED, VmState.MIGRATING, VmState.SHUTTING_DOWN,
                  VmState.UNKNOWN)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JsonType, list[Any]: JsonType, datetime: UtcDateTime}


class Cluster(Base):
    """A group of hosts a VM may be placed on; ``flavor_policy`` restricts which flavors qualify."""

    __tablename__ = "clusters"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    flavor_policy: Mapped[str] = mapped_column(String(16), default="any")  # any | kvm | xen
    # a VM may ask for a console on a network address, not only its host's loopback (issue 14; admins set it)
    allow_public_console: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Host(Base):
    """One agent. ``info`` is the agent's whole ``GET /v1/host`` answer; hot fields are columns."""

    __tablename__ = "hosts"
    __table_args__ = (Index(None, "cluster_id", "id"), Index(None, "state"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    agent_url: Mapped[str] = mapped_column(String(1024), unique=True)
    # Development credential the engine presents to the agent (TLS client certificates replace it).
    agent_token: Mapped[str | None] = mapped_column(String(512), default=None)
    state: Mapped[str] = mapped_column(String(20), default=HostState.INSTALLING.value)
    state_reason: Mapped[str] = mapped_column(Text, default="")
    hypervisor: Mapped[str | None] = mapped_column(String(16), default=None)
    flavor: Mapped[str | None] = mapped_column(String(16), default=None)
    accel: Mapped[str | None] = mapped_column(String(16), default=None)
    emulated: Mapped[bool] = mapped_column(Boolean, default=False)
    cpu_count: Mapped[int] = mapped_column(Integer, default=0)
    cpu_model: Mapped[str | None] = mapped_column(String(128), default=None)
    cpu_flags: Mapped[list[Any]] = mapped_column(default=list)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    free_memory_mib: Mapped[int | None] = mapped_column(BigInteger, default=None)
    reserved_memory_mib: Mapped[int] = mapped_column(BigInteger, default=256)
    bridges: Mapped[list[Any]] = mapped_column(default=list)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_event_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Deploy over SSH (migration 0003): where, as whom, the host key pinned on first use (OpenSSH public key
    # line), when the agent's TLS certificate expires, and the deploy's options, steps and last check.
    ssh_address: Mapped[str | None] = mapped_column(String(255), default=None)
    ssh_port: Mapped[int | None] = mapped_column(Integer, default=None)
    ssh_user: Mapped[str | None] = mapped_column(String(64), default=None)
    ssh_host_key: Mapped[str | None] = mapped_column(Text, default=None)
    cert_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    deploy: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    # Migration 0005. The host's identity, the agent's ``host_uuid`` (corral.agent.identity): one row per host
    # whatever URL reaches its agent. ``event_epoch``: the run of the agent's event log that ``last_event_seq``
    # counts in (the numbers restart with the agent). ``control_domain``: the host's own domain (Xen's Domain-0,
    # whose UUID is all zeros on every Xen host) as monitoring last saw it: part of the host, not a VM.
    host_uuid: Mapped[str | None] = mapped_column(String(64), default=None, unique=True, index=True)
    event_epoch: Mapped[str | None] = mapped_column(String(64), default=None)
    control_domain: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    # Migration 0012 (issue 13, corral.engine.ha): power management (``{"agent", "options", "timeout"}``, a
    # fence-agents agent and its stdin options; None: none) and the fencing of a host that stopped answering:
    # ``fence_state`` "" (nothing to do) | fencing | fenced | fence_failed | confirmed (the operator said it
    # was rebooted), with its reason and when it changed.
    fence: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    fence_state: Mapped[str] = mapped_column(String(16), default="", server_default="")
    fence_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    fence_changed_at: Mapped[datetime | None] = mapped_column(default=None)


class Vm(Base):
    """A VM: its spec (the desired state) plus what monitoring last saw (state, host)."""

    __tablename__ = "vms"
    __table_args__ = (
        # Names are unique among the VMs Corral manages; external VMs found on hosts may repeat them.
        Index("uq_vms_name_managed", "name", unique=True, sqlite_where="external = 0",
              postgresql_where="external = false"),
        Index(None, "name"),
        Index(None, "state", "id"),
        Index(None, "host_id", "id"),
        Index(None, "cluster_id", "id"),
        Index(None, "last_host_id"),
        Index(None, "ha_pending_since"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    external: Mapped[bool] = mapped_column(Boolean, default=False)
    spec: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    vcpus: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(20), default=VmState.DOWN.value)
    state_reason: Mapped[str] = mapped_column(Text, default="")
    # Where it runs now (None while down) and where it is defined / ran last.
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), default=None)
    last_host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), default=None)
    placement: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Migration 0012 (issue 13): high availability, an engine setting (hosts never see it): restarted elsewhere,
    # highest ``ha_priority`` first, after its host was fenced; ``ha_pending_since``: a restart is owed to it
    # (set when its fenced host's VMs were marked down, cleared when it runs again or is no longer HA).
    ha: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    ha_priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    ha_pending_since: Mapped[datetime | None] = mapped_column(default=None)


class VmMac(Base):
    """One NIC MAC address a managed VM holds. The primary key makes a MAC belong to one VM at a time, engine
    wide, on every database: two transactions that check and take the same MAC at once cannot both commit
    (``corral.engine.macs``). Stored lower case; deleted with its VM."""

    __tablename__ = "vm_macs"
    __table_args__ = (Index(None, "vm_id"),)

    mac: Mapped[str] = mapped_column(String(17), primary_key=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"))
    device_id: Mapped[str | None] = mapped_column(String(64), default=None)


class Event(Base):
    """An audit/event log line about one object (vm, host, cluster, task)."""

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "object_type", "object_id", "id"),
        Index(None, "severity", "id"),
        Index(None, "time"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(default=utcnow)
    severity: Mapped[str] = mapped_column(String(10), default=Severity.INFO.value)
    type: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str | None] = mapped_column(String(16), default=None)
    object_id: Mapped[str | None] = mapped_column(String(36), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    # who made the change (``corral.engine.auth.Principal.actor``): a user name, or ``token:<name>`` for a token
    # without an owner; None for what the engine did by itself (monitoring)
    actor: Mapped[str | None] = mapped_column(String(100), default=None, index=True)


class Task(Base):
    """A long operation the API answered with 202; clients poll it."""

    __tablename__ = "tasks"
    __table_args__ = (Index(None, "object_type", "object_id"), Index(None, "state", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=TaskState.PENDING.value)
    object_type: Mapped[str | None] = mapped_column(String(16), default=None)
    object_id: Mapped[str | None] = mapped_column(String(36), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class ApiToken(Base):
    """A bearer token for the REST API; only its SHA-256 is stored. A token acts as its owner (a user) with at most
    its own ``role``; one without an owner (``corral engine create-token``) acts with its ``role`` alone
    (``corral.engine.auth``)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="admin")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), default=None,
                                                 index=True)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class User(Base):
    """A portal user. Only a salted, slow hash of the password is stored (``corral.engine.portal.users``)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="admin")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)


class StorageType(StrEnum):
    """What a storage domain is on its hosts: the libvirt pool type the agent defines (``dir``, ``netfs``,
    ``logical``). ``dir`` and ``logical`` are local (each host has its own; a volume lives on one host), ``nfs``
    is shared (every host of the cluster mounts the same export; a volume is on all of them)."""

    DIR = "dir"
    NFS = "nfs"
    LOGICAL = "logical"


class DomainHostState(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    ERROR = "error"


class VolumeState(StrEnum):
    PENDING = "pending"  # recorded for a VM's disk (``size_bytes``), made on a host when the VM is first placed
    CREATING = "creating"
    READY = "ready"
    DELETING = "deleting"


class StorageDomain(Base):
    """Where volumes live, per cluster (migration 0006). It is a libvirt storage pool of the same name on every
    host of its cluster; ``source`` is the pool's source (``{"host", "dir"}`` for nfs, ``{"vg"}`` for logical)."""

    __tablename__ = "storage_domains"
    __table_args__ = (UniqueConstraint("cluster_id", "name"), Index(None, "cluster_id", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    type: Mapped[str] = mapped_column(String(16))
    path: Mapped[str | None] = mapped_column(String(1024), default=None)
    source: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StorageDomainHost(Base):
    """A storage domain as one host sees it: realised (``active``), not (``inactive``: the host is not up), or
    not reachable there (``error`` with the agent's or libvirt's reason); capacity and free space as the
    host's pool last reported them. Deleted with the domain or the host."""

    __tablename__ = "storage_domain_hosts"
    __table_args__ = (Index(None, "host_id"),)

    domain_id: Mapped[str] = mapped_column(ForeignKey("storage_domains.id", ondelete="CASCADE"), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=DomainHostState.INACTIVE.value)
    capacity_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    free_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Volume(Base):
    """A disk image in a storage domain. On a local domain it lives on one host (``host_id``; NULL again if
    that host is removed), on a shared one on all. ``path`` is where the host's pool put it (what a VM's disk
    names until disks name volumes); ``vm_id`` the VM it belongs to; ``backing_id`` the volume a thin clone
    reads from."""

    __tablename__ = "volumes"
    __table_args__ = (
        UniqueConstraint("domain_id", "name"),
        Index(None, "domain_id", "id"),
        Index(None, "host_id"),
        Index(None, "vm_id"),
        Index(None, "backing_id"),
        Index(None, "clone_of_id"),
        Index(None, "template_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    domain_id: Mapped[str] = mapped_column(ForeignKey("storage_domains.id"))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), default=None)
    format: Mapped[str] = mapped_column(String(16))
    capacity_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str | None] = mapped_column(String(1024), default=None)
    backing_id: Mapped[str | None] = mapped_column(ForeignKey("volumes.id"), default=None)
    vm_id: Mapped[str | None] = mapped_column(ForeignKey("vms.id", ondelete="SET NULL"), default=None)
    state: Mapped[str] = mapped_column(String(16), default=VolumeState.CREATING.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # migration 0008: the volume a pending full copy is to be made from (NULL once made), and the template a
    # sealed base volume belongs to (read-only: never attached writable, never deleted while clones read it)
    clone_of_id: Mapped[str | None] = mapped_column(ForeignKey("volumes.id"), default=None)
    template_id: Mapped[str | None] = mapped_column(ForeignKey("templates.id"), default=None)


class Template(Base):
    """A VM made into a template (migration 0008): the VM's spec without its identity (uuid, MACs, name) and
    its disks' volumes as sealed base volumes (``volumes.template_id``) that new VMs clone."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("cluster_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    description: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JsonType)
    source_vm: Mapped[str] = mapped_column(String(255), default="")  # the VM it was made from (its name then)
    state: Mapped[str] = mapped_column(String(16), default="creating")  # creating | ready | deleting
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImageKind(StrEnum):
    IMAGE = "image"
    ISO = "iso"


class Image(Base):
    """A volume that was uploaded as an image (migration 0007): ``kind`` is ``iso`` when its bytes are an ISO
    9660 image (offered as CD-ROM media), else ``image`` (a disk image to attach or clone). The volume row keeps
    name, domain, host, probed format and path; deleting the volume deletes this row (``ON DELETE CASCADE``)."""

    __tablename__ = "images"
    __table_args__ = (Index(None, "kind"),)

    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)


class NetworkRole(StrEnum):
    """What a logical network is for (oVirt's network roles): the engine-agent link, VM NICs, live migration,
    storage traffic. A network may have several."""

    MANAGEMENT = "management"
    VM = "vm"
    MIGRATION = "migration"
    STORAGE = "storage"


class Network(Base):
    """A logical network of a cluster (migration 0011, issue 18): carried on each host by the Linux bridge
    ``corral.domain.netnames.bridge_for(name)``, tagged with ``vlan`` when set. ``required``: a host of the
    cluster without it is unfit and shown so (``corral.engine.networks``). ``roles``: NetworkRole values."""

    __tablename__ = "networks"
    __table_args__ = (
        UniqueConstraint("cluster_id", "name"),
        Index(None, "cluster_id", "id"),
        CheckConstraint("vlan IS NULL OR (vlan >= 1 AND vlan <= 4094)", name="ck_networks_vlan"),
        CheckConstraint("mtu >= 68 AND mtu <= 65535", name="ck_networks_mtu"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    name: Mapped[str] = mapped_column(String(64))
    vlan: Mapped[int | None] = mapped_column(Integer, default=None)
    mtu: Mapped[int] = mapped_column(Integer, default=1500, server_default="1500")
    roles: Mapped[list[Any]] = mapped_column(default=list)
    required: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
