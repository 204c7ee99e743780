"""Out-of-memory failures on a GPU, recognized from a child's failure reports.

A child never tells the parent why a test failed beyond its report, so the report is what is read:
the failure text (pytest's serialized ``longrepr``: exception type, message, traceback) is searched
for what PyTorch and the CUDA runtime write when an allocation fails. PyTorch raises
``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` before 2.5) with "CUDA out of memory.
Tried to allocate ..."; the CUDA runtime's error reads "CUDA error: out of memory"; cuBLAS reports
CUBLAS_STATUS_ALLOC_FAILED. A test that only *mentions* these words in a failing assertion would be
re-run once alone, which costs time but never changes an outcome.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED")


def is_oom_failure(event: Mapping[str, Any]) -> bool:
    """Whether a child's ``report`` event is a failure caused by running out of GPU memory."""
    if event.get("event") != "report":
        return False
    data = event.get("data", {})
    return data.get("outcome") == "failed" and OOM.search(json.dumps(data.get("longrepr"))) is not None
