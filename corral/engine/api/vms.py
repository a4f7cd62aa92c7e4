"""``/api/v1/vms``: VMs from a VmSpec; show with live devices; actions as tasks; the flavor's plan."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Body, Query, Response
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from corral.domain.spec import SpecError, VmSpec, parse_spec
from corral.engine import consolepolicy, hostpaths, macs, networks, templates, vmops, vmvolumes
from corral.engine.agent_client import AgentError, AgentTarget, AgentUnreachable
from corral.engine.api import fencing, redact
from corral.engine.api.clusters import default_cluster
from corral.engine.api.deps import (
    After,
    Ctx,
    Limit,
    cluster_id_of,
    find_cluster,
    find_host,
    find_vm,
    host_id_of,
)
from corral.engine.api.schemas import (
    ACCEPTED,
    ERRORS,
    Page,
    PlanOut,
    ShutdownIn,
    StartIn,
    StopIn,
    TaskOut,
    VmDetail,
    VmOut,
)
from corral.engine.db.models import Cluster, Host, Vm, VmState
from corral.engine.errors import BadGateway, Conflict, Invalid, invalid_from_spec
from corral.engine.events import record
from corral.engine.tasks import TaskContext

router = APIRouter(prefix="/vms", tags=["vms"], responses=ERRORS)

EDITABLE = (VmState.DOWN.value, VmState.CRASHED.value)
SpecBody = Annotated[dict[str, Any], Body(description="a VmSpec (see corral.domain.spec)")]


def _parse(data: dict[str, Any]) -> VmSpec:
    try:
        return parse_spec(data)
    except SpecError as exc:
        raise invalid_from_spec(exc) from None


def _name_taken(s: Session, name: str, but: str | None = None) -> bool:
    q = select(exists().where(Vm.name == name, Vm.external.is_(False), *( [Vm.id != but] if but else [])))
    return bool(s.scalar(q))


# The columns of a VmOut, read without ORM objects (and without the JSON spec and placement a list does not show)
_OUT_COLUMNS = (Vm.id, Vm.name, Vm.cluster_id, Vm.external, Vm.state, Vm.state_reason, Vm.host_id,
                Vm.last_host_id, Vm.memory_mib, Vm.vcpus, Vm.created_at, Vm.state_changed_at, Vm.ha, Vm.ha_priority)
_OUT_KEYS = tuple(c.key for c in _OUT_COLUMNS)
_RUNNING = ("up", "paused", "shutting_down")  # states in which a VM's memory is in use on its host


def _json(data: Any) -> Response:
    """JSON as the response models describe it (UTC times end in ``Z``, as pydantic writes them), built by
    msgspec without validating again what was just read from the database."""
    return Response(msgspec.json.encode(data), media_type="application/json")


@router.get("", response_model=Page[VmOut])
def list_vms(ctx: Ctx, limit: Limit = 100, after: After = None, state: str | None = None,
             host: str | None = None, cluster: str | None = None, name: str | None = None,
             external: bool | None = None) -> Response:
    """Keyset pages by id: one indexed range scan with the host names joined in, whatever the page's depth."""
    def q(s: Session) -> dict[str, Any]:
        query = select(*_OUT_COLUMNS, Host.name).outerjoin(Host, Host.id == Vm.host_id)
        if state is not None:
            query = query.where(Vm.state == state)
        if host is not None:
            query = query.where(Vm.host_id == host_id_of(s, host))
        if cluster is not None:
            query = query.where(Vm.cluster_id == cluster_id_of(s, cluster))
        if name is not None:
            query = query.where(Vm.name == name)
        if external is not None:
            query = query.where(Vm.external.is_(external))
        if after is not None:
            query = query.where(Vm.id > after)
        rows = s.connection().execute(query.order_by(Vm.id).limit(limit + 1)).all()  # plain rows, no ORM
        more = len(rows) > limit
        items = [{**dict(zip(_OUT_KEYS, r, strict=False)), "host_name": r[-1]} for r in rows[:limit]]
        return {"items": items, "next": items[-1]["id"] if more and items else None}
    page = ctx.db.read(q)
    live = ctx.monitor.live_memory
    for item in page["items"]:
        item["memory_current_mib"] = live.get(item["id"]) if item["state"] in _RUNNING else None
    return _json(page)


