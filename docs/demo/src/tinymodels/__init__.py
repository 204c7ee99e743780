"""tinymodels: the sample model library of pytest-heavy's demo (pure Python, no torch).

It stands in for a user's own package: a tokenizer and a language model that unit tests can check in
milliseconds, and named pretrained models whose loads are large and cached, as real ones are.
"""

from .bigram import BigramLM
from .pretrained import CORPUS, PretrainedModel, load_pretrained
from .tokenizer import CharTokenizer

__all__ = ["CORPUS", "BigramLM", "CharTokenizer", "PretrainedModel", "load_pretrained"]
