"""Heavy: generation with a pretrained model of about 1.5 GiB, kept in the library's cache."""

import pytest
from tinymodels import PretrainedModel

pytestmark = pytest.mark.requires_heavy_ram

MODEL_NAME = "tiny-chat"


def test_greedy_generation_is_deterministic(model: PretrainedModel) -> None:
    assert model.generate("the ", 30) == model.generate("the ", 30)


def test_generation_adds_exactly_max_new_tokens(model: PretrainedModel) -> None:
    assert len(model.generate("the ", 25)) == len("the ") + 25


def test_a_seed_reproduces_a_sample(model: PretrainedModel) -> None:
    first = model.generate("the ", 30, temperature=1.0, seed=7)
    assert model.generate("the ", 30, temperature=1.0, seed=7) == first
    assert model.generate("the ", 30, temperature=1.0, seed=8) != first