@router.post("", status_code=201, response_model=VmDetail)
def create_vm(ctx: Ctx, spec: SpecBody, cluster: Annotated[str | None, Query()] = None) -> VmDetail:
    """Store a VM. Nothing happens on a host until it is started. ``template`` (and ``clone``) in the body: the
    VM is made from that template, the body's other fields overriding its spec."""
    hostpaths.check_spec(spec)  # the caller's own host paths (a template's were an admin's)
    spec = dict(spec)
    ha_on, ha_priority = fencing.check_ha(spec)  # engine settings in the body, not spec fields (issue 13)
    parsed = _parse(ctx.db.read(lambda s: templates.expand(s, spec, cluster)))

    def q(s: Session) -> VmDetail:
        c = find_cluster(s, cluster) if cluster else default_cluster(s)
        consolepolicy.check(parsed, c)
        networks.check_spec(s, c.id, parsed)  # a NIC's logical network exists in the cluster (nics.N.network)
        if s.get(Vm, parsed.id) is not None:
            raise Conflict(f"a VM with id {parsed.id} exists", field="id")
        if _name_taken(s, parsed.name):
            raise Conflict(f"VM {parsed.name!r} exists", field="name")
        full = macs.choose(s, parsed.id, parsed)  # every NIC with its MAC, none used by another VM
        full, volumes = vmvolumes.attach(s, parsed.id, parsed.name, c.id, full)  # size_bytes disks: new volumes
        vm = Vm(id=parsed.id, name=parsed.name, cluster_id=c.id, external=False,
                spec=full.model_dump(mode="json"), memory_mib=parsed.memory_mib, vcpus=parsed.vcpus,
                state=VmState.DOWN.value, state_reason="", ha=ha_on, ha_priority=ha_priority)
        s.add(vm)
        s.add_all(volumes)
        s.flush()  # the row first: its MACs refer to it
        macs.take(s, vm.id, full)
        record(s, "vm_created", f"VM {vm.name} created", object_type="vm", object_id=vm.id)
        return _detail(vm)
    return macs.call(ctx.db, q)


def _detail(row: Vm) -> VmDetail:
    detail = VmDetail.model_validate(row)
    detail.spec = redact.spec(detail.spec)
    return detail


@router.put("/{vm}", response_model=VmDetail)
def update_vm(ctx: Ctx, vm: str, spec: SpecBody) -> VmDetail:
    """Replace the spec of a VM that is down; it applies at the next start."""
    def q(s: Session) -> VmDetail:
        row = find_vm(s, vm)
        hostpaths.check_spec(spec, before=row.spec)
        data = dict(spec)
        if "ha" in data or "ha_priority" in data:  # engine settings (issue 13); absent: unchanged
            row.ha, row.ha_priority = fencing.check_ha({"ha": row.ha, "ha_priority": row.ha_priority, **data})
            data.pop("ha", None), data.pop("ha_priority", None)
        if data.setdefault("id", row.id) != row.id:
            raise Invalid("the spec id cannot change", field="id")
        parsed = _parse(redact.keep_password(data, row.spec))
        consolepolicy.check(parsed, s.get_one(Cluster, row.cluster_id))
        networks.check_spec(s, row.cluster_id, parsed)
        if row.external:
            raise Conflict(f"VM {row.name} is external; Corral has no spec for it")
        if row.state not in EDITABLE:
            raise Conflict(f"VM {row.name} is {row.state}; stop it before changing its spec", state=row.state)
        if parsed.name != row.name and _name_taken(s, parsed.name, but=row.id):
            raise Conflict(f"VM {parsed.name!r} exists", field="name")
        # a NIC sent without its MAC keeps the one it has
        had = {n.get("id"): n.get("mac") for n in (row.spec or {}).get("nics") or [] if n.get("mac")}
        parsed = macs.hold(s, row.id, parsed, prefer=had)
        parsed, volumes = vmvolumes.attach(s, row.id, parsed.name, row.cluster_id, parsed)
        s.add_all(volumes)
        row.name, row.spec = parsed.name, parsed.model_dump(mode="json")
        row.memory_mib, row.vcpus = parsed.memory_mib, parsed.vcpus
        s.flush()
        record(s, "vm_updated", f"VM {row.name} updated", object_type="vm", object_id=row.id)
        return _detail(row)
    return macs.call(ctx.db, q)


