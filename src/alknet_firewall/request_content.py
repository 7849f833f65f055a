"""OpenAI request bodies → the chat messages the firewall screens, one per text field.

One extractor for every integration (gateway, ASGI middleware, LiteLLM guardrail): it reads
every field of the Chat Completions, Completions and Responses request shapes that reaches the
model as text, whatever the endpoint (an upstream may accept a field of another shape, so a
field cannot be smuggled past on the "wrong" path), and gives each one a role:

* ``user``: user content (``messages`` of role user, ``prompt``, ``suffix``, ``input`` strings,
  ``prediction``, prompt-template variables, MCP approval reasons);
* ``tool``: tool results (``tool``/``function`` messages, every ``*_output`` item of
  ``input``, ``mcp_call.output``, file-search results, code-interpreter logs);
* ``assistant``: tool-call arguments and other model-written items sent back;
* ``system`` / ``developer``: the operator's messages and ``instructions``;
* ``tool_definition``: tool and function descriptions and every text of their JSON schemas
  (``tools``, legacy ``functions``, ``response_format``/``text.format`` schemas, MCP tool
  lists).

The policy's ``roles`` decide which are screened (default: user, tool, function,
tool_definition). The table of fields is ``docs/request-fields.md``.

Indexes: the first messages are one per element of ``messages``, then of ``prompt`` (a list),
then of ``input``, in order, as before this module existed, so ``Verdict.message_index`` still
points into ``messages`` (or ``input``) for a plain request. Every other field (names, tool-call
arguments, tool descriptions, ``instructions``...) follows; :attr:`RequestContent.fields` names
each message's JSON path.

Size (~500 lines): one reader per request shape (chat messages, prompts, Responses items, tool
definitions and schemas) over three OpenAI APIs; they share the collector and the part reader,
and splitting them would scatter the one table of what is screened.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BadInputError

__all__ = [
    "ASSISTANT",
    "DEVELOPER",
    "KNOWN_ROLES",
    "SYSTEM",
    "TOOL",
    "TOOL_DEFINITION",
    "USER",
    "RequestContent",
    "extract_request",
    "json_type",
]

USER = "user"
TOOL = "tool"
ASSISTANT = "assistant"
SYSTEM = "system"
DEVELOPER = "developer"
#: Tool and function descriptions and their schemas' texts.
TOOL_DEFINITION = "tool_definition"
#: Roles of chat messages kept as written; any other role is read as ``user`` (a lenient
#: upstream may render a made-up role, so it must not escape screening).
KNOWN_ROLES = frozenset({USER, TOOL, ASSISTANT, SYSTEM, DEVELOPER, "function"})
#: JSON schemas nested deeper than this are refused (a schema is a tree an attacker may write).
MAX_SCHEMA_DEPTH = 64
#: Schema keys whose string values are structure, not text (a mapping under one is a
#: sub-schema, e.g. a property named "type", and is read).
_SCHEMA_STRUCTURE = frozenset({"type", "$ref", "$schema", "$id", "required"})

#: Responses ``input`` item types → (path in the item, role); the first field with text gives
#: the item's own message (its index), the others follow the primary messages.
_ITEM_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "function_call": (("arguments", ASSISTANT),),
    "custom_tool_call": (("input", ASSISTANT),),
    "function_call_output": (("output", TOOL),),
    "custom_tool_call_output": (("output", TOOL),),
    "local_shell_call_output": (("output", TOOL),),
    "shell_call_output": (("output", TOOL),),
    "apply_patch_call_output": (("output", TOOL),),
    "program_output": (("result", TOOL),),
    "mcp_call": (("output", TOOL), ("error", TOOL), ("arguments", ASSISTANT)),
    "mcp_list_tools": (("error", TOOL),),
    "mcp_approval_request": (("arguments", ASSISTANT),),
    "mcp_approval_response": (("reason", USER),),
    "file_search_call": (("results", TOOL), ("queries", ASSISTANT)),
    "web_search_call": (
        ("action.query", ASSISTANT),
        ("action.queries", ASSISTANT),
        ("action.pattern", ASSISTANT),
    ),
    "code_interpreter_call": (("outputs", TOOL), ("code", ASSISTANT)),
    "local_shell_call": (("action.command", ASSISTANT),),
    "shell_call": (("action.commands", ASSISTANT),),
    "apply_patch_call": (("operation.diff", ASSISTANT),),
    "computer_call": (("action.text", ASSISTANT),),
    "reasoning": (("summary", ASSISTANT), ("content", ASSISTANT)),
    "tool_search_call": (("arguments", ASSISTANT),),
    "program": (("code", ASSISTANT),),
    "input_text": (("text", USER),),
    "text": (("text", USER),),
}
#: Item types that carry tool definitions under ``tools``.
_ITEM_TOOLS = frozenset({"mcp_list_tools", "tool_search_output", "additional_tools"})
#: Items that hold no text the firewall can read (reported in ``ignored``).
_OPAQUE_ITEMS = frozenset(
    {
        "computer_call_output",
        "image_generation_call",
        "compaction",
        "item_reference",
        "compaction_trigger",
    }
)
#: Top-level fields that are not text for the model (not reported as unknown).
_NON_TEXT_FIELDS = frozenset(
    {
        "model", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens",
        "max_completion_tokens", "max_output_tokens", "stop", "presence_penalty",
        "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "seed", "user",
        "metadata", "store", "service_tier", "tool_choice", "parallel_tool_calls",
        "modalities", "audio", "reasoning_effort", "reasoning", "verbosity",
        "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
        "prompt_cache_options", "best_of", "echo", "include", "background", "truncation",
        "max_tool_calls", "context_management", "moderation", "function_call",
        "encoding_format", "dimensions", "web_search_options",
    }
)  # fmt: skip
#: Text-part types read from ``*_output`` lists and similar (``logs``, ``stdout``... too).
_PART_TEXT_KEYS = ("text", "refusal", "logs", "stdout", "stderr")


@dataclass(frozen=True)
class RequestContent:
    """What a request body gives the firewall.

    ``messages[n]`` came from the JSON path ``fields[n]``; ``ignored`` lists what reaches the
    upstream but cannot be screened here (images, files, stored prompts and conversations,
    unknown fields).
    """

    messages: list[dict[str, Any]]
    fields: list[str]
    ignored: list[str]

    def path_of(self, index: int | None) -> str | None:
        """The JSON path of message ``index`` (e.g. ``Verdict.message_index``), if any."""
        if index is None or not 0 <= index < len(self.fields):
            return None
        return self.fields[index]


class _Collector:
    """Primary messages (one per element of messages/prompt/input) and the other fields."""

    def __init__(self) -> None:
        self.primary: list[tuple[str, dict[str, Any]]] = []
        self.extra: list[tuple[str, dict[str, Any]]] = []
        self.ignored: list[str] = []

    def add(self, path: str, role: str, content: Any, *, primary: bool = False) -> None:
        (self.primary if primary else self.extra).append((path, {"role": role, "content": content}))

    def text(self, path: str, role: str, value: Any) -> None:
        """An optional string field."""
        if value is None:
            return
        if not isinstance(value, str):
            raise BadInputError(f"{path} must be a string, not {json_type(value)}")
        if value:
            self.add(path, role, value)

    def result(self) -> RequestContent:
        both = self.primary + self.extra
        return RequestContent([m for _, m in both], [p for p, _ in both], self.ignored)


def json_type(v: Any) -> str:
    """``v``'s JSON type, for error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object" if isinstance(v, Mapping) else type(v).__name__


