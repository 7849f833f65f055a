"""OpenAI chat messages → the texts to screen.

One place parses message shapes for the firewall, the CLI and the integrations: plain strings,
``content`` as a string or a list of parts (``text`` / ``input_text`` / ``output_text``; other
parts such as ``image_url`` are reported as ignored), and tool-call arguments. Request bodies
(every field that reaches the model, with its role) are turned into such messages by
:mod:`alknet_firewall.request_content`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import BadInputError

__all__ = ["TEXT_PART_TYPES", "ScreenInput", "extract_texts", "rough_size", "tool_call_arguments"]

#: A screen() input: one text, or OpenAI chat messages.
ScreenInput = str | Sequence[Mapping[str, Any]]
#: Content-part types whose ``text`` is screened.
TEXT_PART_TYPES = ("text", "input_text", "output_text")


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` for a mapping, ``obj.key`` for an object (SDK response types)."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def tool_call_arguments(calls: Iterable[Any]) -> list[str]:
    """The ``function.arguments`` strings of tool calls (mappings or SDK objects); calls of
    another shape carry no arguments to screen."""
    out: list[str] = []
    for call in calls:
        args = _field(_field(call, "function"), "arguments")
        if isinstance(args, str):
            out.append(args)
    return out


def extract_texts(
    data: ScreenInput, roles: Sequence[str], *, each_part: bool = False
) -> tuple[list[tuple[int, str]], list[str]]:
    """Texts to screen from a string or OpenAI chat messages, and what was ignored.

    Each message gives its text parts (and tool-call arguments) joined by newlines; with
    ``each_part``, a message of several non-empty parts also gives each part on its own (after
    the joined text), so one part cannot dilute another: a one-line "Summarise this." before a
    pasted document is read apart from the document too.

    Raises :class:`BadInputError` for shapes that are not chat messages.
    """
    if isinstance(data, str):
        return [(0, data)], []
    if isinstance(data, (bytes, bytearray)):
        raise BadInputError(
            "screen() takes str or a list of chat messages, not bytes; decode first"
        )
    if isinstance(data, Mapping) or not isinstance(data, Sequence):
        raise BadInputError(
            f"screen() takes str or a list of chat messages, not {type(data).__name__}"
        )
    texts: list[tuple[int, str]] = []
    ignored: list[str] = []
    for i, msg in enumerate(data):
        if not isinstance(msg, Mapping):
            raise BadInputError(f"messages[{i}] must be an object, not {type(msg).__name__}")
        role = msg.get("role")
        if not isinstance(role, str):
            raise BadInputError(f"messages[{i}].role must be a string")
        if role not in roles:
            continue
        content = msg.get("content")
        parts: list[str] = []
        if content is None:
            pass
        elif isinstance(content, str):
            parts.append(content)
        elif isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
            for j, part in enumerate(content):
                if isinstance(part, str):
                    parts.append(part)
                    continue
                if not isinstance(part, Mapping):
                    raise BadInputError(f"messages[{i}].content[{j}] must be an object")
                ptype = part.get("type")
                if ptype in TEXT_PART_TYPES:
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise BadInputError(f"messages[{i}].content[{j}].text must be a string")
                    parts.append(text)
                else:
                    ignored.append(f"messages[{i}].content[{j}]:{ptype}")
        else:
            raise BadInputError(
                f"messages[{i}].content must be a string, a list of parts or null, "
                f"not {type(content).__name__}"
            )
        # Tool-call arguments travel in assistant messages: screened when that role is.
        calls = msg.get("tool_calls")
        if calls is not None and (not isinstance(calls, Sequence) or isinstance(calls, str)):
            raise BadInputError(f"messages[{i}].tool_calls must be a list")
        parts += tool_call_arguments(calls or [])
        text = "\n".join(p for p in parts if p)
        if text.strip():
            texts.append((i, text))
            if each_part:
                pieces = [p for p in parts if p.strip()]
                if len(pieces) > 1:
                    texts.extend((i, p) for p in dict.fromkeys(pieces))
    return texts, ignored


def rough_size(data: Any) -> int:
    """Characters of text in a request, cheaply (for deciding where to prepare it)."""
    if isinstance(data, str):
        return len(data)
    total = 0
    if isinstance(data, Sequence):
        for msg in data:
            content = msg.get("content") if isinstance(msg, Mapping) else None
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, Sequence):
                total += sum(
                    len(p.get("text") or "")
                    for p in content
                    if isinstance(p, Mapping) and isinstance(p.get("text"), str)
                )
    return total
