"""A tiny causal LM built at fixture time and saved to disk, so the backends load it as they would a real one.

No hub, no download: a byte-level BPE tokenizer is trained on a few sentences in code, a two-layer Llama
with random (seeded) weights is built from a config, and both are written with ``save_pretrained``. Tests
then go through the real loading path (``from_pretrained`` or ``vllm.LLM``) on that directory.

torch and transformers are imported inside the fixtures, never at collection: without them the tests skip
with the reason, and tests gated away (no GPU, no vllm) never import them at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# ChatML turns with Hermes-style tool calls: the layout most open chat models use.
CHAT_TEMPLATE = r"""
{%- if tools %}
{{- "<|im_start|>system\nYou may call these tools:\n<tools>\n" }}
{%- for tool in tools %}
{{- tool | tojson }}{{ "\n" }}
{%- endfor %}
{{- "</tools>\nCall one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.<|im_end|>\n" }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}
{{- "<|im_start|>assistant\n" }}
{%- for call in message.tool_calls %}
{{- "<tool_call>" }}{{ {"name": call.function.name, "arguments": call.function.arguments} | tojson }}
{{- "</tool_call>\n" }}
{%- endfor %}
{{- "<|im_end|>\n" }}
{%- elif message.role == "tool" %}
{{- "<|im_start|>tool\n<tool_response>" + message.content + "</tool_response><|im_end|>\n" }}
{%- else %}
{{- "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n" }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- "<|im_start|>assistant\n" }}
{%- endif %}
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]
TRAINING_TEXT = [
    "The weather in Paris is sunny today, and the weather in Tokyo is rainy.",
    "A tiny model answers questions about the weather in a city.",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "You may call these tools: get_weather returns the current weather in a city.",
    "Tests load the model from a directory, generate a few tokens and check the shapes.",
]
REFERENCE_PROMPT = "The weather in Paris is"


@dataclass(frozen=True)
class TinyLM:
    """Where the saved model lives, and what it computed on ``prompt`` before saving (to check copies)."""

    path: Path
    prompt: str
    reference_ids: list[int]
    reference_logits: Any  # torch.Tensor [1, len(reference_ids), vocab], float32, on CPU


def build_tokenizer() -> Any:
    """A byte-level BPE tokenizer (any text encodes, decoding is exact) wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(TRAINING_TEXT, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|pad|>",
                                        unk_token="<|endoftext|>")
    tokenizer.add_tokens(TOOL_TOKENS)  # plain added tokens: one id each, kept when decoding
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: Any) -> Any:
    """Two Llama layers, hidden 64, head_dim 32 (a size every attention kernel supports), seeded weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", autouse=True)
def offline_hub() -> Iterator[None]:
    """Nothing here may reach the hub; HF_HUB_OFFLINE makes an accidental download fail fast instead."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> TinyLM:
    """The tiny model and tokenizer, saved with ``save_pretrained`` into a fresh directory per module."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    path = tmp_path_factory.mktemp("tiny-lm")
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    ids = tokenizer(REFERENCE_PROMPT)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    return TinyLM(path=path, prompt=REFERENCE_PROMPT, reference_ids=ids, reference_logits=logits)


@pytest.fixture(scope="module")
def device() -> str:
    """CUDA when this process sees a GPU, else CPU: the CPU-safe tests run on either."""
    torch = pytest.importorskip("torch")
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_lm: TinyLM) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm.path, local_files_only=True)


@pytest.fixture(scope="module")
def hf_model(tiny_lm: TinyLM, device: str) -> Any:
    """The saved model loaded back once per module, in float32 on ``device``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_lm.path, local_files_only=True).to(device).eval()


@pytest.fixture(scope="module")
def vllm_engine(tiny_lm: TinyLM) -> Any:
    """``vllm.LLM`` on the saved model, built once per module in this process (a ``vllm`` module: isolated).

    float16, since not every vLLM attention backend has a float32 path; eager mode, since CUDA graph
    capture and compilation would take longer than the tests; a short context and a fifth of the GPU;
    no prefix caching, which some vLLM versions refuse together with prompt logprobs. The engine and its
    EngineCore process go away with the isolated child (vLLM's exit hooks, then pytest-heavy's leftover
    check).
    """
    vllm = pytest.importorskip("vllm")
    return vllm.LLM(model=str(tiny_lm.path), dtype="float16", seed=0, max_model_len=512, enforce_eager=True,
                    gpu_memory_utilization=0.2, enable_prefix_caching=False)
