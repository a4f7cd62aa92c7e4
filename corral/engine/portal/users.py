"""Portal users: creation, password hashing and verification.

Passwords are hashed with scrypt (``hashlib.scrypt``, RFC 7914), a memory-hard KDF, with a random 16-byte
salt per password. The stored form names its parameters (``scrypt$N$r$p$salt$hash``, base64), so they can be
raised later while old hashes keep verifying; ``needs_rehash`` says when a hash is weaker than today's
parameters and is upgraded at the next successful login. Verification compares in constant time, and an
unknown user costs the same hash as a wrong password (no user enumeration by timing).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine.db.models import User, utcnow
from corral.engine.db.session import Database
from corral.engine.ids import new_id

# 2**15 * 8 * 128 bytes = 32 MiB per hash: roughly 50-100 ms on one core.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_PASSWORD = 1024
USERNAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD = 8


class UserError(ValueError):
    """A refused user operation; ``field`` names the input at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES,
                          maxmem=256 * n * r + 1024 * 1024)


def hash_password(password: str) -> str:
    if len(password) > MAX_PASSWORD:
        raise UserError(f"password longer than {MAX_PASSWORD} characters", field="password")
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


# Verified against when the user does not exist, so a miss costs as much as a wrong password.
_DUMMY = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(b'corral-dummy-salt')}${_b64(bytes(KEY_BYTES))}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(key)
        got = _scrypt(password[:MAX_PASSWORD], _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected) and len(password) <= MAX_PASSWORD


def needs_rehash(stored: str) -> bool:
    parts = stored.split("$")
    return len(parts) != 6 or parts[0] != "scrypt" or (int(parts[1]), int(parts[2]), int(parts[3])) < (
        SCRYPT_N, SCRYPT_R, SCRYPT_P)


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password needs at least {MIN_PASSWORD} characters", field="password")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"password longer than {MAX_PASSWORD} characters", field="password")


def generate_password() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class Principal:
    """Who a portal request acts as."""

    user_id: str
    username: str
    role: str


def set_user(s: Session, username: str, password: str, *, role: str = "admin", update: bool = False) -> User:
    """Create a user, or with ``update`` set the password (and role) of an existing one."""
    if not USERNAME_RE.match(username):
        raise UserError("a username is 1-64 letters, digits, '.', '_', '@' or '-'", field="username")
    check_new_password(password)
    user = s.scalar(select(User).where(User.username == username))
    if user is not None and not update:
        raise UserError(f"user {username!r} exists", field="username")
    if user is None:
        user = User(id=new_id(), username=username, password_hash=hash_password(password), role=role,
                    disabled=False)
        s.add(user)
    else:
        user.password_hash, user.role, user.disabled = hash_password(password), role, False
    s.flush()
    return user


def authenticate(s: Session, username: str, password: str) -> Principal | None:
    """The user if the password matches (and the account is enabled); records the login time."""
    user = s.scalar(select(User).where(User.username == username)) if username else None
    if user is None:
        verify_password(password, _DUMMY)
        return None
    if not verify_password(password, user.password_hash) or user.disabled:
        return None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = utcnow()
    return Principal(user.id, user.username, user.role)


def create_admin(db_url: str, username: str = "admin", password: str | None = None, *,
                 update: bool = False) -> str:
    """Create (or with ``update`` reset) an admin user in the database at ``db_url``, migrating it first.

    Returns the password (generated when none is given)."""
    pw = password if password is not None else generate_password()
    db = Database(db_url)
    try:
        db.migrate()
        db.call(lambda s: set_user(s, username, pw, role="admin", update=update))
    finally:
        db.dispose()
    return pw


def user_exists(db_url: str, username: str) -> bool:
    db = Database(db_url)
    try:
        db.migrate()
        return db.call(lambda s: s.scalar(select(User.id).where(User.username == username)) is not None)
    finally:
        db.dispose()
