"""``/api/v1/hosts``: add by agent URL, list, show, maintenance, activate, remove."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Response
from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.engine import deploy, hostops, networks, storage
from corral.engine.agent_client import AgentError, AgentTarget
from corral.engine.api.clusters import default_cluster
from corral.engine.api.deps import After, Ctx, Limit, cluster_id_of, find_cluster, find_host, page
from corral.engine.api.schemas import ACCEPTED, ERRORS, HostDetail, HostIn, HostOut, HostReinstallIn, Page, TaskOut
from corral.engine.db.models import RUNNING_STATES, Host, HostState, Vm
from corral.engine.errors import Conflict, Invalid
from corral.engine.events import record
from corral.engine.hostinfo import host_identity
from corral.engine.ids import new_id
from corral.engine.tasks import TaskContext
from corral.engine.transport import check_agent_url

router = APIRouter(prefix="/hosts", tags=["hosts"], responses=ERRORS)

# Asking an agent which host it is, while the client waits for the answer to its POST.
IDENTITY_TIMEOUT = 10.0


def _running(s: Session, host_id: str) -> tuple[int, int]:
    n, mem = s.execute(select(func.count(Vm.id), func.coalesce(func.sum(Vm.memory_mib), 0))
                       .where(Vm.host_id == host_id, Vm.state.in_([st.value for st in RUNNING_STATES]))).one()
    return int(n), int(mem)


def _detail(s: Session, h: Host) -> HostDetail:
    n, mem = _running(s, h.id)
    return HostDetail.model_validate(h).model_copy(update={"running_vms": n, "committed_memory_mib": mem,
                                                           "storage": storage.host_storage(s, h),
                                                           "networks": networks.host_view(s, h).as_dict()})


@router.get("", response_model=Page[HostOut])
def list_hosts(ctx: Ctx, limit: Limit = 100, after: After = None, state: str | None = None,
               cluster: str | None = None, name: str | None = None) -> Page[HostOut]:
    def q(s: Session) -> Page[HostOut]:
        query = select(Host)
        if state is not None:
            query = query.where(Host.state == state)
        if cluster is not None:
            query = query.where(Host.cluster_id == cluster_id_of(s, cluster))
        if name is not None:
            query = query.where(Host.name == name)
        rows, nxt = page(s, query, Host.id, limit, after)
        return Page[HostOut](items=[HostOut.model_validate(r) for r in rows], next=nxt)
    return ctx.db.call(q)


def _placeholder_name(url: str) -> str:
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "-", netloc).strip("-") or "host"


@router.post("", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def add_host(ctx: Ctx, body: HostIn, response: Response) -> Any:
    """Add a host: by a running agent's ``url``, or by ``ssh``, which deploys the agent (docs/deploy.md).
    A host is added once: an agent answering the ``host_uuid`` of a host already here is refused (409)."""
    if body.ssh is not None:
        return await _deploy_host(ctx, body, response)
    assert body.url is not None
    url = body.url.rstrip("/")
    check_agent_url(url, ctx.insecure)  # plain HTTP only on the loopback, unless --insecure
    host_id = new_id()
    name = body.name or _placeholder_name(url)
    # The agent says which host it is before anything is written: the same host under another URL
    # (127.0.0.1 and localhost) is refused now. An agent that does not answer fails the task, as before.
    answer: dict[str, Any] | AgentError
    try:
        answer = await ctx.agents.host(AgentTarget(url, body.token), timeout=IDENTITY_TIMEOUT)
    except AgentError as exc:
        answer = exc
    identity = host_identity(answer) if isinstance(answer, dict) else None

    def create(s: Session) -> None:
        cluster = find_cluster(s, body.cluster) if body.cluster else default_cluster(s)
        if s.scalar(select(Host.id).where(Host.agent_url == url)):
            raise Conflict(f"a host with agent URL {url} exists", field="url")
        if s.scalar(select(Host.id).where(Host.name == name)):
            raise Conflict(f"host {name!r} exists", field="name")
        if identity is not None:
            same = s.execute(select(Host.name, Host.agent_url).where(Host.host_uuid == identity)).first()
            if same is not None:
                raise hostops.duplicate_error(url, identity, (same[0], same[1]))
        s.add(Host(id=host_id, name=name, cluster_id=cluster.id, agent_url=url, agent_token=body.token,
                   state=HostState.INSTALLING.value, reserved_memory_mib=body.reserved_memory_mib,
                   cpu_flags=[], bridges=[], info={}, host_uuid=identity))

    try:
        await ctx.db.run(create)
    except IntegrityError:  # the same URL, name or host added by another request at this very moment
        await ctx.db.run(create)  # that one is committed now: the checks name it

    async def work(task: TaskContext) -> dict[str, Any]:
        return await hostops.activate(ctx, task, host_id, adding=True, rename=body.name is None, answer=answer)

    task = await ctx.tasks.submit("host_add", work, object_type="host", object_id=host_id,
                                  message=f"adding host {name}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


async def _deploy_host(ctx: Ctx, body: HostIn, response: Response) -> Any:
    """Deploy over SSH. Rerunning it for a host whose deploy failed resumes on the same row (same name and
    address): the pinned host key is enforced and finished work is not redone."""
    assert body.ssh is not None
    if body.name is None:
        raise Invalid("a host deployed over SSH needs a name", field="name")
    if ctx.pki is None:  # before the host row is written: a refusal changes nothing
        raise Conflict("this engine has no data directory (no CA): deploy over SSH is unavailable")
    ssh, name = body.ssh, body.name
    address = ssh.address.strip("[]")
    options = body.options or deploy.DeployOptions()

    def create(s: Session) -> tuple[str, bool]:
        cluster = find_cluster(s, body.cluster) if body.cluster else default_cluster(s)
        h = s.scalar(select(Host).where(Host.name == name))
        same = s.scalar(select(Host).where(Host.ssh_address == address, Host.ssh_port == ssh.port))
        if h is not None:
            if h.ssh_address != address or (h.ssh_port or 22) != ssh.port:
                raise Conflict(f"host {name!r} exists", field="name")
            if h.id in ctx.deploying or h.state == HostState.UP.value:
                raise Conflict(f"host {name} is {'being deployed' if h.id in ctx.deploying else 'up'}; "
                               "use reinstall to deploy it again", field="name")
            h.state, h.state_reason, h.cluster_id = HostState.INSTALLING.value, "deploy resumed", cluster.id
            record(s, "host_deploy_resumed", f"host {name}: deploy resumed", object_type="host", object_id=h.id)
            return h.id, True
        if same is not None:
            raise Conflict(f"{address}:{ssh.port} is host {same.name} already", field="ssh.address")
        host_id = new_id()
        s.add(Host(id=host_id, name=name, cluster_id=cluster.id,
                   agent_url=deploy.ssh_placeholder_url(ssh.user, address, ssh.port), agent_token=None,
                   state=HostState.INSTALLING.value, state_reason="deploy over SSH",
                   reserved_memory_mib=body.reserved_memory_mib, cpu_flags=[], bridges=[], info={},
                   ssh_address=address, ssh_port=ssh.port, ssh_user=ssh.user, deploy={}))
        return host_id, False

    host_id, resumed = await ctx.db.run(create)
    creds = deploy.credentials(ssh)

    async def work(task: TaskContext) -> dict[str, Any]:
        return await deploy.run_deploy(ctx, task, host_id, creds, options, "add")

    task = await ctx.tasks.submit("host_deploy", work, object_type="host", object_id=host_id,
                                  message=f"{'resuming the deploy of' if resumed else 'deploying'} host {name} "
                                          f"over SSH ({ssh.user}@{address}:{ssh.port})")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


@router.post("/{host}/reinstall", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def reinstall(ctx: Ctx, host: str, response: Response, body: HostReinstallIn | None = None) -> Any:
    """Deploy the agent again (same checks, the engine's current wheel, a new certificate), over SSH with the
    pinned host key and the engine's key (or the credentials given)."""
    body = body or HostReinstallIn()

    def q(s: Session) -> tuple[str, str, deploy.Credentials, deploy.DeployOptions]:
        h = find_host(s, host)
        if h.ssh_address is None:
            raise Conflict(f"host {h.name} was added by its agent URL, not over SSH; remove it and add it with ssh")
        if h.id in ctx.deploying:
            raise Conflict(f"host {h.name} is being deployed")
        creds = deploy.engine_credentials(ctx, h, body.ssh)
        options = deploy.stored_options(h, body.options)
        h.state, h.state_reason = HostState.INSTALLING.value, "reinstalling"
        record(s, "host_reinstall", f"host {h.name}: reinstall", object_type="host", object_id=h.id)
        return h.id, h.name, creds, options
    if ctx.pki is None:
        raise Conflict("this engine has no data directory (no CA): deploy over SSH is unavailable")
    host_id, name, creds, options = await ctx.db.run(q)

    async def work(task: TaskContext) -> dict[str, Any]:
        return await deploy.run_deploy(ctx, task, host_id, creds, options, "reinstall")

    task = await ctx.tasks.submit("host_reinstall", work, object_type="host", object_id=host_id,
                                  message=f"reinstalling host {name}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


@router.post("/{host}/renew-certificate", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def renew_certificate(ctx: Ctx, host: str, response: Response) -> Any:
    """Issue the agent a new certificate now (the engine also does this by itself 30 days before expiry)."""
    if ctx.pki is None:
        raise Conflict("this engine has no data directory (no CA)")
    host_id = await ctx.db.run(lambda s: find_host(s, host).id)
    if host_id in ctx.deploying:
        raise Conflict("the host is being deployed")
    task = await deploy.submit_renewal(ctx, host_id)
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


@router.get("/{host}", response_model=HostDetail)
def show_host(ctx: Ctx, host: str) -> HostDetail:
    return ctx.db.call(lambda s: _detail(s, find_host(s, host)))


@router.post("/{host}/maintenance", response_model=HostDetail)
def maintenance(ctx: Ctx, host: str) -> HostDetail:
    """No new VM is placed on a host in maintenance. Running VMs must be stopped first (no migration yet)."""
    def q(s: Session) -> HostDetail:
        h = find_host(s, host)
        n, _ = _running(s, h.id)
        if n:
            raise Conflict(f"host {h.name} runs {n} VM(s); stop them first")
        if h.state != HostState.MAINTENANCE.value:
            h.state, h.state_reason = HostState.MAINTENANCE.value, "set by the operator"
            record(s, "host_maintenance", f"host {h.name} is in maintenance", object_type="host",
                   object_id=h.id)
        s.flush()
        return _detail(s, h)
    out = ctx.db.call(q)
    ctx.monitor.set_host_state(out.id, out.state)
    ctx.scheduler.forget()  # no placement on it from now on, not after the scheduler's next read
    return out


@router.post("/{host}/activate", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def activate(ctx: Ctx, host: str, response: Response) -> Any:
    """Re-read the host's capabilities and hardware check; leaves maintenance."""
    def q(s: Session) -> tuple[str, str]:
        h = find_host(s, host)
        if h.state == HostState.MAINTENANCE.value:
            h.state = HostState.INSTALLING.value
        return h.id, h.name
    host_id, name = await ctx.db.run(q)

    async def work(task: TaskContext) -> dict[str, Any]:
        return await hostops.activate(ctx, task, host_id, adding=False)

    task = await ctx.tasks.submit("host_activate", work, object_type="host", object_id=host_id,
                                  message=f"activating host {name}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


@router.delete("/{host}", status_code=204, response_class=Response)
async def remove_host(ctx: Ctx, host: str) -> Response:
    """Forget a host. Refused while Corral VMs run on it; external VMs found there are forgotten with it."""
    def q(s: Session) -> str:
        h = find_host(s, host)
        if s.scalar(select(exists().where(Vm.host_id == h.id, Vm.external.is_(False)))):
            raise Conflict(f"host {h.name} has VMs; stop or move them first")
        s.execute(delete(Vm).where(Vm.external.is_(True), or_(Vm.host_id == h.id, Vm.last_host_id == h.id)))
        s.execute(update(Vm).where(Vm.last_host_id == h.id).values(last_host_id=None))
        s.execute(update(Vm).where(Vm.host_id == h.id).values(host_id=None))
        record(s, "host_removed", f"host {h.name} removed", object_type="host", object_id=h.id)
        s.delete(h)
        return h.id
    host_id = await ctx.db.run(q)
    await ctx.monitor.unwatch(host_id)
    ctx.scheduler.forget()
    return Response(status_code=204)
