"""Logical networks per cluster (issue 18): name (unique in its cluster), VLAN, MTU, roles, required.

Revision ID: 0011_networks
Revises: 0010_console_policy
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011_networks"
down_revision = "0010_console_policy"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("cluster_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("vlan", sa.Integer(), nullable=True),
        sa.Column("mtu", sa.Integer(), nullable=False, server_default="1500"),
        sa.Column("roles", JSON, nullable=False),
        sa.Column("required", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"], name="fk_networks_cluster_id_clusters"),
        sa.PrimaryKeyConstraint("id", name="pk_networks"),
        sa.UniqueConstraint("cluster_id", "name", name="uq_networks_cluster_id_name"),
        sa.CheckConstraint("vlan IS NULL OR (vlan >= 1 AND vlan <= 4094)", name="ck_networks_vlan"),
        sa.CheckConstraint("mtu >= 68 AND mtu <= 65535", name="ck_networks_mtu"),
    )
    op.create_index("ix_networks_cluster_id_id", "networks", ["cluster_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_networks_cluster_id_id", table_name="networks")
    op.drop_table("networks")
