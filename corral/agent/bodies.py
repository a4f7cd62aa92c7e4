"""Request bodies of the agent API that are not a VmSpec, checked once for the agent and the simulator
(which must refuse exactly alike), each refusal naming its field."""

from __future__ import annotations

from typing import Any

from corral.agent.errors import Invalid


def shutdown_args(data: Any) -> tuple[float, bool]:
    """``{"timeout": seconds, "force": bool}`` (both optional) -> (timeout, force)."""
    body = data or {}
    if not isinstance(body, dict):
        raise Invalid("the body must be an object", field="body")
    timeout = body.get("timeout", 60)
    force = body.get("force", False)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 <= timeout <= 3600:
        raise Invalid("timeout must be a number of seconds between 0 and 3600", field="timeout")
    if not isinstance(force, bool):
        raise Invalid("force must be true or false", field="force")
    return float(timeout), force


def hotplug_args(data: Any) -> tuple[str, dict[str, Any]]:
    """``{"disk": {...}}`` or ``{"nic": {...}}`` -> (kind, device)."""
    if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in ("disk", "nic"):
        raise Invalid("the body must be {\"disk\": {...}} or {\"nic\": {...}}", field="body")
    kind = next(iter(data))
    if not isinstance(data[kind], dict):
        raise Invalid(f"{kind} must be an object", field=kind)
    return kind, data[kind]
