"""Answers for what no route expected: the database unavailable (503) and bugs (500), both as JSON.

A locked SQLite file or a PostgreSQL server that is gone is a passing condition, not the client's fault nor a
bug: 503 with ``Retry-After`` tells a client (the CLI, a script, a load balancer) to try again shortly. Any other
exception is a 500 with the error shape every other answer has (``{"code", "message", "field"}``) and no
traceback or exception text, which could show SQL, paths or secrets; the traceback goes to the engine's log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2


def unavailable(exc: BaseException) -> bool:
    """The database cannot answer now (locked, busy, unreachable, pool exhausted) rather than refused the query."""
    if isinstance(exc, (OperationalError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def database_unavailable() -> JSONResponse:
    return JSONResponse({"code": "unavailable", "message": "the database is busy or unreachable; try again",
                         "field": None}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def install_failure_handlers(app: FastAPI) -> None:
    async def db_error(request: Request, exc: Exception) -> JSONResponse:
        if not unavailable(exc):
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return await internal_error(request, exc)
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc.__class__.__name__)
        return database_unavailable()

    async def internal_error(_request: Request, _exc: Exception) -> JSONResponse:
        # the traceback is logged by the server: Starlette raises the exception again after this answer
        return JSONResponse({"code": "internal_error", "message": "internal error; the engine's log has the details",
                             "field": None}, status_code=500)

    app.add_exception_handler(DBAPIError, db_error)  # OperationalError is one
    app.add_exception_handler(PoolTimeout, db_error)
    # Exception goes to Starlette's outermost middleware: it answers with this, then re-raises for the server's log
    app.add_exception_handler(Exception, internal_error)
