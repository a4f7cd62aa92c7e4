"""Migrations match the models on both databases; URLs; time-ordered ids; tokens."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from corral.engine.auth import TokenChecker, create_token
from corral.engine.db.migrate import current_revision, head_revision
from corral.engine.db.models import Base
from corral.engine.db.session import Database, DatabaseUrlError, normalize_url
from corral.engine.ids import new_id


def test_migrations_match_models_and_are_idempotent(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.migrate()
        db.migrate()
        assert current_revision(db.engine) == head_revision(db.engine)
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        db.dispose()


def test_tokens_are_stored_hashed(db_url: str) -> None:
    token = create_token(db_url, "ci")
    db = Database(db_url)
    try:
        from sqlalchemy import text

        stored = db.call(lambda s: [r[0] for r in s.execute(text("SELECT token_hash FROM api_tokens"))])
        assert token not in stored and len(stored) == 1
        checker = TokenChecker(db)
        assert checker.check(token) and checker.check(token) and not checker.check(token + "x")
    finally:
        db.dispose()


def test_normalize_url() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert normalize_url("/tmp/y.db") == "sqlite:////tmp/y.db"
    with pytest.raises(DatabaseUrlError):
        normalize_url("mysql://x/y")


def test_ids_are_time_ordered_uuids() -> None:
    import time
    import uuid

    ids = []
    for _ in range(5):
        ids.append(new_id())
        time.sleep(0.002)
    assert ids == sorted(ids) and all(uuid.UUID(i).version == 7 for i in ids)


def test_default_cluster_made_once_by_concurrent_first_needs(db_url: str) -> None:
    """Two requests that both need the default cluster in an empty database (two hosts added at once): both
    succeed and there is one default cluster. Each is held right after its lookup found nothing until the other
    has looked too, so both go on to insert it."""
    import threading

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from corral.engine.api.clusters import DEFAULT_CLUSTER, default_cluster
    from corral.engine.db.models import Cluster

    looked = threading.Barrier(2, timeout=20)

    class HeldAfterLookup:
        """The session, but its first ``scalar`` (the lookup) waits for the other thread's."""

        def __init__(self, session: Session) -> None:
            self.session, self.first = session, True

        def scalar(self, *args: Any, **kwargs: Any) -> Any:
            found = self.session.scalar(*args, **kwargs)
            if self.first:
                self.first = False
                assert found is None
                looked.wait()
            return found

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

    db = Database(db_url)
    db.migrate()
    found: list[str] = []
    errors: list[BaseException] = []

    def need() -> None:
        try:
            found.append(db.call(lambda s: default_cluster(HeldAfterLookup(s)).id))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=need) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(found) == 2 and found[0] == found[1]
        assert db.read(lambda s: len(s.scalars(select(Cluster).where(Cluster.name == DEFAULT_CLUSTER)).all())) == 1
    finally:
        db.dispose()
