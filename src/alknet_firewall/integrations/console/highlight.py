"""The driving window of a verdict, as character offsets in the text the model read.

A verdict's evidence names a token span (``window.token_start``, ``window.n_tokens``) of one
screened text: the message after normalisation (:mod:`alknet_firewall.normalize`), or a seam
between two messages. The span is mapped to characters *of that text* with the tokenizer's own
offsets; the console shows that text, and says when it differs from what was sent, instead of
guessing where a normalised character came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "char_span",
    "highlight",
    "token_offsets",
]


def _raw_tokenizer(model: Any) -> Any | None:
    """The model's ``tokenizers.Tokenizer``: its own (ONNX and remote backends) or the one
    behind a transformers fast tokenizer."""
    for name in ("tokenizer", "_tokenizer"):
        tok = getattr(model, name, None)
        if tok is None:
            continue
        raw = getattr(tok, "backend_tokenizer", None) or tok
        if callable(getattr(raw, "encode", None)) and hasattr(raw, "encode_batch"):
            return raw
    return None


def token_offsets(model: Any, text: str) -> list[tuple[int, int]] | None:
    """Character offsets ``(start, end)`` of each token ``model.tokenize([text])`` gives, or
    None when the model cannot tell (no fast tokenizer, or its offsets tokenise differently).

    A model may provide ``token_offsets(text)`` itself.
    """
    own = getattr(model, "token_offsets", None)
    if callable(own):
        return [(int(a), int(b)) for a, b in own(text)]
    raw = _raw_tokenizer(model)
    if raw is None:
        return None
    try:
        enc = raw.encode(text, add_special_tokens=False)
        ids, offsets = list(enc.ids), list(enc.offsets)
    except (AttributeError, TypeError, ValueError):
        return None
    if ids != list(model.tokenize([text])[0]):
        return None  # not the tokenisation the model screened: no span rather than a wrong one
    return [(int(a), int(b)) for a, b in offsets]


def char_span(
    offsets: Sequence[tuple[int, int]], token_start: int, n_tokens: int
) -> tuple[int, int] | None:
    """Characters covered by tokens ``token_start .. token_start + n_tokens - 1``.

    Byte-level tokens that split one character share its offsets; the span covers every
    character any of its tokens touches.
    """
    if n_tokens <= 0 or token_start < 0 or token_start >= len(offsets):
        return None
    chosen = offsets[token_start : token_start + n_tokens]
    return min(a for a, _ in chosen), max(b for _, b in chosen)


def highlight(model: Any, text: str, window: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"start", "end", "token_start", "n_tokens", "tokens"}`` for a verdict's ``window`` in
    ``text`` (the screened text), or None when there is no window or no offsets."""
    if not window or not text:
        return None
    offsets = token_offsets(model, text)
    if offsets is None:
        return None
    a, n = int(window.get("token_start", 0)), int(window.get("n_tokens", 0))
    span = char_span(offsets, a, n)
    if span is None:
        return None
    return {
        "start": span[0],
        "end": span[1],
        "token_start": a,
        "n_tokens": n,
        "tokens": len(offsets),
    }
