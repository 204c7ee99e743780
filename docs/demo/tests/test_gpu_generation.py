"""GPU: the demo's tokenizer driving a HuggingFace GPT-2 on CUDA; skipped with the probe's reason elsewhere.

``huggingface`` is one of the GPU-implying markers (ini ``heavy_gpu_markers``), so pytest-heavy skips
these tests at collection on a machine where NVML sees no GPU: their fixtures never run and torch is
never imported there.
"""

from __future__ import annotations

from typing import Any

import pytest
from tinymodels import CORPUS, CharTokenizer

pytestmark = pytest.mark.huggingface

PROMPT = "the model "


@pytest.fixture(scope="module")
def gpt2() -> tuple[CharTokenizer, Any]:
    """A two-layer GPT-2 with random weights over the demo's character vocabulary (no download)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = CharTokenizer.from_text(CORPUS)
    config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2,
                                     n_head=2)
    torch.manual_seed(0)
    return tokenizer, transformers.GPT2LMHeadModel(config).eval()


def test_cuda_logits_match_cpu(gpt2: tuple[CharTokenizer, Any]) -> None:
    import torch

    tokenizer, model = gpt2
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        cpu = model(ids).logits
        cuda = model.to("cuda")(ids.to("cuda")).logits.cpu()
    torch.testing.assert_close(cuda, cpu, rtol=1e-3, atol=1e-3)


def test_greedy_generation_on_cuda_decodes(gpt2: tuple[CharTokenizer, Any]) -> None:
    import torch

    tokenizer, model = gpt2
    ids = torch.tensor([tokenizer.encode(PROMPT)], device="cuda")
    out = model.to("cuda").generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    do_sample=False, pad_token_id=CharTokenizer.UNK)
    text = tokenizer.decode(out[0].tolist())
    assert text.startswith(PROMPT) and len(text) == len(PROMPT) + 12
