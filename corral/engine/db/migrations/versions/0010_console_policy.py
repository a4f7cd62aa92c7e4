"""Console policy (issue 14): clusters.allow_public_console -- whether a VM of the cluster may ask for a console
on a network address instead of its host's loopback (admins only; off by default).

Revision ID: 0010_console_policy
Revises: 0009_tokens_roles
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_console_policy"
down_revision = "0009_tokens_roles"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("allow_public_console", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("allow_public_console")
