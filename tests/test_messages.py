"""OpenAI message parsing, one module for the firewall, the CLI and the integrations."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from alknet_firewall.errors import BadInputError
from alknet_firewall.messages import extract_texts, rough_size, tool_call_arguments

ROLES = ("user", "tool", "function", "assistant")


def test_texts_parts_and_tool_calls() -> None:
    msgs = [
        {"role": "system", "content": "operator"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]},
    ]
    texts, ignored = extract_texts(msgs, ROLES)
    assert texts == [(1, "a"), (2, "{}")]
    assert ignored == ["messages[1].content[1]:image_url"]
    assert extract_texts("plain", ROLES) == ([(0, "plain")], [])
    assert rough_size(msgs) == 1 + len("operator")


def test_tool_call_arguments_reads_mappings_and_sdk_objects() -> None:
    calls = [
        {"function": {"arguments": '{"q": 1}'}},
        SimpleNamespace(function=SimpleNamespace(arguments="obj")),
        {"function": {"arguments": 5}},
        "not a call",
    ]
    assert tool_call_arguments(calls) == ['{"q": 1}', "obj"]


@pytest.mark.parametrize(
    "bad",
    [b"bytes", {"role": "user"}, [{"role": 1}], [{"role": "user", "tool_calls": "x"}]],
)
def test_bad_shapes_raise_bad_input(bad: object) -> None:
    with pytest.raises(BadInputError):
        extract_texts(bad, ROLES)  # type: ignore[arg-type]
