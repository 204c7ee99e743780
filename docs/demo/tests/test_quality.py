"""Qualitative tests: does the trained model prefer English to noise? Skipped in CI (CICD=1)."""

import random

import pytest
from tinymodels import CORPUS, BigramLM

pytestmark = pytest.mark.qualitative


def test_english_scores_better_than_the_same_characters_shuffled() -> None:
    lm = BigramLM.train(CORPUS)
    sentence = "the tests check the counts of the text"
    chars = list(sentence)
    random.Random(0).shuffle(chars)
    assert lm.perplexity(sentence) < 0.7 * lm.perplexity("".join(chars))


def test_greedy_completion_finds_the_most_common_word() -> None:
    assert BigramLM.train(CORPUS).generate("th", 2) == "the "
