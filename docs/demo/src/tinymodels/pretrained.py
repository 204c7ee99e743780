"""Named "pretrained" models, loaded once per process and kept in a module-level cache.

This is the pattern real model libraries follow (a loader memoized so the second call is free), and the
reason their test suites run out of memory: the cache is never emptied, so a pytest process that loads
three models holds all three until it exits. Each model's weights are ``TINYMODELS_WEIGHTS_MIB`` MiB
(default 1536), generated deterministically from the model's name and written in full, so the resident
memory (RSS) really grows by that much, as it does when a checkpoint is read.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

from .bigram import BigramLM
from .tokenizer import CharTokenizer

WEIGHTS_MIB_ENV = "TINYMODELS_WEIGHTS_MIB"
DEFAULT_WEIGHTS_MIB = 1536
EMBED_DIM = 64

CORPUS = (
    "the model reads the text one character at a time and learns which character tends to follow "
    "which. after the training pass it can continue a prompt, score a sentence, or compare two "
    "strings by their embeddings. the weights are large, the ideas are small, and the tests check "
    "that the answers stay the same from one run to the next. there is no magic here: the counts "
    "are the model, and the model is the counts. when the suite loads three models in one process, "
    "the memory of all three stays until the process ends, which is why heavy tests run apart.\n"
)

_CACHE: dict[str, PretrainedModel] = {}


@dataclass(frozen=True)
class PretrainedModel:
    """A bigram head for generation and scoring plus an embedding table spread over large weights."""

    name: str
    lm: BigramLM
    weights: bytes

    @property
    def tokenizer(self) -> CharTokenizer:
        return self.lm.tokenizer

    def generate(
        self, prompt: str, max_new_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> str:
        return self.lm.generate(prompt, max_new_tokens, temperature, seed)

    def embed(self, text: str) -> list[float]:
        """Mean of the characters' embedding rows, each row read from its own region of the weights."""
        ids = self.tokenizer.encode(text)
        if not ids:
            raise ValueError("embed needs a non-empty text")
        stride = (len(self.weights) - EMBED_DIM) // max(self.tokenizer.vocab_size - 1, 1)
        vector = [0.0] * EMBED_DIM
        for token in ids:
            row = self.weights[token * stride: token * stride + EMBED_DIM]
            for i, byte in enumerate(row):
                vector[i] += (byte - 127.5) / 127.5
        return [v / len(ids) for v in vector]

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the two texts' embeddings, in [-1, 1]."""
        ea, eb = self.embed(a), self.embed(b)
        dot = sum(x * y for x, y in zip(ea, eb, strict=True))
        return dot / (math.hypot(*ea) * math.hypot(*eb))


def weights_mib() -> int:
    raw = os.environ.get(WEIGHTS_MIB_ENV, str(DEFAULT_WEIGHTS_MIB))
    try:
        mib = int(raw)
    except ValueError:
        raise ValueError(f"{WEIGHTS_MIB_ENV}={raw!r}: expected a whole number of MiB") from None
    if mib < 1:
        raise ValueError(f"{WEIGHTS_MIB_ENV}={raw!r}: must be at least 1")
    return mib


def load_pretrained(name: str) -> PretrainedModel:
    """The model called ``name``, built on first use and cached for the life of the process."""
    if name not in _CACHE:
        # SHAKE-128 is a seeded byte stream that writes every page of the buffer: the RSS is real.
        weights = hashlib.shake_128(name.encode()).digest(weights_mib() << 20)
        _CACHE[name] = PretrainedModel(name=name, lm=BigramLM.train(CORPUS), weights=weights)
    return _CACHE[name]
