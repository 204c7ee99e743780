"""Held GPU memory, 3 of 3: a block kept like cached activations, and a reduction over a workspace."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Held

pytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]


def test_this_process_sees_the_block_in_the_drivers_numbers(held: Held) -> None:
    import torch

    free, total = torch.cuda.mem_get_info()
    assert total - free >= held.block.numel()


def test_a_workspace_reduction_beside_the_block(held: Held) -> None:
    import torch

    work = torch.zeros(held.workspace_bytes, dtype=torch.uint8, device="cuda")
    work[:1024] = held.block[:1024]
    assert int(work.sum(dtype=torch.int64)) == held.fill * 1024
