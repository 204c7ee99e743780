"""Fast unit tests: the bigram model's arithmetic, checked on texts small enough to count by hand."""

import math

import pytest
from tinymodels import BigramLM, CharTokenizer


def test_probabilities_are_smoothed_and_sum_to_one() -> None:
    lm = BigramLM.train("abab")
    row = lm.probs(lm.tokenizer.encode("a")[0])
    assert math.isclose(sum(row), 1.0)
    assert min(row) > 0


def test_counts_follow_the_text() -> None:
    tok = CharTokenizer("ab")
    lm = BigramLM.train("aab", tok)
    a, b = tok.encode("ab")
    assert lm.counts[a][a] == 1 and lm.counts[a][b] == 1 and lm.counts[b] == [0, 0, 0]


def test_greedy_generation_follows_the_most_frequent_pair() -> None:
    assert BigramLM.train("abababab").generate("a", 4) == "ababa"


def test_perplexity_of_an_untrained_model_is_the_vocabulary_size() -> None:
    lm = BigramLM(CharTokenizer("abc"))
    assert math.isclose(lm.perplexity("abcabc"), lm.tokenizer.vocab_size)


@pytest.mark.parametrize("text", ["", "a"])
def test_perplexity_needs_a_pair(text: str) -> None:
    with pytest.raises(ValueError, match="two characters"):
        BigramLM.train("ab").perplexity(text)
