"""Users and roles, audit (issue 14): api_tokens get an owner (a user), an expiry, a revocation time and the time
they were last used; events get the actor who made the change.

Revision ID: 0009_tokens_roles
Revises: 0008_templates
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_tokens_roles"
down_revision = "0008_templates"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("owner_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("expires_at", TS, nullable=True))
        batch.add_column(sa.Column("revoked_at", TS, nullable=True))
        batch.add_column(sa.Column("last_used_at", TS, nullable=True))
        batch.create_foreign_key("fk_api_tokens_owner_id_users", "users", ["owner_id"], ["id"], ondelete="CASCADE")
        batch.create_index("ix_api_tokens_owner_id", ["owner_id"])
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("actor", sa.String(100), nullable=True))
        batch.create_index("ix_events_actor", ["actor"])


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_actor")
        batch.drop_column("actor")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_owner_id")
        batch.drop_constraint("fk_api_tokens_owner_id_users", type_="foreignkey")
        batch.drop_column("last_used_at")
        batch.drop_column("revoked_at")
        batch.drop_column("expires_at")
        batch.drop_column("owner_id")