def _is_token_ids(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def extract_request(body: Any) -> RequestContent:
    """The messages to screen from an OpenAI-style request body (see the module docstring).

    Raises :class:`BadInputError` for shapes that cannot be screened: a body that is not an
    object, token-id prompts, a text field of the wrong type, schemas nested too deeply.
    """
    if not isinstance(body, Mapping):
        raise BadInputError(f"the request body must be a JSON object, not {json_type(body)}")
    c = _Collector()
    _messages(c, body.get("messages"), "messages")
    _prompt(c, body.get("prompt"))
    _input(c, body.get("input"))
    c.text("suffix", USER, body.get("suffix"))
    c.text("instructions", SYSTEM, body.get("instructions"))
    prediction = body.get("prediction")
    if isinstance(prediction, Mapping):
        _content_field(c, "prediction.content", USER, prediction.get("content"))
    elif prediction is not None:
        raise BadInputError(f"prediction must be an object, not {json_type(prediction)}")
    _tools(c, body.get("tools"), "tools")
    _tools(c, body.get("functions"), "functions")
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        _schema_holder(c, response_format.get("json_schema"), "response_format.json_schema")
    text = body.get("text")
    if isinstance(text, Mapping):
        _schema_holder(c, text.get("format"), "text.format")
    for key in ("conversation", "previous_response_id"):
        if body.get(key) is not None:
            c.ignored.append(f"{key}: stored on the upstream, not in this request")
    known = {"messages", "prompt", "input", "suffix", "instructions", "prediction", "tools"}
    known |= {"functions", "response_format", "text", "conversation", "previous_response_id"}
    for key in body:
        if key not in known and key not in _NON_TEXT_FIELDS:
            c.ignored.append(f"{key}: unknown field, not screened")
    return c.result()


# --------------------------------------------------------------------------------------------
# Chat Completions: messages
# --------------------------------------------------------------------------------------------
def _role(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"{path}.role must be a string")
    return value if value in KNOWN_ROLES else USER


def _check_content(content: Any, path: str) -> None:
    if content is not None and not isinstance(content, (str, list)):
        raise BadInputError(
            f"{path} must be a string, a list of parts or null, not {json_type(content)}"
        )


def _array(value: Any, path: str) -> list[Any]:
    """``value`` as a list of items: none when absent (null), an error when not an array."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadInputError(f"{path} must be an array, not {json_type(value)}")
    return value


def _messages(c: _Collector, msgs: Any, path: str) -> None:
    for i, msg in enumerate(_array(msgs, path)):
        at = f"{path}[{i}]"
        if not isinstance(msg, Mapping):
            raise BadInputError(f"{at} must be an object, not {json_type(msg)}")
        role = _role(msg.get("role"), at)
        content = msg.get("content")
        _check_content(content, f"{at}.content")
        c.add(f"{at}.content", role, content, primary=True)
        c.text(f"{at}.name", role, msg.get("name"))
        c.text(f"{at}.refusal", role, msg.get("refusal"))
        for k, call in enumerate(_array(msg.get("tool_calls"), f"{at}.tool_calls")):
            if not isinstance(call, Mapping):
                raise BadInputError(f"{at}.tool_calls[{k}] must be an object")
            fn, custom = call.get("function"), call.get("custom")
            if isinstance(fn, Mapping):
                c.text(f"{at}.tool_calls[{k}].function.arguments", role, fn.get("arguments"))
            if isinstance(custom, Mapping):
                c.text(f"{at}.tool_calls[{k}].custom.input", role, custom.get("input"))
        legacy = msg.get("function_call")
        if isinstance(legacy, Mapping):
            c.text(f"{at}.function_call.arguments", role, legacy.get("arguments"))


# --------------------------------------------------------------------------------------------
# Completions: prompt (string or list) and Responses: prompt (a stored template)
# --------------------------------------------------------------------------------------------
def _prompt(c: _Collector, prompt: Any) -> None:
    if prompt is None:
        return
    if isinstance(prompt, str):
        c.add("prompt", USER, prompt, primary=True)
        return
    if isinstance(prompt, Mapping):  # Responses: {"id", "version", "variables"}
        c.ignored.append("prompt.id: a stored prompt template; screen it where it is written")
        variables = prompt.get("variables")
        if variables is None:
            return
        if not isinstance(variables, Mapping):
            raise BadInputError("prompt.variables must be an object")
        for name, value in variables.items():
            at = f"prompt.variables.{name}"
            if isinstance(value, Mapping):
                _content_field(c, at, USER, [value])
            else:
                c.text(at, USER, value)
        return
    if isinstance(prompt, list):
        if all(isinstance(p, str) for p in prompt):
            for j, p in enumerate(prompt):
                c.add(f"prompt[{j}]", USER, p, primary=True)
            return
        if _is_token_ids(prompt) or all(_is_token_ids(p) for p in prompt):
            raise BadInputError("token-id prompts cannot be screened; send the prompt as text")
    raise BadInputError(
        "'prompt' must be a string, an array of strings or a prompt template object"
    )


# --------------------------------------------------------------------------------------------
# Responses: input
# --------------------------------------------------------------------------------------------
def _input(c: _Collector, inp: Any) -> None:
    if inp is None:
        return
    if isinstance(inp, str):
        c.add("input", USER, inp, primary=True)
        return
    if not isinstance(inp, list):
        raise BadInputError(f"'input' must be a string or an array, not {json_type(inp)}")
    if _is_token_ids(inp):
        raise BadInputError("token-id inputs cannot be screened; send the input as text")
    for i, item in enumerate(inp):
        at = f"input[{i}]"
        if isinstance(item, str):
            c.add(at, USER, item, primary=True)
        elif isinstance(item, Mapping):
            _input_item(c, item, at)
        elif _is_token_ids(item):
            raise BadInputError("token-id inputs cannot be screened; send the input as text")
        else:
            raise BadInputError(f"{at} must be a string or an object, not {json_type(item)}")


def _input_item(c: _Collector, item: Mapping[str, Any], at: str) -> None:
    kind = item.get("type")
    if kind is not None and not isinstance(kind, str):
        raise BadInputError(f"{at}.type must be a string, not {json_type(kind)}")
    if "role" in item and kind in (None, "message"):
        role = _role(item.get("role"), at)
        content = item.get("content")
        _check_content(content, f"{at}.content")
        c.add(f"{at}.content", role, content, primary=True)
        return
    primary = False
    for key, role in _ITEM_FIELDS.get(kind or "", ()):
        value = _get_path(item, key)
        content = _text_content(c, value, f"{at}.{key}")
        if content:
            c.add(f"{at}.{key}", role, content, primary=not primary)
            primary = True
    if kind in _ITEM_TOOLS:
        _tools(c, item.get("tools"), f"{at}.tools")
    elif kind in _OPAQUE_ITEMS:
        c.ignored.append(f"{at}:{kind}")
    elif kind not in _ITEM_FIELDS:
        # An item this version does not know: its output and arguments, if any, as a tool
        # result and a tool call (a new *_output item is a tool result).
        for key, role in (("output", TOOL), ("arguments", ASSISTANT), ("input", ASSISTANT)):
            content = _text_content(c, item.get(key), f"{at}.{key}")
            if content:
                c.add(f"{at}.{key}", role, content, primary=not primary)
                primary = True
        if not primary:
            c.ignored.append(f"{at}:{kind}")
    if not primary:  # keeps the item's index (screened by no policy)
        c.add(at, f"item:{kind}", None, primary=True)


def _get_path(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _text_content(c: _Collector, value: Any, path: str) -> str | list[dict[str, str]] | None:
    """A field's text as message content: a string, or text parts (one per string found in a
    list of strings or parts: ``text``, ``logs``, ``stdout``/``stderr``...); non-text parts
    (images, files) go to ``ignored``. An object (tool-search arguments) is read as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, list):
        raise BadInputError(f"{path} must be a string or an array, not {json_type(value)}")
    parts: list[dict[str, str]] = []
    for j, part in enumerate(value):
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
            continue
        if not isinstance(part, Mapping):
            raise BadInputError(f"{path}[{j}] must be a string or an object")
        found = False
        for key in _PART_TEXT_KEYS:
            text = part.get(key)
            if text is None:
                continue
            if not isinstance(text, str):
                raise BadInputError(f"{path}[{j}].{key} must be a string")
            parts.append({"type": "text", "text": text})
            found = True
        if not found:
            c.ignored.append(f"{path}[{j}]:{part.get('type')}")
    if len(parts) == 1:
        return parts[0]["text"]
    return parts or None


