"""API tokens. Only a token's SHA-256 is stored; the clear token is shown once, when it is created.

``create_token`` is what ``corral engine create-token`` and ``corral all-in-one`` call. Tokens are long
random strings, so a plain hash (no salt, no slow KDF) is enough and lets a request be checked with one
indexed lookup; verified hashes are cached briefly so a busy client costs no query per request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine.db.models import ApiToken, User, utcnow
from corral.engine.db.session import Database
from corral.engine.ids import new_id

TOKEN_PREFIX = "crl_"
CACHE_SECONDS = 30.0
# a portal login is a token named "portal:<username>" (corral.engine.portal.sessions), good for SESSION_TTL
# and while its user is enabled -- wherever it is presented: the portal's cookie or the API's bearer header
SESSION_PREFIX = "portal:"
SESSION_TTL = timedelta(hours=12)


def session_user(s: Session, name: str, created_at: datetime) -> User | None:
    """The user of a portal-session token while the session lasts and the user is enabled, else None."""
    if created_at < utcnow() - SESSION_TTL:
        return None
    user = s.scalar(select(User).where(User.username == name.removeprefix(SESSION_PREFIX)))
    return user if user is not None and not user.disabled else None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(session: Session, name: str = "admin", role: str = "admin") -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(id=new_id(), name=name, token_hash=hash_token(token), role=role))
    return token


def create_token(db_url: str, name: str = "admin") -> str:
    """Create an admin token in the database at ``db_url`` (migrating it first) and return it."""
    db = Database(db_url)
    try:
        db.migrate()
        return db.call(lambda s: new_token(s, name))
    finally:
        db.dispose()


class TokenChecker:
    """Checks bearer tokens against the database, with a short positive cache."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, float] = {}

    def cached(self, token: str) -> bool:
        """True if the token was verified in the last ``CACHE_SECONDS`` (no database access)."""
        expires = self._cache.get(hash_token(token))
        return expires is not None and expires > time.monotonic()

    def check(self, token: str) -> bool:
        digest = hash_token(token)
        now = time.monotonic()
        expires = self._cache.get(digest)
        if expires is not None and expires > now:
            return True
        def q(s: Session) -> bool:
            row = s.execute(select(ApiToken.name, ApiToken.created_at).where(ApiToken.token_hash == digest)).first()
            if row is None:
                return False
            return not row.name.startswith(SESSION_PREFIX) or session_user(s, row.name, row.created_at) is not None

        found = self.db.call(q)
        if not found:
            self._cache.pop(digest, None)
            return False
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = now + CACHE_SECONDS
        return True

    def forget(self, digest: str) -> None:
        """A token just deleted (a logout) is refused from now on, not when its cache entry expires."""
        self._cache.pop(digest, None)
