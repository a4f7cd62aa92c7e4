"""API errors. Every error the REST API returns is ``{"code", "message", "field"?, ...}``.

Handlers raise ``ApiError`` subclasses; ``install_handlers`` turns them, FastAPI's validation errors and
Starlette's HTTP errors into that one shape, so a client (the CLI, the portal) needs one error path.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.domain.spec import SpecError


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None,
                 status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = extra

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message, "field": self.field}
        out.update(self.extra)
        return out


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Invalid(ApiError):
    status = 422
    code = "invalid"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class BadGateway(ApiError):
    """The host's agent failed or could not be reached."""

    status = 502
    code = "agent_error"


def invalid_from_spec(exc: SpecError) -> Invalid:
    return Invalid(str(exc), field=exc.field, errors=[{"field": p, "message": m} for p, m in exc.errors])


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "too_large", 422: "invalid", 503: "unavailable"}


def _loc_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts)


def _located(error: Any) -> tuple[Any, ...]:
    """The error's location, and within it the field a cross-field check names (``FieldError``)."""
    loc = tuple(error.get("loc") or ())
    cause = (error.get("ctx") or {}).get("error")
    field = getattr(cause, "field", None)
    return (*loc, *field.split(".")) if isinstance(field, str) and field else loc


def install_handlers(app: FastAPI) -> None:
    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"field": _loc_path(_located(e)), "message": str(e["msg"]).removeprefix("Value error, ")}
                  for e in exc.errors()]
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        message = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
        return JSONResponse({"code": "invalid", "message": message or first["message"],
                             "field": first["field"] or None, "errors": errors}, status_code=422)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse({"code": code, "message": str(exc.detail), "field": None},
                            status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