def _content_field(c: _Collector, path: str, role: str, value: Any) -> None:
    content = _text_content(c, value, path)
    if content:
        c.add(path, role, content)


# --------------------------------------------------------------------------------------------
# Tool definitions and JSON schemas
# --------------------------------------------------------------------------------------------
def _tools(c: _Collector, tools: Any, path: str) -> None:
    for k, tool in enumerate(_array(tools, path)):
        _tool(c, tool, f"{path}[{k}]", 0)


def _tool(c: _Collector, tool: Any, path: str, depth: int) -> None:
    """One tool definition of any type: Chat ``{"type": "function", "function": {...}}`` and
    ``custom``, legacy ``functions[]``, Responses function/custom/namespace/MCP tools, MCP
    tool lists."""
    if depth > MAX_SCHEMA_DEPTH:
        raise BadInputError(f"{path}: tool definitions nested too deeply")
    if not isinstance(tool, Mapping):
        raise BadInputError(f"{path} must be an object, not {json_type(tool)}")
    for key in ("description", "server_description"):
        c.text(f"{path}.{key}", TOOL_DEFINITION, tool.get(key))
    for key in ("function", "custom"):
        inner = tool.get(key)
        if isinstance(inner, Mapping):
            _tool(c, inner, f"{path}.{key}", depth + 1)
    for key in ("parameters", "input_schema", "output_schema"):
        if tool.get(key) is not None:
            _schema(c, tool[key], f"{path}.{key}", 0)
    nested = tool.get("tools")
    if isinstance(nested, list):
        for k, inner in enumerate(nested):
            _tool(c, inner, f"{path}.tools[{k}]", depth + 1)


