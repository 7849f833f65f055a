"""JSONL scans: screen lines in chunks and write each input line back with its verdict.

Used by ``alknet-firewall scan`` and by the Ray Data scan (``scan --engine ray``), so both give
identical output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .errors import BadInputError

__all__ = ["input_of", "scan_chunk", "scan_line", "splice"]


def input_of(obj: Any) -> Any:
    """The screenable part of a JSONL object: ``messages`` or ``text``."""
    if isinstance(obj, dict):
        if "messages" in obj:
            return obj["messages"]
        if isinstance(obj.get("text"), str):
            return obj["text"]
    raise BadInputError("each line must be an object with 'text' (string) or 'messages' (list)")


def scan_chunk(fw: Any, chunk: Sequence[str], policy: str | None) -> list[tuple[str, Any]]:
    """Screen JSONL lines together: ``(outcome, output line)`` per line, where an
    unparseable line's output is ``{"error": ...}`` waiting for its line number
    (:func:`scan_line`). The outcome is the verdict's action, ``error`` for a line that is not
    valid input, or ``failed:<code>`` when screening failed (a fail-mode verdict, with its
    ``error``; or a firewall error). The local and the Ray Data scan both use it."""
    parsed: list[Any] = []
    for line in chunk:
        try:
            obj = json.loads(line)
            parsed.append((obj, input_of(obj), None))
        except (json.JSONDecodeError, BadInputError) as exc:
            parsed.append((None, None, str(exc)))
    ok = [i for i, p in enumerate(parsed) if p[2] is None]
    verdicts: dict[int, Any] = {}
    if ok:
        results = fw.screen_many([parsed[i][1] for i in ok], policy=policy, return_exceptions=True)
        verdicts = dict(zip(ok, results, strict=True))
    out: list[tuple[str, Any]] = []
    for i, line in enumerate(chunk):
        obj, _, err = parsed[i]
        v = verdicts.get(i)
        outcome = "error"
        if isinstance(v, BaseException):
            err = f"{v.__class__.__name__}: {v}"
            if not isinstance(v, BadInputError):
                outcome = f"failed:{getattr(v, 'code', None) or type(v).__name__}"
            v = None
        if err is not None:
            out.append(
                (outcome, splice(line, obj, "error", err) if obj is not None else {"error": err})
            )
            continue
        outcome = f"failed:{v.error_code or 'error'}" if v.error is not None else v.action
        out.append((outcome, splice(line, obj, "verdict", v.to_dict())))
    return out


def scan_line(text: Any, number: int) -> str:
    """An output line of :func:`scan_chunk`, numbered if it is a bare error record."""
    if isinstance(text, dict):
        return json.dumps({"line": number, **text})
    return str(text)


def splice(line: str, obj: dict[str, Any], key: str, value: Any) -> str:
    """The input line, byte for byte, with one key appended to the object."""
    payload = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    stripped = line.rstrip()
    if key in obj or not stripped.endswith("}"):
        obj = dict(obj)
        obj[key] = value
        return json.dumps(obj, ensure_ascii=False)
    body = stripped[:-1].rstrip()
    sep = "" if body.endswith("{") else ", "
    return f'{body}{sep}"{key}": {payload}}}'
