"""Heavy: scoring with a pretrained model of about 1.5 GiB, kept in the library's cache."""

import psutil
import pytest
from tinymodels import PretrainedModel

pytestmark = pytest.mark.requires_heavy_ram

MODEL_NAME = "tiny-scorer"


def test_the_weights_are_resident(model: PretrainedModel) -> None:
    """The memory is real, not a reservation: this process's RSS covers the whole model."""
    assert psutil.Process().memory_info().rss >= len(model.weights)


def test_familiar_text_scores_better_than_noise(model: PretrainedModel) -> None:
    assert model.lm.perplexity("the counts are the model") < model.lm.perplexity("zqxj vkwp yfgb")


def test_candidates_rank_by_perplexity(model: PretrainedModel) -> None:
    candidates = ["qqqq zzzz", "the tests", "tte hest"]
    ranked = sorted(candidates, key=model.lm.perplexity)
    assert ranked[0] == "the tests" and ranked[-1] == "qqqq zzzz"
