"""The tool both backends are asked to call, and the reader of the calls the conftest's chat template writes.

A helper module (not a conftest, not collected): tests import it by name, since pytest puts this directory
on ``sys.path`` for the test modules beside it, in the parent and in isolated children alike.
"""

from __future__ import annotations

import json
import re
from typing import Any

CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}  # the call the tests expect, parsed


def get_weather(city: str, unit: str = "celsius") -> str:
    """
    Get the current weather in a city.

    Args:
        city: The city to look up.
        unit: The temperature unit, celsius or fahrenheit.
    """
    # transformers builds the tool's JSON schema from the signature and the docstring above.
    return json.dumps({"city": city, "temperature": 21, "unit": unit})


TOOLS = {"get_weather": get_weather}


def tool_schemas() -> list[dict[str, Any]]:
    """The tools as OpenAI-style JSON schemas (vLLM's ``chat(tools=...)``), derived by transformers."""
    from transformers.utils import get_json_schema

    return [get_json_schema(tool) for tool in TOOLS.values()]


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """One call exactly as the chat template renders it (Jinja's ``tojson`` is ``json.dumps``)."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Every call in ``text`` as ``{"name", "arguments"}``, the arguments decoded to a dict.

    OpenAI-style messages carry the arguments as a JSON string, and some renderers keep it a string
    inside the call: both forms read the same here.
    """
    calls = []
    for body in CALL_RE.findall(text):
        call = json.loads(body)
        if isinstance(call.get("arguments"), str):
            call["arguments"] = json.loads(call["arguments"])
        calls.append(call)
    return calls


def run_tool_call(call: dict[str, Any]) -> str:
    """What the application does with a parsed call: run the named tool on its arguments."""
    return TOOLS[call["name"]](**call["arguments"])
