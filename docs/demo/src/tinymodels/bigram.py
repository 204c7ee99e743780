"""A character bigram language model: trains in milliseconds, yet generates and scores like a real one."""

from __future__ import annotations

import math
import random
from itertools import pairwise

from .tokenizer import CharTokenizer


class BigramLM:
    """Next-character counts with add-one smoothing, so unseen pairs keep a small, finite probability."""

    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer
        size = tokenizer.vocab_size
        self.counts = [[0] * size for _ in range(size)]

    @classmethod
    def train(cls, text: str, tokenizer: CharTokenizer | None = None) -> BigramLM:
        """A model over ``text``'s characters (or ``tokenizer``'s), fitted on ``text``."""
        return cls(tokenizer or CharTokenizer.from_text(text)).fit(text)

    def fit(self, text: str) -> BigramLM:
        """Add the pairs of ``text`` to the counts; returns self so training reads as one expression."""
        ids = self.tokenizer.encode(text)
        for prev, nxt in pairwise(ids):
            self.counts[prev][nxt] += 1
        return self

    def probs(self, token: int) -> list[float]:
        """P(next | token) over the whole vocabulary."""
        row = self.counts[token]
        total = sum(row) + len(row)
        return [(c + 1) / total for c in row]

    def perplexity(self, text: str) -> float:
        """exp of the mean negative log-likelihood per predicted character; lower means more familiar text."""
        ids = self.tokenizer.encode(text)
        if len(ids) < 2:
            raise ValueError("perplexity needs at least two characters")
        nll = -sum(math.log(self.probs(prev)[nxt]) for prev, nxt in pairwise(ids))
        return math.exp(nll / (len(ids) - 1))

    def generate(
        self, prompt: str, max_new_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> str:
        """``prompt`` continued by up to ``max_new_tokens`` characters.

        Temperature 0 is greedy (deterministic); above 0 samples from the tempered distribution with
        its own ``random.Random(seed)``, so a seed reproduces a sample without touching global state.
        """
        if not prompt:
            raise ValueError("generate needs a non-empty prompt")
        rng = random.Random(seed)
        ids = self.tokenizer.encode(prompt)
        for _ in range(max_new_tokens):
            p = self.probs(ids[-1])
            if temperature == 0:
                ids.append(max(range(len(p)), key=p.__getitem__))
            else:
                weights = [q ** (1 / temperature) for q in p]
                ids.append(rng.choices(range(len(p)), weights=weights)[0])
        return self.tokenizer.decode(ids)
