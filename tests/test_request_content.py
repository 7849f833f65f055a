"""The request-content extractor (``alknet_firewall.request_content``), field by field.

:func:`field_cases` is the table of every text field of the Chat Completions, Completions and
Responses request shapes, with a text in it; ``tests/security/test_unscreened_fields.py`` sends
the same table, with an attack as the text, through each integration. No model here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alknet_firewall.config import PolicySettings
from alknet_firewall.errors import BadInputError
from alknet_firewall.messages import extract_texts
from alknet_firewall.request_content import TOOL_DEFINITION, extract_request

BENIGN_TEXT = "What is the capital of France?"
MARK = "zq-marker-7 reaches the model"
CHAT, COMPLETIONS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"


@dataclass(frozen=True)
class FieldCase:
    id: str
    endpoint: str
    body: dict[str, Any]
    #: JSON path the extractor must report for the text
    path: str
    role: str
    #: whether the default policy's roles screen it
    screened: bool = True


def _chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    msgs = list(messages) or [{"role": "user", "content": BENIGN_TEXT}]
    return {"model": "gpt-test", "messages": msgs, **extra}


def _responses(*items: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "input": list(items) or BENIGN_TEXT, **extra}


def _fn_tool(description: str = "Look up the weather.", param: str = "A city.") -> dict[str, Any]:
    params = {"type": "object", "properties": {"city": {"type": "string", "description": param}}}
    return {
        "type": "function",
        "function": {"name": "weather", "description": description, "parameters": params},
    }


def _schema(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "description": description}},
    }


_CALL = {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"}


def field_cases(t: str) -> list[FieldCase]:
    """Every field that reaches the model as text, holding ``t``."""
    user = {"role": "user", "content": BENIGN_TEXT}
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    asked = {"role": "assistant", "content": None, "tool_calls": [call]}
    return [
        # Chat Completions (openai/types/chat/completion_create_params.py)
        FieldCase(
            "chat-user", CHAT, _chat({"role": "user", "content": t}), "messages[0].content", "user"
        ),
        FieldCase(
            "chat-user-parts",
            CHAT,
            _chat({"role": "user", "content": [{"type": "text", "text": t}]}),
            "messages[0].content",
            "user",
        ),
        FieldCase("chat-name", CHAT, _chat({**user, "name": t}), "messages[0].name", "user"),
        FieldCase(
            "chat-unknown-role",
            CHAT,
            _chat({"role": "customer", "content": t}),
            "messages[0].content",
            "user",
        ),
        FieldCase(
            "chat-tool-result",
            CHAT,
            _chat(user, asked, {"role": "tool", "tool_call_id": "c1", "content": t}),
            "messages[2].content",
            "tool",
        ),
        FieldCase(
            "chat-function-result",
            CHAT,
            _chat(user, {"role": "function", "name": "weather", "content": t}),
            "messages[1].content",
            "function",
        ),
        FieldCase(
            "chat-tool-description",
            CHAT,
            _chat(tools=[_fn_tool(description=t)]),
            "tools[0].function.description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "chat-tool-parameter",
            CHAT,
            _chat(tools=[_fn_tool(param=t)]),
            "tools[0].function.parameters.properties.city.description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "chat-custom-tool",
            CHAT,
            _chat(tools=[{"type": "custom", "custom": {"name": "sql", "description": t}}]),
            "tools[0].custom.description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "chat-legacy-function",
            CHAT,
            _chat(functions=[{"name": "f", "description": t}]),
            "functions[0].description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "chat-legacy-function-parameter",
            CHAT,
            _chat(functions=[{"name": "f", "parameters": _schema(t)}]),
            "functions[0].parameters.properties.answer.description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "chat-response-format",
            CHAT,
            _chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "a", "description": t, "schema": _schema("x")},
                }
            ),
            "response_format.json_schema.description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "chat-response-format-schema",
            CHAT,
            _chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": _schema(t)},
                }
            ),
            "response_format.json_schema.schema.properties.answer.description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "chat-prediction",
            CHAT,
            _chat(prediction={"type": "content", "content": t}),
            "prediction.content",
            "user",
        ),
        # operator and model-written fields: a policy switch, not screened by default
        FieldCase(
            "chat-system",
            CHAT,
            _chat({"role": "system", "content": t}, user),
            "messages[0].content",
            "system",
            screened=False,
        ),
        FieldCase(
            "chat-developer",
            CHAT,
            _chat({"role": "developer", "content": t}, user),
            "messages[0].content",
            "developer",
            screened=False,
        ),
        FieldCase(
            "chat-tool-call-arguments",
            CHAT,
            _chat(
                user,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{**call, "function": {"name": "w", "arguments": t}}],
                },
            ),
            "messages[1].tool_calls[0].function.arguments",
            "assistant",
            screened=False,
        ),
        FieldCase(
            "chat-legacy-function-call",
            CHAT,
            _chat(
                user,
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "w", "arguments": t},
                },
            ),
            "messages[1].function_call.arguments",
            "assistant",
            screened=False,
        ),
        # Completions (openai/types/completion_create_params.py)
        FieldCase("completions-prompt", COMPLETIONS, {"model": "m", "prompt": t}, "prompt", "user"),
        FieldCase(
            "completions-prompt-list",
            COMPLETIONS,
            {"model": "m", "prompt": [BENIGN_TEXT, t]},
            "prompt[1]",
            "user",
        ),
        FieldCase(
            "completions-suffix",
            COMPLETIONS,
            {"model": "m", "prompt": BENIGN_TEXT, "suffix": t},
            "suffix",
            "user",
        ),
        # Responses (openai/types/responses/response_create_params.py, response_input_item_param.py)
        FieldCase("responses-input", RESPONSES, _responses(t), "input[0]", "user"),
        FieldCase("responses-input-string", RESPONSES, {"model": "m", "input": t}, "input", "user"),
        FieldCase(
            "responses-message",
            RESPONSES,
            _responses({"role": "user", "content": [{"type": "input_text", "text": t}]}),
            "input[0].content",
            "user",
        ),
        FieldCase(
            "responses-function-call-output",
            RESPONSES,
            _responses(
                BENIGN_TEXT, _CALL, {"type": "function_call_output", "call_id": "c1", "output": t}
            ),
            "input[2].output",
            "tool",
        ),
        FieldCase(
            "responses-function-call-output-parts",
            RESPONSES,
            _responses(
                BENIGN_TEXT,
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_text", "text": t}],
                },
            ),
            "input[1].output",
            "tool",
        ),
        FieldCase(
            "responses-custom-tool-call-output",
            RESPONSES,
            _responses(
                BENIGN_TEXT, {"type": "custom_tool_call_output", "call_id": "c1", "output": t}
            ),
            "input[1].output",
            "tool",
        ),
        FieldCase(
            "responses-local-shell-call-output",
            RESPONSES,
            _responses(BENIGN_TEXT, {"type": "local_shell_call_output", "id": "o1", "output": t}),
            "input[1].output",
            "tool",
        ),
        FieldCase(
            "responses-shell-call-output",
            RESPONSES,
            _responses(
                BENIGN_TEXT,
                {
                    "type": "shell_call_output",
                    "call_id": "c1",
                    "output": [
                        {"stdout": t, "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}
                    ],
                },
            ),
            "input[1].output",
            "tool",
        ),
        FieldCase(
            "responses-apply-patch-call-output",
            RESPONSES,
            _responses(
                BENIGN_TEXT,
                {
                    "type": "apply_patch_call_output",
                    "call_id": "c1",
                    "status": "completed",
                    "output": t,
                },
            ),
            "input[1].output",
            "tool",
        ),
        FieldCase(
            "responses-mcp-call-output",
            RESPONSES,
            _responses(
                BENIGN_TEXT,
                {
                    "type": "mcp_call",
                    "id": "m1",
                    "name": "search",
                    "server_label": "docs",
                    "arguments": "{}",
                    "output": t,
                },
            ),
            "input[1].output",
            "tool",
        ),
        FieldCase(
            "responses-mcp-list-tools",
            RESPONSES,
            _responses(
                BENIGN_TEXT,
                {
                    "type": "mcp_list_tools",
                    "id": "l1",
                    "server_label": "docs",
                    "tools": [{"name": "search", "description": t, "input_schema": {}}],
                },
            ),
            "input[1].tools[0].description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "responses-mcp-approval-response",
            RESPONSES,
            _responses(
                BENIGN_TEXT,
                {
                    "type": "mcp_approval_response",
                    "approval_request_id": "a1",
                    "approve": False,
                    "reason": t,
                },
            ),
            "input[1].reason",
            "user",
        ),
        FieldCase(
            "responses-file-search-results",
            RESPONSES,
            _responses(
                BENIGN_TEXT,
                {
                    "type": "file_search_call",
                    "id": "f1",
                    "status": "completed",
                    "queries": ["q"],
                    "results": [{"file_id": "f", "text": t}],
                },
            ),
            "input[1].results",
            "tool",
        ),
        FieldCase(
            "responses-future-output-item",
            RESPONSES,
            _responses(
                BENIGN_TEXT, {"type": "telepathy_call_output", "call_id": "c1", "output": t}
            ),
            "input[1].output",
            "tool",
        ),
        FieldCase(
            "responses-function-tool",
            RESPONSES,
            _responses(
                tools=[
                    {
                        "type": "function",
                        "name": "f",
                        "description": t,
                        "parameters": {},
                        "strict": False,
                    }
                ]
            ),
            "tools[0].description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "responses-function-tool-parameter",
            RESPONSES,
            _responses(
                tools=[{"type": "function", "name": "f", "parameters": _schema(t), "strict": False}]
            ),
            "tools[0].parameters.properties.answer.description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "responses-mcp-server-description",
            RESPONSES,
            _responses(
                tools=[
                    {
                        "type": "mcp",
                        "server_label": "docs",
                        "server_url": "https://mcp.example",
                        "server_description": t,
                    }
                ]
            ),
            "tools[0].server_description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "responses-text-format",
            RESPONSES,
            _responses(
                text={
                    "format": {
                        "type": "json_schema",
                        "name": "a",
                        "description": t,
                        "schema": _schema("x"),
                    }
                }
            ),
            "text.format.description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "responses-text-format-schema",
            RESPONSES,
            _responses(text={"format": {"type": "json_schema", "name": "a", "schema": _schema(t)}}),
            "text.format.schema.properties.answer.description",
            TOOL_DEFINITION,
        ),
        FieldCase(
            "responses-prompt-variable",
            RESPONSES,
            _responses(prompt={"id": "pmpt_1", "variables": {"topic": t}}),
            "prompt.variables.topic",
            "user",
        ),
        FieldCase(
            "responses-instructions",
            RESPONSES,
            _responses(instructions=t),
            "instructions",
            "system",
            screened=False,
        ),
        FieldCase(
            "responses-developer",
            RESPONSES,
            _responses({"role": "developer", "content": t}),
            "input[0].content",
            "developer",
            screened=False,
        ),
        FieldCase(
            "responses-function-call-arguments",
            RESPONSES,
            _responses(BENIGN_TEXT, {**_CALL, "arguments": t}),
            "input[1].arguments",
            "assistant",
            screened=False,
        ),
    ]


CASES = field_cases(MARK)


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    return content or ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_field_is_extracted_with_its_path_and_role(case: FieldCase) -> None:
    got = extract_request(case.body)
    assert len(got.messages) == len(got.fields)
    hits = [
        (f, m["role"])
        for f, m in zip(got.fields, got.messages, strict=True)
        if MARK in _text_of(m["content"])
    ]
    assert hits == [(case.path, case.role)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_default_policy_screens_untrusted_fields_only(case: FieldCase) -> None:
    texts, _ = extract_texts(extract_request(case.body).messages, PolicySettings().roles)
    assert any(MARK in t for _, t in texts) == case.screened


def test_operator_fields_are_screened_when_their_role_is_added() -> None:
    roles = (*PolicySettings().roles, "system", "developer", "assistant")
    for case in CASES:
        texts, _ = extract_texts(extract_request(case.body).messages, roles)
        assert any(MARK in t for _, t in texts), case.id


def test_indexes_of_messages_and_input_items_are_kept() -> None:
    """Verdict.message_index still points into ``messages`` / ``input``: the other fields come
    after them."""
    body = _chat(
        {"role": "system", "content": "s", "name": "n"},
        {"role": "user", "content": "u"},
        tools=[_fn_tool()],
    )
    got = extract_request(body)
    assert got.fields[:2] == ["messages[0].content", "messages[1].content"]
    assert got.path_of(1) == "messages[1].content" and got.path_of(99) is None
    assert got.path_of(None) is None
    items = [
        "s",
        {"type": "reasoning", "id": "r", "summary": []},
        {"type": "function_call_output", "call_id": "c", "output": "o"},
    ]
    got = extract_request({"input": items, "instructions": "i"})
    assert [m["role"] for m in got.messages] == ["user", "item:reasoning", "tool", "system"]
    assert got.fields == ["input[0]", "input[1]", "input[2].output", "instructions"]


def test_json_schema_strings_but_not_its_structure() -> None:
    schema = {
        "type": "object",
        "title": "T",
        "required": ["type"],
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        # a property named "type" is a sub-schema: read, not skipped as structure
        "properties": {"type": {"type": "string", "description": "D", "enum": ["a", "b"]}},
    }
    got = extract_request(
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}
    )
    p = "tools[0].function.parameters"
    assert got.fields == [
        f"{p}.title",
        f"{p}.properties.type.description",
        f"{p}.properties.type.enum",
    ]
    assert got.messages[2]["content"] == [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]


def test_what_cannot_be_screened_is_reported() -> None:
    got = extract_request(
        {
            "model": "m",
            "temperature": 0,
            "previous_response_id": "resp_1",
            "chat_template": "{{ evil }}",
            "prompt": {"id": "pmpt_1"},
            "input": [
                {"type": "item_reference", "id": "x"},
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_image", "image_url": "u"}],
                },
            ],
        }
    )
    assert [i.split(":")[0] for i in got.ignored] == [
        "prompt.id",
        "input[0]",
        "input[1].output[0]",
        "previous_response_id",
        "chat_template",
    ]


def _deep(n: int) -> dict[str, Any]:
    node: dict[str, Any] = {"description": "bottom"}
    for _ in range(n):
        node = {"items": node}
    return node


@pytest.mark.parametrize(
    "body",
    [
        [],
        "text",
        {"messages": {}},
        {"messages": [{"tool_calls": 5, "role": "assistant"}]},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": {"text": "x"}}]},
        {"messages": [{"role": "user", "content": "x", "name": 5}]},
        {"prompt": 3},
        {"prompt": [1, 2, 3]},
        {"prompt": [[1, 2], [3]]},
        {"input": [[1, 2]]},
        {"input": [1, 2]},
        {"input": {"role": "user"}},
        {"suffix": ["x"]},
        {"instructions": 5},
        {"prediction": "x"},
        {"tools": {"type": "function"}},
        {"tools": ["weather"]},
        {"input": [{"type": "function_call_output", "output": 5}]},
        {"tools": [{"type": "function", "parameters": _deep(100)}]},
    ],
)
def test_shapes_that_cannot_be_screened_are_refused(body: Any) -> None:
    with pytest.raises(BadInputError):
        extract_request(body)


def test_old_middleware_name_is_a_thin_alias() -> None:
    from alknet_firewall.integrations.asgi import messages_from_body

    body = field_cases(MARK)[6].body
    assert messages_from_body(body) == extract_request(body).messages


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "role", "content", "description", "output", "text", "tools"])
            | st.text(max_size=5),
            c,
            max_size=4,
        )
    ),
    max_leaves=12,
)
_FIELDS = ["messages", "prompt", "input", "suffix", "instructions", "prediction", "tools"]
_FIELDS += ["functions", "response_format", "text"]


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=4) | _json)
def test_property_any_body_gives_messages_or_bad_input(body: Any) -> None:
    """Whatever the JSON, the extractor answers messages the firewall can read, or a
    BadInputError (never another exception, which would be a 500)."""
    try:
        got = extract_request(body)
    except BadInputError:
        return
    assert len(got.messages) == len(got.fields)
    for m in got.messages:
        assert isinstance(m["role"], str)
        assert m["content"] is None or isinstance(m["content"], (str, list))
    roles = {m["role"] for m in got.messages}
    with contextlib.suppress(BadInputError):  # what the firewall does with them next
        extract_texts(got.messages, sorted(roles), each_part=True)
