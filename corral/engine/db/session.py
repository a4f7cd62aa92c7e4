"""Database connection: one SQLAlchemy engine per process, sessions per unit of work.

The engine uses synchronous SQLAlchemy: pysqlite and psycopg's sync mode are the best-trodden paths,
and the async parts of the engine (API handlers that call agents, the monitor) hand their database work
to a thread with ``Database.run`` so the event loop never blocks on a query. Batching keeps those hops
few: the monitor writes many hosts' changes in one call.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from corral.private import private_file

T = TypeVar("T")

SUPPORTED = ("sqlite", "postgresql")
# How long a statement waits for a lock another connection holds (SQLite's busy timeout, PostgreSQL's
# lock_timeout) before it fails; the API then answers 503 with Retry-After (corral.engine.failures) instead
# of keeping the client waiting. Long enough for any unit of work the engine makes (they are short).
BUSY_TIMEOUT_SECONDS = 5


class DatabaseUrlError(ValueError):
    pass


def normalize_url(url: str) -> str:
    """Accept ``sqlite:///path``, a bare file path, ``postgresql://`` (→ psycopg 3) and ``postgresql+psycopg://``."""
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise DatabaseUrlError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql+psycopg://...")
    if backend == "postgresql" and parsed.drivername in ("postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the monitor writes; foreign keys are off by default in SQLite.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
    cur.close()


def _private_sqlite(path: Path) -> None:
    """The database file 0600 (made so before SQLite makes it with the umask's mode); SQLite gives its -wal and
    -shm files the database file's mode, and those left by an older version are tightened too."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        private_file(p)


def make_engine(url: str, *, pool_size: int = 32) -> Engine:
    """The pool keeps as many connections as threads may hold sessions at once (the API's worker threads,
    ``Database.run``'s): a connection past ``pool_size`` is closed when given back, so a smaller pool makes a
    busy engine open a new database connection (a PostgreSQL backend) for every other request."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = make_url(url).database
        pool: dict[str, int] = {}
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _private_sqlite(Path(path))
            pool = {"pool_size": pool_size, "max_overflow": pool_size}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_SECONDS},
                               **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping (a round trip per checkout): after a server restart the first statement on a dead connection
    # fails, and SQLAlchemy then drops the whole pool, so one request fails instead of every request paying.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                         connect_args={"options": f"-c lock_timeout={BUSY_TIMEOUT_SECONDS * 1000}"})


class Database:
    """The engine plus a session factory; ``run`` executes a unit of work off the event loop."""

    def __init__(self, url: str, *, engine: Engine | None = None, threads: int = 16) -> None:
        self.url = normalize_url(url)
        self.engine = engine or make_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads that need no transaction: each statement on its own (autocommit), without the BEGIN and
        # COMMIT round trips a transaction adds to a one-query request.
        self.readers = sessionmaker(self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                                    expire_on_commit=False)
        # Units of work run on threads of their own: asyncio's default executor has cores + 4 threads (6 on
        # two cores), shared with everything else, too few for many tasks each waiting on a commit.
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def call(self, fn: Callable[[Session], T]) -> T:
        with self.session() as session:
            return fn(session)

    def read(self, fn: Callable[[Session], T]) -> T:
        """``call`` for a read-only unit of work (writes would be committed statement by statement)."""
        with self.readers() as session:
            return fn(session)

    async def run(self, fn: Callable[[Session], T]) -> T:
        return await self._offload(self.call, fn)

    async def run_read(self, fn: Callable[[Session], T]) -> T:
        """``run`` for a read-only unit of work (see ``read``)."""
        return await self._offload(self.read, fn)

    async def _offload(self, how: Callable[[Callable[[Session], T]], T], fn: Callable[[Session], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="db")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, contextvars.copy_context().run, how, fn)

    def migrate(self) -> None:
        from corral.engine.db.migrate import upgrade

        upgrade(self.engine)

    def dispose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        self.engine.dispose()
