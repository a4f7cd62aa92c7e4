"""Host operations behind the API: activation (read capabilities + hardware check) and removal.

Adding a host is a task because deploying one (SSH, packages, certificates) will be long; today it is
"ask the agent what it is": ``GET /v1/host`` gives capabilities and the hypervisor-aware hardware check,
which decides ``up`` or ``non_operational`` with the reason. An add whose agent cannot be reached or
refuses the credential removes the half-made host again, so retrying the same URL is not a conflict.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine.agent_client import AgentError, AgentTarget, AgentUnreachable
from corral.engine.context import EngineContext
from corral.engine.db.models import Host, HostState, Severity
from corral.engine.errors import ApiError, BadGateway
from corral.engine.events import record
from corral.engine.hostinfo import evaluate, host_fields
from corral.engine.tasks import TaskContext


async def activate(ctx: EngineContext, task: TaskContext, host_id: str, *, adding: bool,
                   rename: bool = False) -> dict[str, Any]:
    host = await ctx.db.run(lambda s: s.get(Host, host_id))
    if host is None:
        raise ApiError("the host was removed meanwhile", code="not_found", status=404)
    target = AgentTarget(host.agent_url, host.agent_token)
    await task.progress(f"asking the agent at {host.agent_url}")
    try:
        info = await ctx.agents.host(target)
    except AgentError as exc:
        error = exc
        await ctx.db.run(lambda s: _failed(s, host_id, error, adding))
        if isinstance(exc, AgentUnreachable):
            raise BadGateway(f"cannot reach the agent at {host.agent_url}: {exc.message}",
                             code="unreachable") from None
        raise BadGateway(f"the agent at {host.agent_url} refused: {exc.code}: {exc.message}",
                         code="agent_refused") from None

    state, reason = evaluate(info)

    def save(s: Session) -> dict[str, Any]:
        h = s.get(Host, host_id)
        if h is None:
            raise ApiError("the host was removed meanwhile", code="not_found", status=404)
        for key, value in host_fields(info).items():
            setattr(h, key, value)
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
                "target": (h.agent_url, h.agent_token, h.last_event_seq)}

    result = await ctx.db.run(save)
    ctx.scheduler.forget()  # the host's new state and capabilities count at the next placement
    url, token, seq = result.pop("target")
    w = ctx.monitor.watchers.get(host_id)
    if w is None:
        ctx.monitor.watch(host_id, result["name"], AgentTarget(url, token), result["state"], seq)
    else:
        w.state = result["state"]
        w.reachable = True
    return result


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
