"""API tokens and who a request acts as. Only a token's SHA-256 is stored; the clear token is shown once.

A token has an owner (a user) or none. One with an owner acts as that user with at most the token's own role
(a user may make a read-only token for a script) and stops working when the user is disabled; one without an
owner (``corral engine create-token``, ``corral all-in-one``: made by whoever holds the engine's database) acts
with its role alone. A portal login is a token named ``portal:<username>`` (``corral.engine.portal.sessions``),
good for ``SESSION_TTL`` while its user is enabled. A token may expire (``expires_at``) and may be revoked
(``revoked_at``, kept for the audit trail); either way it is refused with 401.

Tokens are long random strings, so a plain hash (no salt, no slow KDF) is enough and lets a request be checked
with one indexed lookup; a verified token's principal is cached for ``CACHE_SECONDS`` (never past its expiry),
and dropped at once in this process when it is revoked or its user changes. Another engine process on the same
database notices within ``CACHE_SECONDS``.

The principal of the request being served is held in a context variable (``current``), set by the API's auth
dependency: ``corral.engine.events.record`` reads it to name the actor of a change, however deep the call, and
a background task started by the request (an ``asyncio`` task, a database thread) inherits it, so the events a
task records later still name who asked for it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine.db.models import ApiToken, User, utcnow
from corral.engine.db.session import Database
from corral.engine.ids import new_id

TOKEN_PREFIX = "crl_"
CACHE_SECONDS = 30.0
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token
SESSION_PREFIX = "portal:"
SESSION_TTL = timedelta(hours=12)


class Role(StrEnum):
    """What a principal may do; each role may do everything the ones before it may (``corral.engine.access``)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, value: str | None) -> Role:
        """A stored role; an unknown value reads as the least role (fail closed)."""
        try:
            return cls(value or "")
        except ValueError:
            return cls.VIEWER


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a user (through a token or a portal session), or a token without an owner."""

    role: Role
    username: str | None = None
    user_id: str | None = None
    token_id: str | None = None
    token_name: str | None = None

    @property
    def actor(self) -> str | None:
        """The name events record: the user's name, else ``token:<name>``; None for the engine itself."""
        if self.username is not None:
            return self.username
        return f"token:{self.token_name}" if self.token_name is not None else None


ENGINE = Principal(Role.ADMIN)  # an engine without auth (tests, ``auth=False``), and the engine's own work

_current: ContextVar[Principal | None] = ContextVar("corral_principal", default=None)


def current() -> Principal | None:
    """The principal of the request (or of the request that started this task), None outside requests."""
    return _current.get()


def set_current(principal: Principal | None) -> None:
    _current.set(principal)


def current_actor() -> str | None:
    p = _current.get()
    return p.actor if p is not None else None


def session_user(s: Session, name: str, created_at: datetime) -> User | None:
    """The user of a portal-session token while the session lasts and the user is enabled, else None."""
    if created_at < utcnow() - SESSION_TTL:
        return None
    user = s.scalar(select(User).where(User.username == name.removeprefix(SESSION_PREFIX)))
    return user if user is not None and not user.disabled else None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, name: str, role: str = "admin", *, owner_id: str | None = None,
                expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """A new token row and the clear token (shown once; only its hash is kept)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(id=new_id(), name=name, token_hash=hash_token(token), role=role, owner_id=owner_id,
                   expires_at=expires_at)
    session.add(row)
    return row, token


def new_token(session: Session, name: str = "admin", role: str = "admin") -> str:
    return issue_token(session, name, role)[1]


def create_token(db_url: str, name: str = "admin") -> str:
    """Create an admin token without an owner in the database at ``db_url`` (migrating it first); return it."""
    db = Database(db_url)
    try:
        db.migrate()
        return db.call(lambda s: new_token(s, name))
    finally:
        db.dispose()


class TokenRefused(Exception):
    """A token that is not (or no longer) good; the message says why, for the 401 answer."""


def principal_of(s: Session, digest: str) -> tuple[Principal, datetime | None]:
    """The principal of the token with this hash and when the token expires; ``TokenRefused`` otherwise."""
    row = s.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None:
        raise TokenRefused("unknown token")
    now = utcnow()
    if row.revoked_at is not None:
        raise TokenRefused("this token was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenRefused("this token has expired")
    expires = row.expires_at
    if row.name.startswith(SESSION_PREFIX):
        user = session_user(s, row.name, row.created_at)
        if user is None:
            raise TokenRefused("the portal session has ended")
        expires = row.created_at + SESSION_TTL
        role = Role.parse(user.role)
    elif row.owner_id is not None:
        user = s.get(User, row.owner_id)
        if user is None or user.disabled:
            raise TokenRefused("the token's user is disabled")
        role = min(Role.parse(row.role), Role.parse(user.role), key=lambda r: r.rank)
    else:
        user, role = None, Role.parse(row.role)
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_EVERY:
        row.last_used_at = now
    return Principal(role, user.username if user else None, user.id if user else None, row.id, row.name), expires


class TokenChecker:
    """Checks bearer tokens against the database, with a short positive cache of their principals."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[float, Principal]] = {}

    def cached(self, token: str) -> Principal | None:
        """The principal if the token was verified in the last ``CACHE_SECONDS`` (no database access)."""
        hit = self._cache.get(hash_token(token))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def principal(self, token: str) -> Principal:
        """The token's principal; ``TokenRefused`` (with the reason) when it is unknown, expired or revoked."""
        digest = hash_token(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            found, expires = self.db.call(lambda s: principal_of(s, digest))
        except TokenRefused:
            self._cache.pop(digest, None)
            raise
        until = now + CACHE_SECONDS
        if expires is not None:
            until = min(until, now + (expires - utcnow()).total_seconds())
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = (until, found)
        return found

    def check(self, token: str) -> bool:
        try:
            self.principal(token)
        except TokenRefused:
            return False
        return True

    def forget(self, digest: str) -> None:
        """A token just deleted or revoked is refused from now on, not when its cache entry expires."""
        self._cache.pop(digest, None)

    def forget_all(self) -> None:
        """A user was disabled or changed role: every cached principal is looked up again."""
        self._cache.clear()
