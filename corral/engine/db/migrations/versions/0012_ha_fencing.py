"""HA restart with fencing (issue 13): vms.ha, vms.ha_priority, vms.ha_pending_since; hosts.fence (power
management: a fence-agents agent and its options), hosts.fence_state, fence_reason, fence_changed_at.

Revision ID: 0012_ha_fencing
Revises: 0011_networks
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012_ha_fencing"
down_revision = "0011_networks"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("ha", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("ha_priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("ha_pending_since", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_vms_ha_pending_since", "vms", ["ha_pending_since"])
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("fence", JSON, nullable=True))
        batch.add_column(sa.Column("fence_state", sa.String(16), nullable=False, server_default=""))
        batch.add_column(sa.Column("fence_reason", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("fence_changed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        for column in ("fence_changed_at", "fence_reason", "fence_state", "fence"):
            batch.drop_column(column)
    op.drop_index("ix_vms_ha_pending_since", table_name="vms")
    with op.batch_alter_table("vms") as batch:
        for column in ("ha_pending_since", "ha_priority", "ha"):
            batch.drop_column(column)
