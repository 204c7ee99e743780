"""Memory cleanup between tests and modules (CI mode, or heavy_cleanup = always).

What it can free: Python objects kept alive only by reference cycles (``gc.collect()``) and tensors
the caching allocator holds but no longer uses (``torch.cuda.empty_cache()``). What it cannot free:
the CUDA context itself (hundreds of MiB per process), memory still referenced by module globals
or caches, and memory fragmented inside the allocator. Only process exit returns those; that is
what heavy-module isolation is for.

Torch is never imported here: ``empty_cache`` runs only when a test already imported torch and
CUDA is already initialized in this process, so cleanup never creates a CUDA context.
"""

from __future__ import annotations

import gc
import sys


def cuda_initialized() -> bool:
    """Whether this process already holds a CUDA context through torch (without creating one)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # a half-imported or stubbed torch
        return False


def collect() -> None:
    gc.collect()
    if cuda_initialized():
        sys.modules["torch"].cuda.empty_cache()
