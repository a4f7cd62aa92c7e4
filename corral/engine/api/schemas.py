"""What the API returns. Models, not dicts, so the OpenAPI document describes every answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.engine.deploy import DeployOptions, SshIn

T = TypeVar("T")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next: str | int | None = Field(None, description="pass as `after` for the next page; null on the last")


class Error(BaseModel):
    code: str
    message: str
    field: str | None = None


class ClusterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    description: str = Field("", max_length=4096)
    flavor_policy: Literal["any", "kvm", "xen"] = "any"
    allow_public_console: bool = Field(False, description="VMs may listen for consoles on a network address "
                                                           "(with a password, on KVM); else the loopback only")


class ClusterPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(None, max_length=4096)
    flavor_policy: Literal["any", "kvm", "xen"] | None = None
    allow_public_console: bool | None = None


class ClusterOut(Out):
    id: str
    name: str
    description: str
    flavor_policy: str
    allow_public_console: bool = False
    created_at: datetime


class HostIn(BaseModel):
    """Either ``url`` (+ ``token``): an agent that runs already; or ``ssh``: deploy the agent over SSH."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="the agent's base URL")
    token: str | None = Field(None, max_length=512, description="the agent's bearer token (development)")
    ssh: SshIn | None = Field(None, description="deploy over SSH (see docs/deploy.md)")
    options: DeployOptions | None = Field(None, description="deploy options (with ssh)")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,255}$", description="default: agent hostname")
    cluster: str | None = Field(None, description="cluster id or name; default: the 'default' cluster")
    reserved_memory_mib: int = Field(256, ge=0, le=16 * 1024 * 1024)

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if (self.url is None) == (self.ssh is None):
            raise ValueError("give either url (a running agent) or ssh (deploy the agent)")
        return self


class HostReinstallIn(BaseModel):
    """Credentials are optional: the engine's own SSH key, authorized at deploy, is tried first."""

    model_config = ConfigDict(extra="forbid")
    ssh: SshIn | None = None
    options: DeployOptions | None = Field(None, description="default: the options of the last deploy")


class HostOut(Out):
    id: str
    name: str
    cluster_id: str
    agent_url: str
    url: str = Field("", description="same as agent_url")

    @model_validator(mode="after")
    def _url(self) -> Self:
        self.url = self.agent_url
        return self
    state: str
    state_reason: str
    hypervisor: str | None
    flavor: str | None
    accel: str | None
    emulated: bool
    cpu_count: int
    cpu_model: str | None
    memory_mib: int
    free_memory_mib: int | None
    reserved_memory_mib: int
    bridges: list[str]
    last_seen_at: datetime | None
    fence_state: str = ""  # "" | fencing | fenced | fence_failed | confirmed (issue 13, docs/ha.md)
    fence_reason: str = ""
    created_at: datetime


class HostDetail(HostOut):
    cpu_flags: list[str]
    info: dict[str, Any]
    ssh_address: str | None = None
    ssh_port: int | None = None
    cert_expires_at: datetime | None = None
    deploy: dict[str, Any] | None = None
    running_vms: int = 0
    committed_memory_mib: int = 0
    # the agent's host identity; the host's own domain (Xen's Domain-0), which is not a VM (corral.engine.reconcile)
    host_uuid: str | None = None
    control_domain: dict[str, Any] | None = None
    # the storage domains of its cluster as this host has them: state and reason (corral.engine.storage)
    storage: list[dict[str, Any]] = []
    # the logical networks of its cluster, carried here or not, and the required ones missing (corral.engine.networks)
    networks: dict[str, Any] = {}


class VmOut(Out):
    id: str
    name: str
    cluster_id: str
    external: bool
    state: str
    state_reason: str
    host_id: str | None
    last_host_id: str | None
    host_name: str | None = None
    memory_mib: int
    memory_current_mib: int | None = None  # what it runs with now (the balloon), when it runs
    vcpus: int
    ha: bool = False  # restarted elsewhere after its host was fenced (issue 13, docs/ha.md)
    ha_priority: int = 0
    created_at: datetime
    state_changed_at: datetime


class HostRef(BaseModel):
    id: str
    name: str
    state: str


class VmDetail(VmOut):
    spec: dict[str, Any] | None
    placement: dict[str, Any] | None
    host: HostRef | None = None
    devices: list[dict[str, Any]] | None = Field(None, description="live devices from the agent")
    devices_source: Literal["live", "spec"] = "spec"
    live: dict[str, Any] | None = Field(None, description="the agent's VmInfo without devices")


class EventOut(Out):
    id: int
    time: datetime
    severity: str
    type: str
    object_type: str | None
    object_id: str | None
    message: str
    detail: dict[str, Any] | None
    object_name: str | None = None
    actor: str | None = None


class TaskOut(Out):
    id: str
    kind: str
    state: str
    object_type: str | None
    object_id: str | None
    message: str
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class ShutdownIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: int = Field(60, ge=0, le=3600)
    force: bool = False


class StartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str | None = Field(None, description="run on this host (id or name); default: the scheduler's choice")


class StopIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: int | None = Field(None, ge=0, le=3600, description="shut down first and destroy after this many "
                                "seconds; without it the VM is destroyed at once")


class PlanOut(BaseModel):
    host_id: str
    host: str
    flavor: str | None = None
    guest_type: str | None = None
    ok: bool
    decisions: list[dict[str, Any]]


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error}, 404: {"model": Error}, 409: {"model": Error}, 422: {"model": Error},
}
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": TaskOut, "description": "a task to poll at /api/v1/tasks/{id}"},
}
