"""Host deploy over SSH: SSH address/port/user, pinned host key, certificate expiry, deploy state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("ssh_address", sa.String(255), nullable=True))
        batch.add_column(sa.Column("ssh_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("ssh_user", sa.String(64), nullable=True))
        batch.add_column(sa.Column("ssh_host_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("cert_expires_at", TS, nullable=True))
        batch.add_column(sa.Column("deploy", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        for name in ("deploy", "cert_expires_at", "ssh_host_key", "ssh_user", "ssh_port", "ssh_address"):
            batch.drop_column(name)
