"""Heavy: embeddings read from a pretrained model of about 1.5 GiB, kept in the library's cache."""

import math

import pytest
from tinymodels import PretrainedModel
from tinymodels.pretrained import EMBED_DIM

pytestmark = pytest.mark.requires_heavy_ram

MODEL_NAME = "tiny-embed"


def test_embedding_has_the_model_dimension(model: PretrainedModel) -> None:
    assert len(model.embed("counts")) == EMBED_DIM


def test_a_text_is_most_similar_to_itself(model: PretrainedModel) -> None:
    assert math.isclose(model.similarity("the model", "the model"), 1.0)


def test_near_duplicates_are_closer_than_unrelated_text(model: PretrainedModel) -> None:
    assert model.similarity("the weights", "the weight") > model.similarity("the weights", "xyz?!")
