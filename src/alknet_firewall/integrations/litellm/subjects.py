"""What each hook screens: the request's messages (chat, Responses API converted by LiteLLM,
string ``prompt``/``input``), the answer of a chat completion. Imports no litellm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...messages import tool_call_arguments

__all__ = ["request_subject", "response_text", "user_text_messages"]


def user_text_messages(texts: Sequence[str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": t} for t in texts if isinstance(t, str)]


def response_text(response: Any) -> str | None:
    """Assistant text (content and tool-call arguments) of a chat completion response."""
    choices = getattr(response, "choices", None)
    if choices is None and isinstance(response, Mapping):
        choices = response.get("choices")
    if not choices:
        return None
    parts: list[str] = []
    for choice in choices:
        msg = getattr(choice, "message", None)
        if msg is None and isinstance(choice, Mapping):
            msg = choice.get("message")
        if msg is None:
            continue
        get = msg.get if isinstance(msg, Mapping) else lambda k, m=msg: getattr(m, k, None)
        content = get("content")
        if isinstance(content, str):
            parts.append(content)
        parts += tool_call_arguments(get("tool_calls") or [])
    text = "\n".join(p for p in parts if p)
    return text or None


def request_subject(
    data: Mapping[str, Any], messages: Any = None
) -> list[Mapping[str, Any]] | None:
    """The messages to screen for a request: ``messages`` (what LiteLLM extracted for the call
    type), else the body's ``messages``, else a string ``prompt``/``input`` (or a list of
    strings) as user messages; None when there is nothing to screen."""
    if messages is None:
        messages = data.get("messages")
    if isinstance(messages, list):
        return messages
    for key in ("prompt", "input"):
        value = data.get(key)
        if isinstance(value, str):
            return user_text_messages([value])
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return user_text_messages(value)
    return None
