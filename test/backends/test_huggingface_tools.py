"""transformers tool calling on the tiny local model: chat template with tools, chat generation, call parsing.

A random model never chooses to call a tool, so the call is forced token by token
(``prefix_allowed_tokens_fn``), as constrained decoding forces one; what is tested is everything around
it: the tool's schema in the prompt, the stop at ``</tool_call>``, parsing, running the tool, and its
result fed back into the next turn. CPU-safe (CUDA when visible), except the half-precision test, which
carries ``huggingface`` (GPU). The module is ``requires_heavy_ram`` like every model-loading module.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tool_calls import PARIS, QUESTION, call_text, get_weather, parse_tool_calls, run_tool_call

pytestmark = pytest.mark.requires_heavy_ram


def chat_text(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    return tokenizer.apply_chat_template(messages, tools=[get_weather], tokenize=False,
                                         add_generation_prompt=True)


def chat_batch(tokenizer: Any, messages: list[dict[str, Any]], device: Any) -> Any:
    """The generation prompt for ``messages`` with the weather tool offered, as tensors on ``device``."""
    return tokenizer.apply_chat_template(messages, tools=[get_weather], add_generation_prompt=True,
                                         return_dict=True, return_tensors="pt").to(device)


def forced_call(model: Any, tokenizer: Any, messages: list[dict[str, Any]], call: str) -> str:
    """Generate with ``call`` forced token by token, free tokens after it, and ``</tool_call>`` as a stop.

    Returns the decoded new text: the call alone when the stop string works, since up to ten free tokens
    would follow it otherwise.
    """
    batch = chat_batch(tokenizer, messages, model.device)
    prompt_len = batch["input_ids"].shape[1]
    forced = tokenizer.encode(call, add_special_tokens=False)
    anything = list(range(len(tokenizer)))

    def allowed(_batch_id: int, ids: Any) -> list[int]:
        step = ids.shape[-1] - prompt_len
        return [forced[step]] if step < len(forced) else anything

    out = model.generate(**batch, do_sample=False, max_new_tokens=len(forced) + 10,
                         prefix_allowed_tokens_fn=allowed, stop_strings=["</tool_call>"], tokenizer=tokenizer)
    return tokenizer.decode(out[0, prompt_len:])


def test_tools_render_as_the_json_schema_transformers_derives(hf_tokenizer: Any) -> None:
    from transformers.utils import get_json_schema

    text = chat_text(hf_tokenizer, QUESTION)
    tools_block = text.split("<tools>\n", 1)[1].split("</tools>", 1)[0]
    schema = get_json_schema(get_weather)
    assert [json.loads(line) for line in tools_block.splitlines()] == [schema]
    assert schema["function"]["parameters"]["required"] == ["city"]  # from the signature: unit has a default
    assert text.endswith("<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n")


def test_generation_continues_the_chat_prompt(hf_model: Any, hf_tokenizer: Any) -> None:
    text = chat_text(hf_tokenizer, QUESTION)
    batch = chat_batch(hf_tokenizer, QUESTION, hf_model.device)
    assert batch["input_ids"][0].tolist() == hf_tokenizer.encode(text, add_special_tokens=False)
    out = hf_model.generate(**batch, do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert out.shape[1] == batch["input_ids"].shape[1] + 8
    assert hf_tokenizer.decode(out[0]).startswith(text)


@pytest.mark.qualitative
def test_a_forced_tool_call_stops_at_its_end_and_parses(hf_model: Any, hf_tokenizer: Any) -> None:
    new_text = forced_call(hf_model, hf_tokenizer, QUESTION, call_text(**PARIS))
    assert new_text == call_text(**PARIS)
    assert parse_tool_calls(new_text) == [PARIS]


def test_the_tool_result_feeds_the_next_turn(hf_model: Any, hf_tokenizer: Any) -> None:
    """One agent step: generate a call, parse it, run the tool, and generate with its result in the prompt."""
    [call] = parse_tool_calls(forced_call(hf_model, hf_tokenizer, QUESTION, call_text(**PARIS)))
    result = run_tool_call(call)
    messages = [*QUESTION, {"role": "assistant", "tool_calls": [{"type": "function", "function": call}]},
                {"role": "tool", "name": call["name"], "content": result}]
    batch = chat_batch(hf_tokenizer, messages, hf_model.device)
    prompt = hf_tokenizer.decode(batch["input_ids"][0])
    assistant_turn = prompt.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    assert parse_tool_calls(assistant_turn) == [PARIS]
    assert f"<|im_start|>tool\n<tool_response>{result}</tool_response><|im_end|>\n" in prompt
    out = hf_model.generate(**batch, do_sample=False, max_new_tokens=4, min_new_tokens=4)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4


@pytest.mark.huggingface
def test_a_forced_tool_call_in_half_precision_on_cuda(tiny_lm: Any, hf_tokenizer: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm.path, local_files_only=True, dtype=torch.float16)
    new_text = forced_call(model.to("cuda").eval(), hf_tokenizer, QUESTION, call_text(**PARIS))
    assert parse_tool_calls(new_text) == [PARIS]
