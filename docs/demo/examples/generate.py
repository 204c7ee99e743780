# Train the bigram model on the built-in corpus and continue a prompt.
# pytest:
"""Runs as a test through pytest-heavy's examples runner (the header above); exit status 0 is a pass."""

import sys
from pathlib import Path

# The demo library is not installed; a user's examples would import their installed package instead.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tinymodels import CORPUS, BigramLM  # noqa: E402

lm = BigramLM.train(CORPUS)
text = lm.generate("the ", 60, temperature=0.7, seed=3)
print(text)
print(f"perplexity on the corpus: {lm.perplexity(CORPUS):.2f}")
