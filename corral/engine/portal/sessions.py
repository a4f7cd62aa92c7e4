"""Portal sessions: a login is an API token held in an HttpOnly cookie.

At login the portal creates an API token named ``portal:<username>`` (only its SHA-256 is stored, like every
API token) and puts the clear token in the session cookie. So a session survives an engine restart and works
with several engine processes on one database, the portal can call the REST API on the user's behalf with
the same credential, and logging out deletes the row, which ends the session everywhere at once. The portal
and the REST API accept a portal token only for ``SESSION_TTL`` after its creation, and only while its user
exists and is enabled (``corral.engine.auth.session_user``); expired rows are swept at the next login. The
CSRF token is derived from the session token with a keyed hash, so it needs no storage and a page from another
site cannot know it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from corral.engine.auth import SESSION_PREFIX, SESSION_TTL, TOKEN_PREFIX, hash_token, new_token, session_user
from corral.engine.db.models import ApiToken, utcnow
from corral.engine.db.session import Database
from corral.engine.portal.users import Principal

COOKIE = "corral_session"
NAME_PREFIX = SESSION_PREFIX
CACHE_SECONDS = 5.0
__all__ = ["COOKIE", "SESSION_TTL", "SessionStore", "csrf_ok", "csrf_token"]


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"corral-portal-csrf", hashlib.sha256).hexdigest()[:40]


def csrf_ok(session_token: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(session_token), given or "")


class SessionStore:
    """Checks session cookies against the ``api_tokens`` and ``users`` tables, with a short cache."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[float, Principal]] = {}

    def start(self, principal: Principal) -> str:
        """Create the session's token (sweeping expired portal tokens) and return it."""
        def q(s: Session) -> str:
            cutoff = utcnow() - SESSION_TTL
            s.execute(delete(ApiToken).where(ApiToken.name.startswith(NAME_PREFIX), ApiToken.created_at < cutoff))
            return new_token(s, NAME_PREFIX + principal.username, principal.role)
        return self.db.call(q)

    def check(self, token: str | None) -> Principal | None:
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]

        def q(s: Session) -> Principal | None:
            row = s.execute(select(ApiToken.name, ApiToken.created_at).where(ApiToken.token_hash == digest)).first()
            if row is None or not row.name.startswith(NAME_PREFIX):
                return None
            user = session_user(s, row.name, row.created_at)
            return Principal(user.id, user.username, user.role) if user is not None else None

        principal = self.db.call(q)
        if principal is None:
            self._cache.pop(digest, None)
            return None
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = (now + CACHE_SECONDS, principal)
        return principal

    def end(self, token: str | None) -> str | None:
        """Delete the session's token; returns its hash (for the API's token cache) or None."""
        if not token:
            return None
        digest = hash_token(token)
        self._cache.pop(digest, None)
        self.db.call(lambda s: s.execute(delete(ApiToken).where(ApiToken.token_hash == digest,
                                                               ApiToken.name.startswith(NAME_PREFIX))))
        return digest
