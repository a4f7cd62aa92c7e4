"""``/api/v1/tokens``: API tokens with an owner, an expiry and revocation. Everyone lists, makes and revokes
their own tokens; an admin anyone's, and makes tokens for other users. The clear token is in the answer to its
creation only (only its SHA-256 is stored). A token never acts with more than its owner's role, nor more than
the role of whoever made it. Revoking keeps the row (``revoked_at``) so the audit trail still names it; the
engine process that revokes refuses it at once, others within ``corral.engine.auth.CACHE_SECONDS``.
Portal logins are tokens too (``portal:<user>``) but are not listed here."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine.api.deps import After, Ctx, CurrentPrincipal, Limit
from corral.engine.api.schemas import ERRORS, Page
from corral.engine.api.users import find_user
from corral.engine.auth import SESSION_PREFIX, Principal, Role, issue_token
from corral.engine.db.models import ApiToken, User, utcnow
from corral.engine.errors import ApiError, Conflict, Invalid, NotFound
from corral.engine.events import record

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=ERRORS)

DEFAULT_EXPIRY = "90d"
MAX_EXPIRY = timedelta(days=3650)
_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


def parse_expiry(value: str) -> timedelta | None:
    """``30d``, ``12h``, ``45m``, ``3600s``, ``2w``, or ``never`` (None); at most ten years."""
    if value == "never":
        return None
    m = _DURATION.match(value)
    if m is None:
        raise Invalid(f"expires: {value!r} is not a duration like 30d, 12h, 45m, 2w or 'never'", field="expires")
    delta = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    if not timedelta(0) < delta <= MAX_EXPIRY:
        raise Invalid("expires: between 1 second and 3650 days", field="expires")
    return delta


class TokenOut(BaseModel):
    id: str
    name: str
    user: str | None = Field(description="the owner; null for a token without an owner (engine create-token)")
    role: str
    state: str = Field(description="active, expired or revoked")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="the token itself: shown this once, only its hash is kept")


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_RE)
    user: str | None = Field(None, description="the owner (admins only; default: the caller)")
    role: Role | None = Field(None, description="at most the owner's role (default: the owner's role)")
    expires: str = Field(DEFAULT_EXPIRY, max_length=16, description="30d, 12h, 45m, 2w or never")


def _out(row: ApiToken, owner: str | None) -> TokenOut:
    now = utcnow()
    state = ("revoked" if row.revoked_at is not None else
             "expired" if row.expires_at is not None and row.expires_at <= now else "active")
    return TokenOut(id=row.id, name=row.name, user=owner, role=row.role, state=state, created_at=row.created_at,
                    expires_at=row.expires_at, revoked_at=row.revoked_at, last_used_at=row.last_used_at)


def _visible(principal: Principal) -> tuple[bool, str | None]:
    """(sees all tokens, else the user id whose tokens it sees)."""
    return principal.role is Role.ADMIN, principal.user_id


@router.get("", response_model=Page[TokenOut])
def list_tokens(ctx: Ctx, principal: CurrentPrincipal, limit: Limit = 100, after: After = None,
                user: Annotated[str | None, Query(description="this user's tokens (admins)")] = None,
                ) -> Page[TokenOut]:
    """The caller's tokens; an admin sees everyone's (``user`` narrows it)."""
    def q(s: Session) -> Page[TokenOut]:
        query = select(ApiToken, User.username).outerjoin(User, User.id == ApiToken.owner_id).where(
            ApiToken.name.not_like(SESSION_PREFIX + "%"))
        see_all, own = _visible(principal)
        if user is not None:
            target = find_user(s, user, field="user")
            if not see_all and target.id != own:
                raise ApiError("only an admin lists another user's tokens", code="forbidden", status=403,
                               field="user")
            query = query.where(ApiToken.owner_id == target.id)
        elif not see_all:
            query = query.where(ApiToken.owner_id == own) if own else query.where(
                ApiToken.id == principal.token_id)
        if after is not None:
            query = query.where(ApiToken.id > after)
        rows = s.execute(query.order_by(ApiToken.id).limit(limit + 1)).all()
        items = [_out(t, name) for t, name in rows[:limit]]
        return Page[TokenOut](items=items, next=items[-1].id if len(rows) > limit and items else None)
    return ctx.db.read(q)


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(ctx: Ctx, body: TokenIn, principal: CurrentPrincipal) -> TokenCreated:
    delta = parse_expiry(body.expires)

    def q(s: Session) -> TokenCreated:
        owner: User | None = None
        if body.user is not None:
            owner = find_user(s, body.user, field="user")
            if owner.id != principal.user_id and principal.role is not Role.ADMIN:
                raise ApiError("only an admin makes tokens for another user", code="forbidden", status=403,
                               field="user")
            if owner.disabled:
                raise Conflict(f"user {owner.username} is disabled", field="user")
        elif principal.user_id is not None:
            owner = s.get(User, principal.user_id)
        elif principal.role is not Role.ADMIN:
            raise ApiError("a token without an owner makes no tokens", code="forbidden", status=403)
        ceiling = principal.role if owner is None else min(principal.role, Role.parse(owner.role),
                                                           key=lambda r: r.rank)
        role = body.role or ceiling
        if not ceiling.allows(role):
            raise ApiError(f"role: at most {ceiling} here", code="forbidden", status=403, field="role")
        row, clear = issue_token(s, body.name, role.value, owner_id=owner.id if owner else None,
                                 expires_at=utcnow() + delta if delta is not None else None)
        s.flush()
        record(s, "token_created", f"token {row.name} ({role}) created for "
               f"{owner.username if owner else 'no user'}", object_type="token", object_id=row.id)
        return TokenCreated(**_out(row, owner.username if owner else None).model_dump(), token=clear)
    return ctx.db.call(q)


@router.delete("/{token}", response_model=TokenOut)
def revoke_token(ctx: Ctx, token: str, principal: CurrentPrincipal) -> TokenOut:
    """Revoke a token by id (or by name when the caller has only one token of that name)."""
    def q(s: Session) -> tuple[TokenOut, str]:
        see_all, own = _visible(principal)
        query = select(ApiToken).where(ApiToken.name.not_like(SESSION_PREFIX + "%"))
        if not see_all:
            query = query.where(ApiToken.owner_id == own) if own else query.where(
                ApiToken.id == principal.token_id)
        row = s.scalar(query.where(ApiToken.id == token))
        if row is None:
            named = list(s.scalars(query.where(ApiToken.name == token, ApiToken.revoked_at.is_(None)).limit(2)))
            if len(named) > 1:
                raise Conflict(f"several tokens are named {token!r}; use its id", field="token")
            row = named[0] if named else None
        if row is None:
            raise NotFound(f"no token {token!r}", field="token")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            record(s, "token_revoked", f"token {row.name} revoked", object_type="token", object_id=row.id)
        owner = s.get(User, row.owner_id) if row.owner_id else None
        return _out(row, owner.username if owner else None), row.token_hash
    out, digest = ctx.db.call(q)
    ctx.tokens.forget(digest)
    return out