@router.delete("/{vm}", status_code=204, response_class=Response)
async def delete_vm(ctx: Ctx, vm: str, force: bool = False, keep_volumes: bool = False) -> Response:
    """Delete a VM that is down, undefining it on the host that still has it (``force``: even if unreachable);
    refused (409) while a task holds the VM, rather than leaving a domain behind on a host. The volumes made for
    it (``size_bytes`` disks) are deleted with it unless ``keep_volumes``."""
    def q(s: Session) -> tuple[str, str, AgentTarget | None]:
        row = find_vm(s, vm)
        if row.state not in EDITABLE:
            raise Conflict(f"VM {row.name} is {row.state}; stop it first", state=row.state)
        h = s.get(Host, row.last_host_id) if row.last_host_id else None
        return row.id, row.name, AgentTarget(h.agent_url, h.agent_token) if h else None
    vm_id, name, target = await ctx.db.run(q)
    if vm_id in ctx.tasks.busy_vms:
        # the task may be defining it on a host right now: dropping the row would leave that domain behind
        raise Conflict(f"a task is running on VM {name}; delete it when the task has ended", code="busy")
    if target is not None:
        try:
            await ctx.agents.delete_vm(target, vm_id)
        except AgentUnreachable as exc:
            if not force:
                raise BadGateway(f"cannot undefine {name} on its host: {exc.message}; use force=true",
                                 code="unreachable") from None
        except AgentError as exc:
            if exc.status != 404:
                raise Conflict(f"the host refused to undefine {name}: {exc.message}", code=exc.code) from None

    own = await ctx.db.run_read(lambda s: vmvolumes.own(s, vm_id))  # its volumes go with it (unless kept)

    def drop(s: Session) -> None:
        row = s.get(Vm, vm_id)
        if row is not None:
            s.delete(row)
            record(s, "vm_deleted", f"VM {name} deleted", object_type="vm", object_id=vm_id)
    await ctx.db.run(drop)
    await vmvolumes.delete_own(ctx.db, ctx.agents, name, own, keep=keep_volumes)
    return Response(status_code=204)


_DETAIL_COLUMNS = (*_OUT_COLUMNS, Vm.spec, Vm.placement)
_DETAIL_KEYS = tuple(c.key for c in _DETAIL_COLUMNS)
_HOST_COLUMNS = (Host.id, Host.name, Host.state, Host.agent_url, Host.agent_token)


@router.get("/{vm}", response_model=VmDetail)
async def show_vm(ctx: Ctx, vm: str) -> Response:
    """The VM with its current host and, when the host answers, the live devices read from libvirt."""
    def q(s: Session) -> tuple[dict[str, Any], AgentTarget | None]:
        # one query: the VM and the host it runs on (or last ran on)
        query = select(*_DETAIL_COLUMNS, *_HOST_COLUMNS).outerjoin(
            Host, Host.id == func.coalesce(Vm.host_id, Vm.last_host_id))
        row = s.connection().execute(query.where(Vm.id == vm)).first()
        if row is None:
            found = find_vm(s, vm)  # by name (404 if none)
            row = s.connection().execute(query.where(Vm.id == found.id)).one()
        out = dict(zip(_DETAIL_KEYS, row, strict=False))
        h = row[len(_DETAIL_KEYS):]
        out.update(host_name=None, host=None, devices=None, devices_source="spec", live=None,
                   memory_current_mib=None)
        if h[0] is not None and out["host_id"]:
            out["host"] = {"id": h[0], "name": h[1], "state": h[2]}
            out["host_name"] = h[1]
        return out, AgentTarget(h[3], h[4]) if h[0] is not None else None
    out, target = await ctx.db.run_read(q)
    if target is not None:
        try:
            info = await ctx.agents.get_vm(target, out["id"])
        except AgentError:
            return _json(redact.vm_answer(out))
        out["devices"] = info.pop("devices", None)
        out["devices_source"] = "live" if out["devices"] is not None else "spec"
        out["live"] = info
        if out["state"] in _RUNNING and isinstance(info.get("memory_mib"), int):
            out["memory_current_mib"] = info["memory_mib"]
    return _json(redact.vm_answer(out))


