# Load a pretrained model (about 1.5 GiB) and rank sentences by similarity to a query.
# pytest: requires_heavy_ram
"""Runs as a test through pytest-heavy's examples runner, gated like a test by the marker above."""

import sys
from pathlib import Path

# The demo library is not installed; a user's examples would import their installed package instead.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tinymodels import load_pretrained  # noqa: E402

model = load_pretrained("tiny-embed")
query = "the weights are large"
sentences = ["the weights are small", "counts are the model", "zzz qqq xxx"]
for score, sentence in sorted(((model.similarity(query, s), s) for s in sentences), reverse=True):
    print(f"{score:+.3f}  {sentence}")
