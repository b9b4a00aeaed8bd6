"""Typed conversion (models/conversion.py): the contract's types survive the wire unchanged, and
data of the wrong shape is refused with the field named, never guessed at."""

from __future__ import annotations

import msgpack
import pytest

from fimble.models import wire
from fimble.models.conversion import ConversionError, structure, unstructure
from fimble.models.generation import (
    BlockEnd,
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    GenerationStats,
    ModelInfo,
    StopRules,
)
from fimble.models.spec import Role

REQUEST = GenerationRequest(
    Role.MULTI_LINE,
    160,
    (151659, 750, 6888),
    "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n<|fim_middle|>",
    (ChatMessage("system", "You are Fimble."), ChatMessage("user", "Explain f")),
    StopRules((151643, 151664), ("\n",), True, BlockEnd("\n    ", 4, "    return y")),
)
RESULT = GenerationResult(
    "    return x", "stop_string", GenerationStats(40, 32, 5, 0.12, 18.5, 0.4), (470, 856), (-0.1, -0.02), None
)


@pytest.mark.parametrize("value", [REQUEST, RESULT, GenerationChunk("ab"), ModelInfo("m", "qwen2.5-coder", 4096, warnings=("w",))])
def test_the_contract_survives_msgpack_unchanged(value):
    data = msgpack.unpackb(msgpack.packb(unstructure(value), use_bin_type=True), raw=False)
    assert structure(data, type(value)) == value


def test_a_request_frame_round_trips_through_the_wire_types():
    frame = msgpack.unpackb(msgpack.packb(wire.request_frame(7, wire.Generate(REQUEST))), raw=False)
    assert frame["op"] == "generate" and frame["request"]["role"] == "multi_line"
    assert wire.parse_request(frame) == (7, wire.Generate(REQUEST))


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"role": "chat", "max_new_tokens": "64"}, "max_new_tokens: expected int, got str '64'"),
        ({"role": "chat", "max_new_tokens": 64.0}, "max_new_tokens: expected int, got float"),
        ({"role": "chat", "max_new_tokens": True}, "max_new_tokens: expected int, got a boolean"),
        ({"role": "chat", "max_new_tokens": 8, "prompt_ids": [1, None]}, "prompt_ids[1]: expected int, got NoneType"),
        ({"role": "chat", "max_new_tokens": 8, "stop": {"strings": "\n"}}, "stop.strings"),
        ({"role": "tab", "max_new_tokens": 8}, "role: unknown role 'tab'"),
        ({"role": "chat", "max_new_tokens": 8, "messages": [{"role": "tool", "content": ""}]}, "messages[0].role: 'tool' is not allowed"),
        ({"role": "chat", "max_new_tokens": 8, "temperature": 0.7}, "unknown key(s) 'temperature'"),
        ({"role": "chat", "max_new_tokens": 8, 3: 1, "x": 2}, "unknown key(s) 'x', 3"),  # msgpack keys may be ints
        ({"max_new_tokens": 8}, "role: required"),
        ("generate", "expected a map, got str"),
    ],
)
def test_wrong_shapes_are_refused_with_the_field_named(data, problem):
    with pytest.raises(ConversionError) as caught:
        structure(data, GenerationRequest)
    assert problem in str(caught.value)
