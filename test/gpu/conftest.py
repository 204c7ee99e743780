"""GPU modules that each keep a large CUDA allocation for the rest of the process, as a model cache does.

Each module holds ``HEAVY_TEST_GPU_FRACTION`` (default 0.3) of the GPU's total memory from its first test
on, in a process-wide cache that is never emptied (the leak a module-level ``load_model()`` cache is),
and its tests need a workspace of half that beside it. In one process the third module asks for
3 x 0.3 held + 0.15 workspace of the GPU and runs out of memory; isolated (``requires_gpu_isolation``),
each child needs 0.45 and gives it back at exit. torch is imported, and CUDA touched, in fixtures only:
collecting these modules in the pytest parent creates no CUDA context.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

import pytest

FRACTION_ENV = "HEAVY_TEST_GPU_FRACTION"
DEFAULT_FRACTION = 0.3

_HELD: dict[str, Any] = {}  # module name -> its block; process-wide and never emptied, on purpose


def held_fraction() -> float:
    raw = os.environ.get(FRACTION_ENV, str(DEFAULT_FRACTION))
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < 1:
        pytest.fail(f"{FRACTION_ENV}={raw!r}: expected a fraction of the GPU's memory, between 0 and 1",
                    pytrace=False)
    return value


@dataclass(frozen=True)
class Held:
    """A module's block (uint8 on the GPU, every byte ``fill``) and the memory its tests may add beside it."""

    block: Any  # torch.Tensor
    fill: int
    workspace_bytes: int


@pytest.fixture(scope="module")
def held(request: pytest.FixtureRequest) -> Held:
    torch = pytest.importorskip("torch")
    name = request.module.__name__
    fill = zlib.crc32(name.encode()) % 255 + 1  # differs between modules, so a mixed-up block shows
    if name not in _HELD:
        _free, total = torch.cuda.mem_get_info()
        _HELD[name] = torch.full((int(total * held_fraction()),), fill, dtype=torch.uint8, device="cuda")
    block = _HELD[name]
    return Held(block=block, fill=fill, workspace_bytes=block.numel() // 2)