@router.get("/{vm}/plan", response_model=PlanOut)
async def plan_vm(ctx: Ctx, vm: str, host: str | None = None) -> PlanOut:
    """What this host's flavor does with each setting of the VM's spec (native, translated, refused)."""
    def q(s: Session) -> tuple[dict[str, Any], Host]:
        row = find_vm(s, vm)
        if row.spec is None:
            raise Conflict(f"VM {row.name} is external; Corral has no spec for it")
        ref = host or row.host_id or row.last_host_id
        if ref is None:
            raise Invalid("name a host: the VM has none yet", field="host")
        return row.spec, find_host(s, ref, field="host")
    spec, h = await ctx.db.run(q)
    try:
        plan = await ctx.agents.plan(AgentTarget(h.agent_url, h.agent_token), spec)
    except AgentUnreachable as exc:
        raise BadGateway(f"host {h.name} does not answer: {exc.message}", code="unreachable") from None
    except AgentError as exc:
        raise BadGateway(f"host {h.name}: {exc.code}: {exc.message}", code=exc.code) from None
    return PlanOut(host_id=h.id, host=h.name, flavor=plan.get("flavor"), guest_type=plan.get("guest_type"),
                   ok=bool(plan.get("ok")), decisions=list(plan.get("decisions") or []))


async def _submit(ctx: Ctx, vm: str, action: str, response: Response, host: str | None = None,
                  body: dict[str, Any] | None = None) -> Any:
    row, old = await ctx.db.run(lambda s: vmops.claim(s, vm, action))
    vm_id = row.id

    async def work(task: TaskContext) -> dict[str, Any]:
        if action == "start":
            return await vmops.start(ctx, task, vm_id, old, host, claimed=row)
        return await vmops.simple(ctx, task, vm_id, action, old, body)

    task = await ctx.tasks.submit(f"vm_{action}", work, object_type="vm", object_id=vm_id, busy_vm=vm_id,
                                  message=f"{action} {row.name}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


@router.post("/{vm}/start", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def start_vm(ctx: Ctx, vm: str, response: Response, body: StartIn | None = None,
                   host: Annotated[str | None, Query(description="run on this host (id or name)")] = None) -> Any:
    """Place (or use ``host``, as query or body) and start. A placement with no host fails the task with the
    reason of every rejected host (``error.rejections``)."""
    host = host or (body.host if body else None)
    if host is not None:
        await ctx.db.run(lambda s: find_host(s, host, field="host"))
    return await _submit(ctx, vm, "start", response, host=host)


@router.post("/{vm}/shutdown", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def shutdown_vm(ctx: Ctx, vm: str, response: Response, body: ShutdownIn | None = None) -> Any:
    return await _submit(ctx, vm, "shutdown", response, body=(body or ShutdownIn()).model_dump())


@router.post("/{vm}/stop", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def stop_vm(ctx: Ctx, vm: str, response: Response, body: StopIn | None = None) -> Any:
    """Power off: destroy at once, or with ``timeout`` shut down first and destroy when it expires."""
    timeout = body.timeout if body else None
    return await _submit(ctx, vm, "stop", response, body=None if timeout is None else {"timeout": timeout})


@router.get("/{vm}/console")
async def console_vm(ctx: Ctx, vm: str, tail: Annotated[int, Query(ge=1, le=16 * 1024 * 1024)] = 65536,
                     ) -> dict[str, Any]:
    """The tail of the VM's serial/PV console log, from the host that runs (or last ran) it."""
    def q(s: Session) -> tuple[str, str, AgentTarget]:
        row = find_vm(s, vm)
        where = row.host_id or row.last_host_id
        h = s.get(Host, where) if where else None
        if h is None:
            raise Conflict(f"VM {row.name} has not run on any host yet")
        return row.id, h.name, AgentTarget(h.agent_url, h.agent_token)
    vm_id, host_name, target = await ctx.db.run(q)
    try:
        return dict(await ctx.agents.request(target, "GET", f"/v1/vms/{vm_id}/console", params={"tail": tail}))
    except AgentUnreachable as exc:
        raise BadGateway(f"host {host_name} does not answer: {exc.message}", code="unreachable") from None
    except AgentError as exc:
        raise BadGateway(f"host {host_name}: {exc.code}: {exc.message}", code=exc.code) from None


@router.post("/{vm}/reboot", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def reboot_vm(ctx: Ctx, vm: str, response: Response) -> Any:
    return await _submit(ctx, vm, "reboot", response)


@router.post("/{vm}/pause", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def pause_vm(ctx: Ctx, vm: str, response: Response) -> Any:
    return await _submit(ctx, vm, "pause", response)


@router.post("/{vm}/resume", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def resume_vm(ctx: Ctx, vm: str, response: Response) -> Any:
    return await _submit(ctx, vm, "resume", response)

