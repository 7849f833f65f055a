"""features.py: windowing arithmetic and the row operations of WindowFeatures (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alknet_firewall.features import Window, WindowFeatures, make_windows
from alknet_firewall.model import ActivationModel
from tests.fakes import FakeModel


def test_make_windows_steps_by_size_minus_overlap() -> None:
    wins = make_windows([list(range(100)), [], [7, 8]], max_tokens=32, overlap=8)
    first = [w for w in wins if w.text == 0]
    assert [w.start for w in first] == [0, 24, 48, 72]  # 72 + 32 >= 100 ends it
    assert [w.index for w in first] == [0, 1, 2, 3]
    assert first[-1].content == list(range(72, 100))
    assert [w for w in wins if w.text == 1] == [Window(1, 0, 0, [])]  # an empty text: one window
    assert [w for w in wins if w.text == 2] == [Window(2, 0, 0, [7, 8])]
    with pytest.raises(ValueError):
        make_windows([[1]], max_tokens=8, overlap=8)


def _feats() -> WindowFeatures:
    # 3 texts: text 0 has two windows and a span row, text 1 one window, text 2 one window.
    return WindowFeatures(
        features={8: np.arange(10, dtype=np.float32).reshape(5, 2)},
        text_index=np.array([0, 0, 0, 1, 2]),
        window_index=np.array([0, 1, 1, 0, 0]),
        token_start=np.array([0, 24, 30, 0, 0]),
        n_tokens=np.array([32, 10, 4, 5, 6]),
        n_texts=3,
        is_sub=np.array([False, False, True, False, False]),
    )


def test_only_full_and_per_text() -> None:
    f = _feats()
    full = f.only_full()
    assert len(full.text_index) == 4 and full.is_sub is None
    per = f.per_text("mean")[8]
    assert per.shape == (3, 2)
    np.testing.assert_allclose(per[0], (32 * np.array([0, 1]) + 10 * np.array([2, 3])) / 42)
    np.testing.assert_allclose(f.per_text("last")[8][0], [2, 3])


def test_subset_reindexes_texts() -> None:
    sub = _feats().subset(np.array([False, True, True]))
    assert sub.n_texts == 2
    assert sub.text_index.tolist() == [0, 1]
    np.testing.assert_array_equal(sub.features[8], [[6, 7], [8, 9]])


def test_concat_and_save_load_round_trip(tmp_path: Path) -> None:
    a, b = _feats(), _feats().subset(np.array([True, False, False]))
    both = WindowFeatures.concat([a, b])
    assert both.n_texts == 4
    assert both.text_index.tolist() == [0, 0, 0, 1, 2, 3, 3, 3]
    path = tmp_path / "f.npz"
    both.save(path, key="k1")
    assert WindowFeatures.saved_key(path) == "k1"
    back = WindowFeatures.load(path)
    assert back.n_texts == both.n_texts
    for field in ("text_index", "window_index", "token_start", "n_tokens", "is_sub"):
        np.testing.assert_array_equal(getattr(back, field), getattr(both, field))
    np.testing.assert_array_equal(back.features[8], both.features[8])


def test_fake_model_implements_the_protocol() -> None:
    model = FakeModel()
    assert isinstance(model, ActivationModel)
    feats = model.encode_windows(["a b c", "x " * 50])
    assert feats.n_texts == 2 and feats.features[8].shape[1] == model.feature_size


def test_window_spans_cover_the_window_flush_to_its_end() -> None:
    from alknet_firewall.features import window_spans

    assert window_spans(0, 32, 16) == []
    assert window_spans(100, 0, 16) == []
    assert window_spans(20, 32, 16) == [(0, 20)]
    # Fewer tokens than the span floor: no span row (a 1-token "ok" span scored like an attack).
    assert window_spans(7, 32, 16) == []
    assert window_spans(8, 32, 16) == [(0, 8)]
    assert window_spans(32, 32, 16) == [(0, 32)]
    spans = window_spans(128, 32, 16)
    assert spans[0] == (0, 32) and spans[-1] == (96, 32) and len(spans) == 7
    odd = window_spans(70, 32, 16)
    assert odd[-1] == (38, 32) and all(length == 32 for _, length in odd)


def test_row_plan_lists_each_window_then_its_spans() -> None:
    from alknet_firewall.features import Window, plan_rows, window_spans

    # Text 0: 34 tokens in windows [0, 32) and [24, 34); text 1: empty.
    wins = [
        Window(0, 0, 0, list(range(32))),
        Window(0, 1, 24, list(range(10))),
        Window(1, 0, 0, []),
    ]
    plan = plan_rows(wins, lambda n: window_spans(n, 16, 8), edge=0)
    assert plan.row_of == [[0, 1, 2, 3], [4, 5], [6]]
    assert plan.spans_of == [[(0, 16), (8, 16), (16, 16)], [(0, 10)], []]
    assert plan.token_start == [0, 0, 8, 16, 24, 24, 0]
    assert plan.n_tokens == [32, 16, 16, 16, 10, 10, 0]
    assert plan.is_sub == [False, True, True, True, False, True, False]
    # Edges: the text's first 4 tokens (window 0) and its last 4 (window 1, tokens 30-33).
    edged = plan_rows(wins[:2], lambda n: [], edge=4)
    assert edged.spans_of == [[(0, 4)], [(6, 4)]]
    feats = plan.features({8: np.zeros((7, 4), dtype=np.float32)}, n_texts=2)
    assert feats.full.tolist() == [True, False, False, False, True, False, True]


def test_pool_plan_names_the_positions_of_every_row() -> None:
    from alknet_firewall.features import plan_pooling, plan_rows, window_spans

    wins = [
        Window(0, 0, 0, list(range(32))),
        Window(0, 1, 24, list(range(10))),
        Window(1, 0, 0, []),
    ]
    rows = plan_rows(wins, lambda n: window_spans(n, 16, 8))
    template = {"prefix": [1, 2, 3], "suffix": [9, 9], "pad_id": 0}
    plan = plan_pooling(rows, wins, [2, 0, 1], **template, pooling="mean", pool_suffix=True)
    assert plan.seqs[0] == [1, 2, 3, 9, 9]
    assert plan.seqs[1] == [1, 2, 3, *range(32), 9, 9]
    # Content and end-of-turn tokens; an empty window is read from its end-of-turn tokens.
    assert plan.mean_range.tolist() == [[3, 5], [3, 37], [3, 15]]
    assert plan.last_pos.tolist() == [4, 36, 14]
    # The sequences' rows, then the spans' (positions inside the template).
    assert plan.rows == [6, 0, 4, 1, 2, 3, 5]
    assert plan.span_seq.tolist() == [1, 1, 1, 2]
    assert plan.span_start.tolist() == [3, 11, 19, 3]
    assert plan.span_len.tolist() == [16, 16, 16, 10]
    assert plan.mean and not plan.last
    mask = plan.mean_mask(40)
    assert mask.dtype == np.float32 and mask.sum(1).tolist() == [2, 34, 12]
    # Without the suffix in the mean; without a template an empty window is one pad token.
    assert plan_pooling(
        rows, wins, [0], **template, pooling="mean", pool_suffix=False
    ).mean_range.tolist() == [[3, 35]]
    bare = plan_pooling(
        rows, wins, [2, 1], prefix=[], suffix=[], pad_id=7, pooling="both", pool_suffix=True
    )
    assert bare.seqs[0] == [7] and bare.mean_range.tolist() == [[0, 1], [0, 10]]
    assert bare.mean and bare.last and bare.last_pos.tolist() == [0, 9]
    with pytest.raises(ValueError, match="pooling"):
        plan_pooling(rows, wins, [0], **template, pooling="max", pool_suffix=True)
