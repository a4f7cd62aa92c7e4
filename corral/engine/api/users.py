"""``/api/v1/users``: local users (scrypt passwords, ``corral.engine.portal.users``) and their roles, managed by
admins; ``/users/me`` says who the caller is. A change of role or a disabled account takes effect at once for
every token and portal session of that user (the token cache is dropped)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from corral.engine.api.deps import After, Ctx, CurrentPrincipal, Limit, page
from corral.engine.api.schemas import ERRORS, Out, Page
from corral.engine.auth import Role
from corral.engine.db.models import User
from corral.engine.errors import Conflict, Invalid, NotFound
from corral.engine.events import record
from corral.engine.portal.users import UserError, hash_password, set_user
from corral.engine.portal.users import check_new_password as _check_password

router = APIRouter(prefix="/users", tags=["users"], responses=ERRORS)

RoleName = Annotated[Role, Field(description="admin > operator > viewer (docs/security.md)")]


class UserOut(Out):
    id: str
    username: str
    role: str
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    role: RoleName = Role.VIEWER
    password: str = Field(min_length=1, max_length=1024)


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: RoleName | None = None
    disabled: bool | None = None
    password: str | None = Field(None, min_length=1, max_length=1024)


class MeOut(BaseModel):
    username: str | None = Field(description="null for a token without an owner")
    role: str
    actor: str | None = Field(description="the name events record for this caller")
    token_id: str | None
    token_name: str | None


def find_user(s: Session, ref: str, field: str | None = None) -> User:
    user = s.scalar(select(User).where(or_(User.id == ref, User.username == ref)))
    if user is None:
        raise NotFound(f"no user {ref!r}", field=field)
    return user


@router.get("", response_model=Page[UserOut])
def list_users(ctx: Ctx, limit: Limit = 100, after: After = None,
               role: Annotated[Role | None, Query()] = None) -> Page[UserOut]:
    def q(s: Session) -> Page[UserOut]:
        query = select(User)
        if role is not None:
            query = query.where(User.role == role.value)
        rows, nxt = page(s, query, User.id, limit, after)
        return Page[UserOut](items=[UserOut.model_validate(r) for r in rows], next=nxt)
    return ctx.db.read(q)


@router.get("/me", response_model=MeOut)
def me(principal: CurrentPrincipal) -> MeOut:
    return MeOut(username=principal.username, role=principal.role.value, actor=principal.actor,
                 token_id=principal.token_id, token_name=principal.token_name)


@router.get("/{user}", response_model=UserOut)
def get_user(ctx: Ctx, user: str) -> UserOut:
    return ctx.db.read(lambda s: UserOut.model_validate(find_user(s, user)))


@router.post("", status_code=201, response_model=UserOut)
def create_user(ctx: Ctx, body: UserIn) -> UserOut:
    def q(s: Session) -> UserOut:
        if s.scalar(select(User.id).where(User.username == body.username)) is not None:
            raise Conflict(f"user {body.username!r} exists", field="username")
        try:
            row = set_user(s, body.username, body.password, role=body.role.value)
        except UserError as exc:
            raise Invalid(str(exc), field=exc.field) from None
        record(s, "user_created", f"user {row.username} created ({row.role})", object_type="user",
               object_id=row.id)
        return UserOut.model_validate(row)
    return ctx.db.call(q)


@router.patch("/{user}", response_model=UserOut)
def change_user(ctx: Ctx, user: str, body: UserPatch, principal: CurrentPrincipal) -> UserOut:
    """Role, disabled, password. An admin cannot disable or demote their own account (the one admin left
    would lock everybody out); another admin, or ``corral engine create-admin``, can."""
    def q(s: Session) -> UserOut:
        row = find_user(s, user)
        own = principal.user_id == row.id
        changes: list[str] = []
        if body.role is not None and body.role.value != row.role:
            if own and body.role is not Role.ADMIN:
                raise Conflict("you cannot take the admin role from yourself; ask another admin", field="role")
            row.role = body.role.value
            changes.append(f"role {row.role}")
        if body.disabled is not None and body.disabled != row.disabled:
            if own and body.disabled:
                raise Conflict("you cannot disable your own account", field="disabled")
            row.disabled = body.disabled
            changes.append("disabled" if body.disabled else "enabled")
        if body.password is not None:
            try:
                _check_password(body.password)
            except UserError as exc:
                raise Invalid(str(exc), field=exc.field) from None
            row.password_hash = hash_password(body.password)
            changes.append("password changed")
        if changes:
            s.flush()
            record(s, "user_changed", f"user {row.username}: {', '.join(changes)}", object_type="user",
                   object_id=row.id)
        return UserOut.model_validate(row)
    out = ctx.db.call(q)
    ctx.tokens.forget_all()  # cached principals carry the old role
    return out
