"""vLLM tool calling on the tiny local model: ``LLM.chat`` with tools, a tool round trip, a forced call.

Same gating and isolation as test_vllm.py (``vllm``). The chat prompt the engine builds is compared with
the one transformers builds from the same template, and a call is forced by structured output (the
mechanism behind a server's ``tool_choice="required"``), since a random model never chooses one itself.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tool_calls import PARIS, QUESTION, call_text, parse_tool_calls, run_tool_call, tool_schemas

pytestmark = pytest.mark.vllm


def params(**kwargs: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


def choice_among(texts: list[str]) -> dict[str, Any]:
    """The sampling-parameter keyword that limits the output to one of ``texts``, in the installed vLLM.

    vLLM 0.11 renamed guided decoding to structured outputs; both spellings are in use.
    """
    from vllm import sampling_params

    if hasattr(sampling_params, "StructuredOutputsParams"):
        return {"structured_outputs": sampling_params.StructuredOutputsParams(choice=texts)}
    return {"guided_decoding": sampling_params.GuidedDecodingParams(choice=texts)}


def chat(engine: Any, messages: list[dict[str, Any]], sampling: Any) -> Any:
    [request] = engine.chat(messages, sampling, tools=tool_schemas(), use_tqdm=False)
    return request


def test_chat_renders_the_tools_as_transformers_does(vllm_engine: Any, hf_tokenizer: Any) -> None:
    request = chat(vllm_engine, QUESTION, params(temperature=0.0, max_tokens=4))
    text = hf_tokenizer.apply_chat_template(QUESTION, tools=tool_schemas(), tokenize=False,
                                            add_generation_prompt=True)
    assert list(request.prompt_token_ids) == hf_tokenizer.encode(text, add_special_tokens=False)
    assert len(request.outputs[0].token_ids) <= 4


def test_a_tool_round_trip_reaches_the_engine(vllm_engine: Any, hf_tokenizer: Any) -> None:
    """OpenAI-style history (arguments as a JSON string, a tool_call_id) renders into the engine's prompt."""
    result = run_tool_call(PARIS)
    call = {"id": "call_0", "type": "function",
            "function": {"name": PARIS["name"], "arguments": json.dumps(PARIS["arguments"])}}
    messages = [*QUESTION, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_0", "content": result}]
    request = chat(vllm_engine, messages, params(temperature=0.0, max_tokens=4))
    prompt = hf_tokenizer.decode(request.prompt_token_ids)
    assistant_turn = prompt.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    assert parse_tool_calls(assistant_turn) == [PARIS]
    assert f"<|im_start|>tool\n<tool_response>{result}</tool_response><|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.qualitative
def test_a_forced_tool_call_is_generated_parsed_and_run(vllm_engine: Any) -> None:
    calls = [call_text("get_weather", {"city": city}) for city in ("Paris", "Tokyo")]
    request = chat(vllm_engine, QUESTION, params(temperature=0.0, max_tokens=128, **choice_among(calls)))
    text = request.outputs[0].text
    assert text in calls
    [call] = parse_tool_calls(text)
    assert json.loads(run_tool_call(call))["city"] == call["arguments"]["city"]
