"""Agent errors: each maps to one HTTP status and a JSON body ``{"code", "message", "field"?}``."""

from __future__ import annotations

from typing import Any

import libvirt


class AgentError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field, **self.extra}


class NotFound(AgentError):
    status, code = 404, "not_found"


class Conflict(AgentError):
    status, code = 409, "conflict"


class Unsupported(AgentError):
    """The driver cannot do this (live); the message says what works instead."""

    status, code = 409, "unsupported"


class TimedOut(AgentError):
    """An action did not reach its end state in the time given; the answer says the state it is in."""

    status, code = 409, "timeout"


class Invalid(AgentError):
    status, code = 422, "invalid"


class Refused(AgentError):
    status, code = 422, "refused"


class HookFailed(AgentError):
    status, code = 409, "hook_failed"


class LibvirtFailed(AgentError):
    status, code = 502, "libvirt"


class Unauthorized(AgentError):
    status, code = 401, "unauthorized"


class ServiceUnavailable(AgentError):
    status, code = 503, "unavailable"


def from_libvirt(exc: libvirt.libvirtError, doing: str) -> AgentError:
    """Classify a libvirt error: unsupported operations become 409 with the operation named."""
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                libvirt.VIR_ERR_CONFIG_UNSUPPORTED):
        return Unsupported(f"{doing}: this host's libvirt driver cannot do it ({message})")
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return Conflict(f"{doing}: {message}")
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFound(f"{doing}: {message}")
    return LibvirtFailed(f"{doing}: {message}", libvirt_code=code)
