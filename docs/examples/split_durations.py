# Balance test durations into N subsets, as `pytest --heavy-split i/N` and `pytest-heavy split N` do.
# pytest: timeout=30
"""Runs as a test through pytest-heavy's examples runner; ``timeout=30`` in the header bounds it.

Usage outside pytest: ``python docs/examples/split_durations.py [DURATIONS.json] [N]``, where the file is
what ini ``heavy_durations_path`` names: a JSON object of {node id: seconds}. Without a file, a made-up
suite is split. Every pytest process of a split run computes this same partition and keeps its share.
"""

import sys
from pathlib import Path

from pytest_heavy.records import read_durations
from pytest_heavy.split.durations import partition

SAMPLE = {  # a suite with a few heavy modules and many quick tests
    "test/backends/test_huggingface.py::test_generation": 41.0,
    "test/backends/test_vllm.py::test_engine": 35.0,
    "test/gpu/test_held_weights.py::test_copy": 22.0,
    "docs/examples/hf_generate_cuda.py::example": 18.0,
    **{f"test/test_units.py::test_{i}": 0.5 + (i % 7) for i in range(40)},
}

durations = read_durations(Path(sys.argv[1])) if len(sys.argv) > 1 else SAMPLE
counts = [int(sys.argv[2])] if len(sys.argv) > 2 else [2, 3, 4]
for n in counts:
    subsets = partition(durations, n)
    loads = [sum(durations[t] for t in subset) for subset in subsets]
    shares = (f"{len(subset)} tests {load:.1f} s" for subset, load in zip(subsets, loads, strict=True))
    print(f"{n} subsets: " + ", ".join(shares))
    # Each test in exactly one subset; the longest subset within 4/3 of the best split possible (LPT's bound).
    assert sorted(t for subset in subsets for t in subset) == sorted(durations)
    best_possible = max(sum(durations.values()) / n, max(durations.values(), default=0.0))
    assert max(loads) <= best_possible * 4 / 3 + 1e-9, loads
