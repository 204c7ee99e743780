"""The start methods the isolation tests run under: one definition for every test module.

The template is what ``auto`` starts children from and fork its first fallback: tests run under both in
the default tier. Spawn, the last fallback, starts a second interpreter and imports pytest again for
every child (about a second each on a 2-core machine), so ``PARAMS`` runs its cells in the slow tier
(``make test-slow``, which CI runs as well); ``METHODS`` keeps all three where a test must see spawn
in the default tier (the main parity test, what spawn alone does).
"""

import pytest

METHODS = ["spawn", "fork", "template"]
SLOW = {"spawn"}  # the methods whose cells run in the slow tier


def marks(method: str, slow: bool = False) -> list[pytest.MarkDecorator]:
    """The marks of a cell run under ``method``: slow for spawn, or where the test says ``slow``."""
    return [pytest.mark.slow] if slow or method in SLOW else []


PARAMS = [pytest.param(m, marks=marks(m), id=m) for m in METHODS]
