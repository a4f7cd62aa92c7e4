"""Engine events: what happened to which object, at which severity, and who did it (the ``events`` table).

Every event recorded while serving an API call (or in a task that call started) names its actor, the
principal of the request (``corral.engine.auth.current``): a user's name, or ``token:<name>`` for a token
without an owner. Events of the engine's own work have none: monitoring writes its batches with ``event_row``,
which never reads the request's principal, because a host's watcher task may have been started by the request
that added the host and would otherwise name that admin for everything the host reports later.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from corral.engine.auth import current_actor
from corral.engine.db.models import Event, Severity, utcnow


def event_row(type_: str, message: str, *, severity: Severity = Severity.INFO, object_type: str | None = None,
              object_id: str | None = None, detail: dict[str, Any] | None = None,
              actor: str | None = None) -> dict[str, Any]:
    """A row for ``record_many``: monitoring's batches, what the engine saw by itself (no actor)."""
    return {"time": utcnow(), "severity": severity.value, "type": type_, "object_type": object_type,
            "object_id": object_id, "message": message, "detail": detail, "actor": actor}


def record(session: Session, type_: str, message: str, *, severity: Severity = Severity.INFO,
           object_type: str | None = None, object_id: str | None = None,
           detail: dict[str, Any] | None = None) -> None:
    session.add(Event(**event_row(type_, message, severity=severity, object_type=object_type,
                                  object_id=object_id, detail=detail, actor=current_actor())))


def record_many(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert many events in one executemany (monitoring writes them in batches)."""
    if rows:
        session.execute(insert(Event), rows)
