"""vLLM's offline engine (``vllm.LLM``, no server) on the tiny local model: generation, sampling, scoring.

Marked ``vllm``: gated away with the reason where there is no GPU or no vllm package, and isolated in a
process of its own where it runs, since the engine holds a share of the GPU and an EngineCore process
that only the process's exit reliably gives back. vllm is imported in the fixture and tests only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import TinyLM

pytestmark = pytest.mark.vllm

PROMPTS = ["The weather in Paris is", "A tiny model", "Tests load the model from a directory and"]


def params(**kwargs: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


def completion(engine: Any, prompt: Any, sampling: Any) -> Any:
    """The one completion of one prompt."""
    [request] = engine.generate(prompt, sampling, use_tqdm=False)
    [out] = request.outputs
    return out


@pytest.mark.qualitative
def test_greedy_generation_is_deterministic_and_bounded(vllm_engine: Any, tiny_lm: TinyLM) -> None:
    prompt = {"prompt_token_ids": tiny_lm.reference_ids}
    greedy = params(temperature=0.0, max_tokens=12, ignore_eos=True)
    first = completion(vllm_engine, prompt, greedy)
    assert list(completion(vllm_engine, prompt, greedy).token_ids) == list(first.token_ids)
    assert len(first.token_ids) == 12 and first.finish_reason == "length"


@pytest.mark.qualitative
def test_generation_stops_at_a_stop_token(vllm_engine: Any, tiny_lm: TinyLM) -> None:
    prompt = {"prompt_token_ids": tiny_lm.reference_ids}
    [first_token] = completion(vllm_engine, prompt, params(temperature=0.0, max_tokens=1)).token_ids
    stop = params(temperature=0.0, max_tokens=10, stop_token_ids=[first_token])
    stopped = completion(vllm_engine, prompt, stop)
    assert list(stopped.token_ids) == [first_token] and stopped.finish_reason == "stop"


@pytest.mark.qualitative
def test_a_seed_reproduces_a_sample(vllm_engine: Any, tiny_lm: TinyLM) -> None:
    prompt = {"prompt_token_ids": tiny_lm.reference_ids}

    def sample(seed: int) -> list[int]:
        sampling = params(temperature=1.0, seed=seed, max_tokens=16, ignore_eos=True)
        return list(completion(vllm_engine, prompt, sampling).token_ids)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_a_batch_with_several_samples_each(vllm_engine: Any, hf_tokenizer: Any) -> None:
    """Text prompts are tokenized as transformers does; n=3 gives three completions per prompt."""
    sampling = params(n=3, temperature=1.0, seed=0, max_tokens=5, ignore_eos=True)
    requests = vllm_engine.generate(PROMPTS, sampling, use_tqdm=False)
    assert [r.prompt for r in requests] == PROMPTS
    assert [list(r.prompt_token_ids) for r in requests] == [hf_tokenizer(p)["input_ids"] for p in PROMPTS]
    assert [[len(c.token_ids) for c in r.outputs] for r in requests] == [[5, 5, 5]] * len(PROMPTS)


def test_prompt_logprobs_match_what_transformers_computed(vllm_engine: Any, tiny_lm: TinyLM) -> None:
    """The engine's float16 scoring of the prompt tracks the float32 logits saved with the model."""
    import torch

    ids = tiny_lm.reference_ids
    [request] = vllm_engine.generate({"prompt_token_ids": ids}, params(max_tokens=1, prompt_logprobs=1),
                                     use_tqdm=False)
    expected = torch.log_softmax(tiny_lm.reference_logits[0], dim=-1)
    assert request.prompt_logprobs[0] is None  # nothing predicts the first token
    got = [request.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))]
    want = [expected[i - 1, ids[i]].item() for i in range(1, len(ids))]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=0.05)
