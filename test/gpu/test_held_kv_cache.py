"""Held GPU memory, 2 of 3: a block kept like a preallocated KV cache, and float16 work beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Held

pytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]


def test_the_block_keeps_its_contents(held: Held) -> None:
    import torch

    sample = held.block[:: max(1, held.block.numel() // 4096)]
    assert torch.all(sample == held.fill)


def test_float16_work_fits_beside_the_block(held: Held) -> None:
    import torch

    side = held.workspace_bytes // 2  # float16: two bytes an element
    work = torch.ones(side, dtype=torch.float16, device="cuda")
    work.mul_(2)
    assert float(work[:1024].float().sum()) == 2048.0
