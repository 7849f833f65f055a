"""Span rows: short spans inside a window are pooled on their own (no extra forward pass)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alknet_firewall.config import ModelSettings
from alknet_firewall.features import MIN_SPAN_TOKENS
from alknet_firewall.model import load_model

pytestmark = pytest.mark.slow


def test_span_rows_are_means_over_their_tokens(embedded_location: object) -> None:
    m = load_model(
        ModelSettings(
            dtype="float32",
            reading={
                "layers": (4,),
                "max_tokens": 64,
                "window_overlap": 8,
                "pool_suffix": False,
                "sub_window": 32,
            },
        )
    )
    text = " ".join(f"word{i}" for i in range(60))
    n = m.count_tokens([text])[0]
    wf = m.encode_windows([text])
    first = wf.window_index == 0
    spans = wf.is_sub & first
    starts = wf.token_start[spans].tolist()
    assert starts == [a for a, _ in m.spans(min(n, 64))]
    assert (
        starts[0] == 0
        and starts[-1] == 64 - 32
        and all(b - a <= 16 for a, b in itertools.pairwise(starts))
    )
    hs = m.hidden_states(text[: len(text)])  # whole text in one pass, template applied
    p = len(m._prefix)
    full = wf.features[4][first & ~wf.is_sub][0]
    # The first window covers tokens 0..63: its mean and its span means match the full pass.
    assert np.allclose(full, hs[4, p : p + 64].mean(0).numpy(), atol=1e-4)
    for row, a in zip(np.flatnonzero(spans), starts, strict=True):
        assert np.allclose(
            wf.features[4][row], hs[4, p + a : p + a + 32].mean(0).numpy(), atol=1e-4
        )
    # Per-text features ignore span rows.
    assert np.allclose(wf.per_text("mean")[4], wf.only_full().per_text("mean")[4])
    # A window of fewer than MIN_SPAN_TOKENS tokens has no span row ("ok" is read whole).
    assert not m.encode_windows(["just a few words"]).is_sub.any()
    short_text = "just a few more words than eight, which is the floor"
    short = m.encode_windows([short_text])
    # A window no longer than a span is one span: its content without the end-of-turn tokens.
    assert MIN_SPAN_TOKENS <= m.count_tokens([short_text])[0] <= 32
    assert short.is_sub.sum() == 1
    k = m.count_tokens([short_text])[0]
    hs_short = m.hidden_states(short_text)
    assert np.allclose(
        short.features[4][short.is_sub][0], hs_short[4, p : p + k].mean(0).numpy(), atol=1e-4
    )
    off = load_model(
        ModelSettings(dtype="float32", reading={"layers": (4,), "max_tokens": 64})
    )  # default: 0
    assert not off.encode_windows([text]).is_sub.any()


def test_suffix_pooling_covers_the_end_of_turn_tokens(embedded_location: object) -> None:
    m = load_model(ModelSettings(dtype="float32", reading={"layers": (4,), "pool_suffix": True}))
    assert m._suffix, "SmolLM2's template has end-of-turn tokens"
    for text in ("hi", "Please summarise the attached report in three bullet points."):
        n = m.count_tokens([text])[0]
        hs = m.hidden_states(text)
        p, s = len(m._prefix), len(m._suffix)
        got = m.encode_windows([text]).features[4][0]
        assert np.allclose(got, hs[4, p : p + n + s].mean(0).numpy(), atol=1e-4)
        assert not np.allclose(got, hs[4, p : p + n].mean(0).numpy(), atol=1e-3)
