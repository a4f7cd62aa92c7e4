"""Images: volumes uploaded as disk images or ISOs, with their kind and sha256 (issue 12, upload slice).

Revision ID: 0007_images
Revises: 0006_storage
Create Date: 2026-01-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_images"
down_revision = "0006_storage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("volume_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["volume_id"], ["volumes.id"], name="fk_images_volume_id_volumes",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("volume_id", name="pk_images"),
    )
    op.create_index("ix_images_kind", "images", ["kind"])


def downgrade() -> None:
    op.drop_index("ix_images_kind", table_name="images")
    op.drop_table("images")
