"""The engine's admin portal (see ``web``): login, dashboard, hosts, VMs, plans, events, consoles."""

from __future__ import annotations

from corral.engine.portal.web import Portal, mount_portal

__all__ = ["Portal", "mount_portal"]
