"""Settings every test engine shares (in-process or started as a process by a test, which inherits them)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def host_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test engines allow host paths anywhere (an admin's choice, ``CORRAL_HOST_PATHS=/``): the tests give
    disks paths like ``/srv/a.img``; tests/engine/test_hostpaths.py checks the rule with narrower settings."""
    monkeypatch.setenv("CORRAL_HOST_PATHS", "/")
