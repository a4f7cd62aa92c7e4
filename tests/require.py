"""Skip locally, fail in CI: what a test does when a lab or PostgreSQL is not there (issue 15).

A real-hypervisor test (the QEMU lab, the Xen lab and its agent in dom0, the deploy tests' SSH host) or the
PostgreSQL half of "both databases" must never turn our own failure into a skip where the run is meant to
cover it. ``CORRAL_REQUIRE_LABS=1`` (set by ``.ci/run``) says so: then a missing lab or database fails the
test with the reason. Without it (a developer's machine) the test is skipped with the reason, which
``pytest -rs`` prints.

Use ``unavailable(reason)`` instead of ``pytest.skip(reason)`` wherever the reason is a lab, its agent or
PostgreSQL; ``tests/labs/test_require.py`` keeps it so.
"""

from __future__ import annotations

import os
import warnings
from typing import NoReturn

import pytest

__all__ = ["ENV", "degraded", "required", "unavailable"]

ENV = "CORRAL_REQUIRE_LABS"


def required() -> bool:
    """True when labs and PostgreSQL must be there (``CORRAL_REQUIRE_LABS=1``)."""
    return os.environ.get(ENV, "") == "1"


def unavailable(reason: str) -> NoReturn:
    """Fail (``CORRAL_REQUIRE_LABS=1``) or skip the current test, saying why."""
    if required():
        pytest.fail(f"{reason} ({ENV}=1: labs and PostgreSQL are required)", pytrace=False)
    pytest.skip(reason)


def degraded(reason: str) -> None:
    """A test that can run with less (e.g. SQLite only): fail if required, else warn (shown in the summary)."""
    if required():
        pytest.fail(f"{reason} ({ENV}=1: labs and PostgreSQL are required)", pytrace=False)
    warnings.warn(reason, stacklevel=2)
