"""Hypothesis profiles of the domain tests: modest by default (virt-xml-validate is a subprocess).

``HYPOTHESIS_PROFILE=thorough`` runs many more examples when hunting bugs. No example database is written:
these tests write nothing outside pytest's temporary directories.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=40, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
