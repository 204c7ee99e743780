"""A slow test: deselected by default, run with ``pytest -m slow`` or ``--heavy-run-slow``."""

import pytest
from tinymodels import CORPUS, BigramLM


@pytest.mark.slow
def test_more_of_the_same_data_sharpens_but_does_not_change_the_model() -> None:
    small = BigramLM.train(CORPUS)
    large = BigramLM.train(CORPUS * 20000)
    assert large.perplexity(CORPUS) < small.perplexity(CORPUS)
    assert large.generate("the ", 40) == small.generate("the ", 40)