def _schema_holder(c: _Collector, holder: Any, path: str) -> None:
    """``response_format.json_schema`` / ``text.format``: a description and a schema."""
    if not isinstance(holder, Mapping):
        return
    c.text(f"{path}.description", TOOL_DEFINITION, holder.get("description"))
    if holder.get("schema") is not None:
        _schema(c, holder["schema"], f"{path}.schema", 0)


def _schema(c: _Collector, node: Any, path: str, depth: int) -> None:
    """Every string of a JSON schema (descriptions, titles, enum values, defaults, examples,
    patterns...) except structure (``type``, ``$ref``, ``required``...), as tool definitions."""
    if depth > MAX_SCHEMA_DEPTH:
        raise BadInputError(
            f"{path}: a schema nested deeper than {MAX_SCHEMA_DEPTH} levels cannot be screened"
        )
    if isinstance(node, str):
        if node.strip():
            c.add(path, TOOL_DEFINITION, node)
    elif isinstance(node, Mapping):
        for key, value in node.items():
            if key in _SCHEMA_STRUCTURE and (
                isinstance(value, str)
                or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            ):
                continue
            _schema(c, value, f"{path}.{key}", depth + 1)
    elif isinstance(node, list) and node and all(isinstance(v, str) for v in node):
        # enum values, examples: one message (of parts), not one per word
        _content_field(c, path, TOOL_DEFINITION, [v for v in node if v.strip()] or None)
    elif isinstance(node, list):
        for j, value in enumerate(node):
            _schema(c, value, f"{path}[{j}]", depth + 1)
