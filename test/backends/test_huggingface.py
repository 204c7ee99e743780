"""transformers on the tiny local model: loading, generation, batching and sampling.

The module is ``requires_heavy_ram`` (isolated in its own process, like any model-loading module); its
tests run on CPU in CI and on CUDA where a GPU is visible. Only the half-precision test needs a GPU and
carries ``huggingface``, a GPU-implying marker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import TinyLM

pytestmark = pytest.mark.requires_heavy_ram

PROMPTS = ["The weather in Paris is", "A tiny model", "Tests load the model from a directory and"]


def greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 8,
           **kwargs: Any) -> list[list[int]]:
    """The new token ids of a left-padded greedy batch, one list per prompt."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def test_tokenizer_loads_back_with_its_vocabulary_and_template(tiny_lm: TinyLM, hf_tokenizer: Any,
                                                               hf_model: Any) -> None:
    assert len(hf_tokenizer) == hf_model.config.vocab_size
    assert hf_tokenizer.chat_template and "<tool_call>" in hf_tokenizer.chat_template
    text = 'Grüße aus 東京! <tool_call>{"a": 1}</tool_call>'
    assert hf_tokenizer.decode(hf_tokenizer(text)["input_ids"]) == text
    assert len(hf_tokenizer("<tool_call><|im_end|>")["input_ids"]) == 2


def test_loaded_weights_compute_what_was_saved(tiny_lm: TinyLM, hf_model: Any) -> None:
    import torch

    with torch.no_grad():
        logits = hf_model(torch.tensor([tiny_lm.reference_ids], device=hf_model.device)).logits
    torch.testing.assert_close(logits.cpu(), tiny_lm.reference_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.qualitative
def test_greedy_generation_is_deterministic_and_bounded(tiny_lm: TinyLM, hf_model: Any,
                                                        hf_tokenizer: Any) -> None:
    first = greedy(hf_model, hf_tokenizer, [tiny_lm.prompt], max_new_tokens=12, min_new_tokens=12)
    assert greedy(hf_model, hf_tokenizer, [tiny_lm.prompt], max_new_tokens=12, min_new_tokens=12) == first
    assert len(first[0]) == 12


@pytest.mark.qualitative
def test_generation_stops_at_the_eos_token(tiny_lm: TinyLM, hf_model: Any, hf_tokenizer: Any) -> None:
    [[first_token]] = greedy(hf_model, hf_tokenizer, [tiny_lm.prompt], max_new_tokens=1)
    [new] = greedy(hf_model, hf_tokenizer, [tiny_lm.prompt], max_new_tokens=10, eos_token_id=first_token)
    assert new == [first_token]


@pytest.mark.qualitative
def test_batched_generation_matches_one_prompt_at_a_time(hf_model: Any, hf_tokenizer: Any) -> None:
    """Left padding plus the attention mask must leave every row's greedy continuation unchanged."""
    batched = greedy(hf_model, hf_tokenizer, PROMPTS, min_new_tokens=8)
    assert batched == [greedy(hf_model, hf_tokenizer, [p], min_new_tokens=8)[0] for p in PROMPTS]


@pytest.mark.qualitative
def test_a_seed_reproduces_a_sample(tiny_lm: TinyLM, hf_model: Any, hf_tokenizer: Any) -> None:
    import torch

    batch = hf_tokenizer([tiny_lm.prompt], return_tensors="pt").to(hf_model.device)

    def sample(seed: int) -> list[int]:
        torch.manual_seed(seed)
        out = hf_model.generate(**batch, do_sample=True, top_k=0, max_new_tokens=16, min_new_tokens=16)
        return out[0].tolist()

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


@pytest.mark.huggingface
def test_half_precision_on_cuda_tracks_float32(tiny_lm: TinyLM) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm.path, local_files_only=True, dtype=torch.float16)
    with torch.no_grad():
        logits = model.to("cuda")(torch.tensor([tiny_lm.reference_ids], device="cuda")).logits
    assert logits.dtype == torch.float16
    torch.testing.assert_close(logits.float().cpu(), tiny_lm.reference_logits, rtol=1e-2, atol=1e-2)
