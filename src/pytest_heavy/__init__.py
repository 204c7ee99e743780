"""pytest-heavy: isolate heavy test modules, gate tests on hardware, run examples as tests.

PYTEST_DONT_REWRITE: isolated children import this package before pytest configures its assertion
rewriting, and pytest would warn that it cannot rewrite it (an error under ``-W error``).
"""
