"""The VNC password of a VM is write-only in the engine's API.

The engine keeps it in the VM's stored spec (any host must be able to render it), but no answer shows it
back: a VM's spec, its host's view of it (``live``) and the answers of device changes carry ``null`` in its
place (live devices say ``password_set``). A ``PUT`` of a spec whose graphics has no password keeps the stored
one, so that a spec read, edited and written back does not lose it; ``PATCH .../devices/{id}`` with
``{"password": null}`` removes it.
"""

from __future__ import annotations

from typing import Any


def spec(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy of a spec (as JSON) without the graphics password; the same object when it has none."""
    gfx = data.get("graphics") if isinstance(data, dict) else None
    if not isinstance(gfx, dict) or not gfx.get("password"):
        return data
    assert data is not None
    return {**data, "graphics": {**gfx, "password": None}}


def vm_answer(data: dict[str, Any]) -> dict[str, Any]:
    """A VM detail or an agent's VmInfo: its ``spec`` and its ``live`` view's spec redacted."""
    out = dict(data)
    if "spec" in out:
        out["spec"] = spec(out["spec"])
    live = out.get("live")
    if isinstance(live, dict) and "spec" in live:
        out["live"] = {**live, "spec": spec(live["spec"])}
    return out


def keep_password(new: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """``new`` with the stored graphics password where ``new`` has the same graphics device without one."""
    gfx, old = new.get("graphics"), (stored or {}).get("graphics")
    if (isinstance(gfx, dict) and isinstance(old, dict) and old.get("password") and not gfx.get("password")
            and gfx.get("id") == old.get("id")):
        return {**new, "graphics": {**gfx, "password": old["password"]}}
    return new
