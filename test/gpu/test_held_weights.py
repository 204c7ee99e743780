"""Held GPU memory, 1 of 3: a block kept like cached model weights, and a copy of half of it beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Held

pytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]


def test_the_block_is_resident_and_counted(held: Held) -> None:
    import torch

    assert held.block.is_cuda
    assert torch.cuda.memory_allocated() >= held.block.numel()


def test_a_copy_of_half_the_block_fits_beside_it(held: Held) -> None:
    copy = held.block[: held.workspace_bytes].clone()
    assert int(copy[:4096].sum()) == held.fill * 4096
