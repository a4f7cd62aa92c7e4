"""Engine events: what happened to which object, at which severity (the ``events`` table)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from corral.engine.db.models import Event, Severity, utcnow


def event_row(type_: str, message: str, *, severity: Severity = Severity.INFO, object_type: str | None = None,
              object_id: str | None = None, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"time": utcnow(), "severity": severity.value, "type": type_, "object_type": object_type,
            "object_id": object_id, "message": message, "detail": detail}


def record(session: Session, type_: str, message: str, *, severity: Severity = Severity.INFO,
           object_type: str | None = None, object_id: str | None = None,
           detail: dict[str, Any] | None = None) -> None:
    session.add(Event(**event_row(type_, message, severity=severity, object_type=object_type,
                                  object_id=object_id, detail=detail)))


def record_many(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert many events in one executemany (monitoring writes them in batches)."""
    if rows:
        session.execute(insert(Event), rows)
