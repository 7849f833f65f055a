"""What each hook screens: every text field of the request (the core's request-content
extractor), the answer of a chat completion. Imports no litellm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...messages import tool_call_arguments
from ...request_content import extract_request

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


def request_subject(data: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The messages to screen for a request: every field of the body that reaches the model as
    text (:func:`alknet_firewall.request_content.extract_request`: messages, prompt, suffix,
    input items, instructions, tool definitions...), whatever the call type; None when there is
    nothing to screen. Raises :class:`BadInputError` for a body that cannot be screened."""
    messages = extract_request(data).messages
    return messages or None
