"""Templates and clones: table templates; volumes.clone_of_id (a pending full copy's source) and
volumes.template_id (a template's sealed base volume) (issue 12, images/ISOs/templates slice).

Revision ID: 0008_templates
Revises: 0007_images
Create Date: 2026-01-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008_templates"
down_revision = "0007_images"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("cluster_id", sa.String(36), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("spec", _JSON, nullable=False),
        sa.Column("source_vm", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"], name="fk_templates_cluster_id_clusters"),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
        sa.UniqueConstraint("cluster_id", "name", name="uq_templates_cluster_id_name"),
    )
    with op.batch_alter_table("volumes") as batch:
        batch.add_column(sa.Column("clone_of_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("template_id", sa.String(36), nullable=True))
        batch.create_foreign_key("fk_volumes_clone_of_id_volumes", "volumes", ["clone_of_id"], ["id"])
        batch.create_foreign_key("fk_volumes_template_id_templates", "templates", ["template_id"], ["id"])
        batch.create_index("ix_volumes_clone_of_id", ["clone_of_id"])
        batch.create_index("ix_volumes_template_id", ["template_id"])


def downgrade() -> None:
    with op.batch_alter_table("volumes") as batch:
        batch.drop_index("ix_volumes_template_id")
        batch.drop_index("ix_volumes_clone_of_id")
        batch.drop_constraint("fk_volumes_template_id_templates", type_="foreignkey")
        batch.drop_constraint("fk_volumes_clone_of_id_volumes", type_="foreignkey")
        batch.drop_column("template_id")
        batch.drop_column("clone_of_id")
    op.drop_table("templates")
