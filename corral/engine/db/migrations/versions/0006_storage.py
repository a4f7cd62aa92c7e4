"""Storage domains, their state on each host, and volumes (issue 12, first slice).

Revision ID: 0006_storage
Revises: 0005_host_identity
Create Date: 2026-01-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006_storage"
down_revision = "0005_host_identity"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "storage_domains",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("cluster_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("path", sa.String(1024), nullable=True),
        sa.Column("source", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"], name="fk_storage_domains_cluster_id_clusters"),
        sa.PrimaryKeyConstraint("id", name="pk_storage_domains"),
        sa.UniqueConstraint("cluster_id", "name", name="uq_storage_domains_cluster_id_name"),
    )
    op.create_index("ix_storage_domains_cluster_id_id", "storage_domains", ["cluster_id", "id"])
    op.create_table(
        "storage_domain_hosts",
        sa.Column("domain_id", sa.String(36), nullable=False),
        sa.Column("host_id", sa.String(36), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("capacity_bytes", sa.BigInteger(), nullable=True),
        sa.Column("free_bytes", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["domain_id"], ["storage_domains.id"],
                                name="fk_storage_domain_hosts_domain_id_storage_domains", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_storage_domain_hosts_host_id_hosts",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("domain_id", "host_id", name="pk_storage_domain_hosts"),
    )
    op.create_index("ix_storage_domain_hosts_host_id", "storage_domain_hosts", ["host_id"])
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("domain_id", sa.String(36), nullable=False),
        sa.Column("host_id", sa.String(36), nullable=True),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("capacity_bytes", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=True),
        sa.Column("backing_id", sa.String(36), nullable=True),
        sa.Column("vm_id", sa.String(36), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["domain_id"], ["storage_domains.id"], name="fk_volumes_domain_id_storage_domains"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_volumes_host_id_hosts", ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["backing_id"], ["volumes.id"], name="fk_volumes_backing_id_volumes"),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], name="fk_volumes_vm_id_vms", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_volumes"),
        sa.UniqueConstraint("domain_id", "name", name="uq_volumes_domain_id_name"),
    )
    op.create_index("ix_volumes_domain_id_id", "volumes", ["domain_id", "id"])
    op.create_index("ix_volumes_host_id", "volumes", ["host_id"])
    op.create_index("ix_volumes_vm_id", "volumes", ["vm_id"])
    op.create_index("ix_volumes_backing_id", "volumes", ["backing_id"])


def downgrade() -> None:
    for index in ("ix_volumes_backing_id", "ix_volumes_vm_id", "ix_volumes_host_id", "ix_volumes_domain_id_id"):
        op.drop_index(index, table_name="volumes")
    op.drop_table("volumes")
    op.drop_index("ix_storage_domain_hosts_host_id", table_name="storage_domain_hosts")
    op.drop_table("storage_domain_hosts")
    op.drop_index("ix_storage_domains_cluster_id_id", table_name="storage_domains")
    op.drop_table("storage_domains")
