"""Host operations behind the API: activation (read capabilities + hardware check) and removal.

Adding a host is a task because deploying one (SSH, packages, certificates) will be long; today it is
"ask the agent what it is": ``GET /v1/host`` gives capabilities and the hypervisor-aware hardware check,
which decides ``up`` or ``non_operational`` with the reason. An add whose agent cannot be reached or
refuses the credential removes the half-made host again, so retrying the same URL is not a conflict.

A host is one machine, known by its agent's ``host_uuid`` (unique in ``hosts``): an agent that answers the
UUID of a host the engine has is that host under another URL (``127.0.0.1`` and ``localhost``), and is
refused (409, naming the host). A host's first activation starts its event position where the agent's log
ends, so only what happens from then on is recorded.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.engine import networks, storage
from corral.engine.agent_client import AgentError, AgentTarget, AgentUnreachable
from corral.engine.context import EngineContext
from corral.engine.db.models import Host, HostState, Severity
from corral.engine.errors import ApiError, BadGateway, Conflict
from corral.engine.events import record
from corral.engine.hostinfo import evaluate, host_fields, host_identity
from corral.engine.tasks import TaskContext

log = logging.getLogger(__name__)


async def activate(ctx: EngineContext, task: TaskContext, host_id: str, *, adding: bool,
                   rename: bool = False, answer: dict[str, Any] | AgentError | None = None) -> dict[str, Any]:
    """Read the host from its agent and store what it is. ``answer``: the agent's ``GET /v1/host`` (or the
    error it gave) when the caller asked already (adding a host asks first, to refuse a duplicate at once)."""
    host = await ctx.db.run(lambda s: s.get(Host, host_id))
    if host is None:
        raise ApiError("the host was removed meanwhile", code="not_found", status=404)
    target = AgentTarget(host.agent_url, host.agent_token)
    await task.progress(f"asking the agent at {host.agent_url}")
    try:
        if isinstance(answer, AgentError):
            raise answer
        info = answer if answer is not None else await ctx.agents.host(target)
    except AgentError as exc:
        error = exc
        await ctx.db.run(lambda s: _failed(s, host_id, error, adding))
        if isinstance(exc, AgentUnreachable):
            raise BadGateway(f"cannot reach the agent at {host.agent_url}: {exc.message}",
                             code="unreachable") from None
        raise BadGateway(f"the agent at {host.agent_url} refused: {exc.code}: {exc.message}",
                         code="agent_refused") from None

    state, reason = evaluate(info)
    identity = host_identity(info)
    # A host that monitoring does not follow yet (being added or deployed) is read from where the agent's
    # event log ends now: what happened before the host was added is not news of this engine.
    position: tuple[str | None, int] | None = None
    if ctx.monitor.watchers.get(host_id) is None and host.last_event_seq == 0 and host.event_epoch is None:
        try:
            position = await ctx.agents.event_position(target)
        except AgentError as exc:  # an agent without an event log: the polls alone follow it
            log.warning("host %s: cannot read where its event log ends: %s", host.name, exc.message)

    def save(s: Session) -> dict[str, Any]:
        h = s.get(Host, host_id)
        if h is None:
            raise ApiError("the host was removed meanwhile", code="not_found", status=404)
        other = _same_host(s, host_id, identity)
        if other is not None:
            return {"duplicate": other}
        before = None if adding or not h.info else list(h.bridges or [])
        for key, value in host_fields(info).items():
            setattr(h, key, value)
        networks.note_missing(s, h, before)  # an event for each required network it lacks from now (issue 18)
        if identity is not None:
            h.host_uuid = identity
        if position is not None:
            h.event_epoch, h.last_event_seq = position
        hostname = str(info.get("hostname") or "")
        if rename and hostname and hostname != h.name and \
                s.scalar(select(Host.id).where(Host.name == hostname)) is None:
            h.name = hostname
        if h.state != HostState.MAINTENANCE.value or adding:
            h.state, h.state_reason = state.value, reason
        sev = Severity.INFO if h.state == HostState.UP.value else Severity.WARNING
        text = f"host {h.name} is {h.state}" + (f": {reason}" if reason else "")
        record(s, "host_activated", text, severity=sev, object_type="host", object_id=h.id)
        return {"host_id": h.id, "name": h.name, "state": h.state, "reason": h.state_reason,
                "target": (h.agent_url, h.agent_token, h.last_event_seq, h.event_epoch)}

    try:
        result = await ctx.db.run(save)
    except IntegrityError:  # another add of the same host committed between the check and this write
        result = {"duplicate": await ctx.db.run(lambda s: _same_host(s, host_id, identity))}
    if "duplicate" in result:
        raise await _duplicate(ctx, host_id, host.agent_url, identity, result["duplicate"], adding)
    ctx.scheduler.forget()  # the host's new state and capabilities count at the next placement
    url, token, seq, epoch = result.pop("target")
    w = ctx.monitor.watchers.get(host_id)
    if w is None:
        ctx.monitor.watch(host_id, result["name"], AgentTarget(url, token), result["state"], seq, epoch)
    else:
        w.state = result["state"]
        w.reachable = True
    if result["state"] == HostState.UP.value:  # the storage domains of its cluster, put on it now
        await storage.activate_host(ctx.db, ctx.agents, host_id, AgentTarget(url, token))
    return result


def _same_host(s: Session, host_id: str, identity: str | None) -> tuple[str, str] | None:
    """(name, agent URL) of another host with this identity: the same machine under another URL."""
    if identity is None:
        return None
    row = s.execute(select(Host.name, Host.agent_url)
                    .where(Host.host_uuid == identity, Host.id != host_id)).first()
    return None if row is None else (row[0], row[1])


def duplicate_error(url: str, identity: str, other: tuple[str, str]) -> Conflict:
    name, other_url = other
    return Conflict(f"the agent at {url} is host {name} (agent URL {other_url}): both answer host UUID "
                    f"{identity}", field="url", host=name)


async def _duplicate(ctx: EngineContext, host_id: str, url: str, identity: str | None,
                     other: tuple[str, str] | None, adding: bool) -> Conflict:
    """The host is another host of this engine: a host being added is not added; a host already here (added
    twice before hosts had identities, or whose agent now runs elsewhere) becomes non-operational."""
    assert identity is not None
    error = duplicate_error(url, identity, other or ("?", "?"))

    def q(s: Session) -> None:
        h = s.get(Host, host_id)
        if h is None:
            return
        if adding:
            record(s, "host_add_failed", f"host {h.name} not added: {error.message}", severity=Severity.ERROR,
                   object_type="host", object_id=h.id)
            s.delete(h)
            return
        h.state, h.state_reason = HostState.NON_OPERATIONAL.value, error.message
        record(s, "host_activate_failed", f"host {h.name}: {error.message}", severity=Severity.ERROR,
               object_type="host", object_id=h.id)
    await ctx.db.run(q)
    return error


def _failed(s: Session, host_id: str, exc: AgentError, adding: bool) -> None:
    h = s.get(Host, host_id)
    if h is None:
        return
    if adding:
        record(s, "host_add_failed", f"host {h.name} not added: {exc.message}", severity=Severity.ERROR,
               object_type="host", object_id=h.id)
        s.delete(h)
        return
    if isinstance(exc, AgentUnreachable):
        h.state, h.state_reason = HostState.UNREACHABLE.value, exc.message
    else:
        h.state, h.state_reason = HostState.NON_OPERATIONAL.value, f"agent refused: {exc.code}: {exc.message}"
    record(s, "host_activate_failed", f"host {h.name}: {h.state_reason}", severity=Severity.ERROR,
           object_type="host", object_id=h.id)
