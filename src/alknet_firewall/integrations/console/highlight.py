"""The driving window of a verdict, as character offsets in the text the model read.

A verdict's evidence names a token span (``window.token_start``, ``window.n_tokens``) of one
screened text: the message after normalisation (:mod:`alknet_firewall.normalize`), or a seam
between two messages. The span is mapped to characters *of that text* with the model's own token
offsets (``model.token_offsets``); the console shows that text, and says when it differs from
what was sent, instead of guessing where a normalised character came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from ...model.base import ActivationModel

__all__ = [
    "char_span",
    "highlight",
]


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


def highlight(
    model: ActivationModel, text: str, window: dict[str, Any] | None
) -> dict[str, Any] | None:
    """``{"start", "end", "token_start", "n_tokens", "tokens"}`` for a verdict's ``window`` in
    ``text`` (the screened text), or None when there is no window or the model cannot give
    offsets (:meth:`~alknet_firewall.model.base.ActivationModel.token_offsets` raised)."""
    if not window or not text:
        return None
    try:
        offsets = model.token_offsets(text)
    except ModelError:
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
