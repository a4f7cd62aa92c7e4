"""NIC MACs of managed VMs, one row per MAC, unique engine wide (duplicate MACs are refused).

Existing VMs' MACs are copied from their specs, oldest VM first: where two VMs already share a MAC, the older
keeps it and the other is refused at its next spec change until its NIC gets another MAC.

Revision ID: 0004
Revises: 0003
Create Date: 2026-01-04
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _macs(spec: Any) -> list[tuple[str, str | None]]:
    if isinstance(spec, str | bytes):
        spec = json.loads(spec)
    if not isinstance(spec, dict):
        return []
    out = []
    for nic in spec.get("nics") or []:
        if isinstance(nic, dict) and isinstance(nic.get("mac"), str) and nic["mac"]:
            out.append((nic["mac"].lower(), nic.get("id")))
    return out


def upgrade() -> None:
    table = op.create_table(
        "vm_macs",
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("vm_id", sa.String(36), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], name="fk_vm_macs_vm_id_vms", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mac", name="pk_vm_macs"),
    )
    op.create_index("ix_vm_macs_vm_id", "vm_macs", ["vm_id"])
    conn = op.get_bind()
    taken: set[str] = set()
    rows = []
    query = sa.text("SELECT id, spec FROM vms WHERE external = :f AND spec IS NOT NULL ORDER BY created_at, id")
    for vm_id, spec in conn.execute(query, {"f": False}):
        for mac, device_id in _macs(spec):
            if mac not in taken:
                taken.add(mac)
                rows.append({"mac": mac, "vm_id": vm_id, "device_id": device_id})
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    op.drop_index("ix_vm_macs_vm_id", table_name="vm_macs")
    op.drop_table("vm_macs")
