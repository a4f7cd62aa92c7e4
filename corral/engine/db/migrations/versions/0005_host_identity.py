"""Host identity, event log position, control domain.

``hosts.host_uuid`` (unique: one row per host whatever URL reaches its agent), ``hosts.event_epoch`` (the run
of the agent's event log that ``last_event_seq`` counts in) and ``hosts.control_domain`` (Xen's Domain-0 as
the host's own domain). The VM row that a Domain-0 made (UUID all zeros, external; only one of all the Xen
hosts had it) is removed: monitoring now records it on its host.

Revision ID: 0005_host_identity
Revises: 0004
Create Date: 2026-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_host_identity"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("host_uuid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("event_epoch", sa.String(64), nullable=True))
        batch.add_column(sa.Column("control_domain", JSON, nullable=True))
        batch.create_index("ix_hosts_host_uuid", ["host_uuid"], unique=True)
    op.execute(sa.text("DELETE FROM vms WHERE id = :zero AND external = :t").bindparams(zero=ZERO_UUID, t=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_index("ix_hosts_host_uuid")
        for name in ("control_domain", "event_epoch", "host_uuid"):
            batch.drop_column(name)
