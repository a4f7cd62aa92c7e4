"""Initial schema: clusters, hosts, vms, events, tasks, api_tokens.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("flavor_policy", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_clusters"),
        sa.UniqueConstraint("name", name="uq_clusters_name"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(16), nullable=True),
        sa.Column("object_id", sa.String(36), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("detail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_object_type_object_id_id", "events", ["object_type", "object_id", "id"])
    op.create_index("ix_events_severity_id", "events", ["severity", "id"])
    op.create_index("ix_events_time", "events", ["time"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("object_type", sa.String(16), nullable=True),
        sa.Column("object_id", sa.String(36), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
    )
    op.create_index("ix_tasks_object_type_object_id", "tasks", ["object_type", "object_id"])
    op.create_index("ix_tasks_state_id", "tasks", ["state", "id"])
    op.create_table(
        "hosts",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("cluster_id", sa.String(36), nullable=False),
        sa.Column("agent_url", sa.String(1024), nullable=False),
        sa.Column("agent_token", sa.String(512), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=False),
        sa.Column("hypervisor", sa.String(16), nullable=True),
        sa.Column("flavor", sa.String(16), nullable=True),
        sa.Column("accel", sa.String(16), nullable=True),
        sa.Column("emulated", sa.Boolean(), nullable=False),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("cpu_model", sa.String(128), nullable=True),
        sa.Column("cpu_flags", JSON, nullable=False),
        sa.Column("memory_mib", sa.BigInteger(), nullable=False),
        sa.Column("free_memory_mib", sa.BigInteger(), nullable=True),
        sa.Column("reserved_memory_mib", sa.BigInteger(), nullable=False),
        sa.Column("bridges", JSON, nullable=False),
        sa.Column("info", JSON, nullable=False),
        sa.Column("last_event_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"], name="fk_hosts_cluster_id_clusters"),
        sa.PrimaryKeyConstraint("id", name="pk_hosts"),
        sa.UniqueConstraint("agent_url", name="uq_hosts_agent_url"),
        sa.UniqueConstraint("name", name="uq_hosts_name"),
    )
    op.create_index("ix_hosts_cluster_id_id", "hosts", ["cluster_id", "id"])
    op.create_index("ix_hosts_state", "hosts", ["state"])
    op.create_table(
        "vms",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("cluster_id", sa.String(36), nullable=False),
        sa.Column("external", sa.Boolean(), nullable=False),
        sa.Column("spec", JSON, nullable=True),
        sa.Column("memory_mib", sa.BigInteger(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=False),
        sa.Column("host_id", sa.String(36), nullable=True),
        sa.Column("last_host_id", sa.String(36), nullable=True),
        sa.Column("placement", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("state_changed_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"], name="fk_vms_cluster_id_clusters"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_vms_host_id_hosts"),
        sa.ForeignKeyConstraint(["last_host_id"], ["hosts.id"], name="fk_vms_last_host_id_hosts"),
        sa.PrimaryKeyConstraint("id", name="pk_vms"),
    )
    op.create_index("ix_vms_cluster_id_id", "vms", ["cluster_id", "id"])
    op.create_index("ix_vms_host_id_id", "vms", ["host_id", "id"])
    op.create_index("ix_vms_last_host_id", "vms", ["last_host_id"])
    op.create_index("ix_vms_name", "vms", ["name"])
    op.create_index("ix_vms_state_id", "vms", ["state", "id"])
    op.create_index("uq_vms_name_managed", "vms", ["name"], unique=True,
                    sqlite_where=sa.text("external = 0"), postgresql_where=sa.text("external = false"))


def downgrade() -> None:
    for table in ("vms", "hosts", "tasks", "events", "clusters", "api_tokens"):
        op.drop_table(table)
