"""Memory attribution: which test holds the memory, and how much.

``sampler`` measures the process that runs the tests (an isolated child, or the pytest process when
asked) at each test's boundaries; ``plugin`` carries the figures to the parent on the teardown report,
enforces ``heavy_limit_memory`` and writes them into ``--heavy-report``; ``leaks`` is
``--heavy-find-leaks`` (its hooks), ``leakgraph`` its object-graph search for who holds the memory;
``html`` is ``--heavy-report-html``.
"""
