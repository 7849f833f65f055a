"""Windows of token ids and the pooled features of every window (numpy only).

What flows between a model backend, the codebook and the scorer: :func:`make_windows` splits
token ids into overlapping windows (pure token arithmetic), :func:`plan_rows` and
:func:`plan_pooling` say which rows a model produces and which token positions each reduces over,
a model turns windows into :class:`WindowFeatures`, and every row operation on those (dropping
span rows, one row per text, a subset of texts, concatenation, ``.npz`` round trips) lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

__all__ = [
    "MIN_SPAN_TOKENS",
    "PoolPlan",
    "RowPlan",
    "Window",
    "WindowFeatures",
    "make_windows",
    "plan_pooling",
    "plan_rows",
    "window_spans",
]

#: A window of fewer content tokens has no span row: the mean of a few tokens is one token's
#: identity ("ok" read as a span scored like an injection; ADR 0008), and the whole-window row
#: already reads it.
MIN_SPAN_TOKENS = 8


@dataclass(frozen=True)
class Window:
    """Window ``index`` of text ``text``: the content tokens from token ``start`` on."""

    text: int
    index: int
    start: int
    content: list[int]


def window_spans(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Spans ``(start, length)`` of ``size`` content tokens every ``stride`` tokens inside a
    window of ``n`` content tokens, the last one flush with the window's end; a window of at
    most ``size`` tokens is one span (its whole content). ``size`` 0, or a window of fewer than
    :data:`MIN_SPAN_TOKENS` tokens: none.

    Span rows are scored on their own, so a short instruction is not diluted by the window
    around it (``docs/adr/0007-detection-v2.md``)."""
    if size <= 0 or n < MIN_SPAN_TOKENS:
        return []
    if n <= size:
        return [(0, n)]
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return [(a, size) for a in starts]


@dataclass(frozen=True)
class RowPlan:
    """Which feature rows a batch of windows produces: per window its whole-window row, then its
    span rows (and edge rows), with their token positions. Every backend pools into this plan,
    so they agree row for row."""

    #: Row numbers of each window (first: the whole window).
    row_of: list[list[int]]
    #: Spans ``(start, length)`` of each window, in the order of ``row_of[j][1:]``.
    spans_of: list[list[tuple[int, int]]]
    text_index: list[int]
    window_index: list[int]
    token_start: list[int]
    n_tokens: list[int]
    is_sub: list[bool]

    def features(self, pooled: dict[int, np.ndarray], n_texts: int) -> WindowFeatures:
        """The plan's rows filled with ``pooled`` (``[rows, feature_size]`` per layer)."""
        return WindowFeatures(
            features=pooled,
            text_index=np.array(self.text_index, dtype=np.int64),
            window_index=np.array(self.window_index, dtype=np.int64),
            token_start=np.array(self.token_start, dtype=np.int64),
            n_tokens=np.array(self.n_tokens, dtype=np.int64),
            n_texts=n_texts,
            is_sub=np.array(self.is_sub, dtype=bool),
        )


def plan_rows(
    wins: Sequence[Window], spans: Callable[[int], list[tuple[int, int]]], edge: int = 0
) -> RowPlan:
    """The row plan of ``wins``: ``spans(n)`` gives a window's span rows; with ``edge`` the
    first and last ``edge`` tokens of every text longer than twice that get a row too."""
    text_end: dict[int, int] = {}
    for w in wins:
        text_end[w.text] = max(text_end.get(w.text, 0), w.start + len(w.content))
    plan = RowPlan([], [], [], [], [], [], [])
    for w in wins:
        n = len(w.content)
        extra = list(spans(n))
        if edge and n > 2 * edge:
            if w.start == 0:
                extra.append((0, edge))
            if w.start + n == text_end[w.text]:
                extra.append((n - edge, edge))
        rows = []
        for a, length in [(0, n), *extra]:
            rows.append(len(plan.text_index))
            plan.text_index.append(w.text)
            plan.window_index.append(w.index)
            plan.token_start.append(w.start + a)
            plan.n_tokens.append(length)
            plan.is_sub.append(len(rows) > 1)
        plan.row_of.append(rows)
        plan.spans_of.append(extra)
    return plan


@dataclass(frozen=True)
class PoolPlan:
    """How one forward batch of windows becomes feature rows: the token sequences to run and
    the positions each row reduces over. A backend only runs :attr:`seqs` and reduces its hidden
    states ``[len(seqs), width, hidden]`` along the plan, in the rows order :attr:`rows`:

    - one row per sequence: the mean over ``mean_range[i]`` (``mean``) and/or the hidden state at
      ``last_pos[i]`` (``last``), side by side when both (pooling ``both``);
    - then one row per span: the mean over ``span_len[k]`` positions of sequence ``span_seq[k]``
      from ``span_start[k]`` (spans exist with mean pooling only).
    """

    #: Template prefix + window content + suffix (a lone pad token when that is empty).
    seqs: list[list[int]]
    #: Feature-matrix row of each pooled row: the sequences' rows, then the spans'.
    rows: list[int]
    mean: bool
    last: bool
    #: ``[len(seqs), 2]`` start and stop position of each whole-window mean.
    mean_range: np.ndarray
    #: ``[len(seqs)]`` the last position of each sequence.
    last_pos: np.ndarray
    span_seq: np.ndarray
    span_start: np.ndarray
    span_len: np.ndarray

    def mean_mask(self, width: int) -> np.ndarray:
        """``[len(seqs), width]`` float32: 1 at the positions of each whole-window mean."""
        mask = np.zeros((len(self.seqs), width), dtype=np.float32)
        for r, (a, b) in enumerate(self.mean_range.tolist()):
            mask[r, a:b] = 1.0
        return mask


def plan_pooling(
    rows: RowPlan,
    wins: Sequence[Window],
    idx: Sequence[int],
    *,
    prefix: Sequence[int],
    suffix: Sequence[int],
    pad_id: int,
    pooling: str,
    pool_suffix: bool,
) -> PoolPlan:
    """The pooling plan of windows ``idx`` of ``wins`` (row numbers from ``rows``), read inside
    the chat template ``prefix`` / ``suffix``.

    The whole-window mean covers the content tokens and, with ``pool_suffix``, the end-of-turn
    tokens that have read all of them (they keep very short messages such as "hi" from being
    judged on one token alone); a window without content is read from its last ``len(suffix)``
    positions (at least one). Spans are content positions.
    """
    if pooling not in ("mean", "last", "both"):
        raise ValueError(f"pooling must be 'mean', 'last' or 'both', not {pooling!r}")
    p, s = len(prefix), len(suffix)
    seqs: list[list[int]] = []
    mean_range: list[tuple[int, int]] = []
    spans: list[tuple[int, int, int, int]] = []  # (sequence, start position, length, row)
    for r, j in enumerate(idx):
        n = len(wins[j].content)
        seq = [*prefix, *wins[j].content, *suffix] or [pad_id]
        seqs.append(seq)
        if n:
            mean_range.append((p, p + n + (s if pool_suffix else 0)))
        else:
            mean_range.append((len(seq) - max(s, 1), len(seq)))
        spans += [
            (r, p + a, length, row)
            for row, (a, length) in zip(rows.row_of[j][1:], rows.spans_of[j], strict=True)
        ]
    return PoolPlan(
        seqs=seqs,
        rows=[rows.row_of[j][0] for j in idx] + [row for *_, row in spans],
        mean=pooling in ("mean", "both"),
        last=pooling in ("last", "both"),
        mean_range=np.array(mean_range, dtype=np.int64).reshape(-1, 2),
        last_pos=np.array([len(x) - 1 for x in seqs], dtype=np.int64),
        span_seq=np.array([x[0] for x in spans], dtype=np.int64),
        span_start=np.array([x[1] for x in spans], dtype=np.int64),
        span_len=np.array([x[2] for x in spans], dtype=np.int64),
    )


def make_windows(token_ids: Sequence[Sequence[int]], max_tokens: int, overlap: int) -> list[Window]:
    """Split every text's token ids into windows of ``max_tokens`` tokens, consecutive windows
    sharing ``overlap`` tokens; every text (an empty one too) gets at least one window."""
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"need 0 <= overlap < max_tokens, got {overlap} and {max_tokens}")
    step = max_tokens - overlap
    out: list[Window] = []
    for t, ids in enumerate(token_ids):
        start, k = 0, 0
        while True:
            out.append(Window(t, k, start, list(ids[start : start + max_tokens])))
            if start + max_tokens >= len(ids):
                break
            start += step
            k += 1
    return out


@dataclass(frozen=True)
class WindowFeatures:
    """Pooled features of every window of a batch of texts.

    ``features[layer]`` has shape ``[n_windows, feature_size]``; window ``j`` belongs to text
    ``text_index[j]`` and is that text's ``window_index[j]``-th window, covering ``n_tokens[j]``
    content tokens starting at token ``token_start[j]``.
    """

    features: dict[int, np.ndarray]
    text_index: np.ndarray
    window_index: np.ndarray
    token_start: np.ndarray
    n_tokens: np.ndarray
    n_texts: int
    #: True for span rows: the mean over a short span inside a window (see ``sub_window``).
    is_sub: np.ndarray | None = None

    @property
    def full(self) -> np.ndarray:
        """Mask of whole-window rows."""
        if self.is_sub is None:
            return np.ones(len(self.text_index), dtype=bool)
        return ~self.is_sub

    def _rows(self, keep: np.ndarray, text_index: np.ndarray, n_texts: int) -> WindowFeatures:
        return WindowFeatures(
            features={k: v[keep] for k, v in self.features.items()},
            text_index=text_index,
            window_index=self.window_index[keep],
            token_start=self.token_start[keep],
            n_tokens=self.n_tokens[keep],
            n_texts=n_texts,
            is_sub=None if self.is_sub is None else self.is_sub[keep],
        )

    def drop_rows(self, mask: np.ndarray) -> WindowFeatures:
        """The same texts without the rows in ``mask`` (one bool per row)."""
        keep = ~np.asarray(mask, dtype=bool)
        return self._rows(keep, self.text_index[keep], self.n_texts)

    def without_short_spans(self) -> WindowFeatures:
        """Without span rows of fewer than :data:`MIN_SPAN_TOKENS` tokens (features extracted
        before that rule read as if extracted after it)."""
        return self.drop_rows(~self.full & (self.n_tokens < MIN_SPAN_TOKENS))

    def only_full(self) -> WindowFeatures:
        """The same features without span rows."""
        if self.is_sub is None or not self.is_sub.any():
            return self
        keep = ~self.is_sub
        return replace(self._rows(keep, self.text_index[keep], self.n_texts), is_sub=None)

    def subset(self, text_mask: np.ndarray) -> WindowFeatures:
        """The rows of the texts in ``text_mask`` (one bool per text), texts re-indexed."""
        keep = text_mask[self.text_index]
        new_index = np.cumsum(text_mask) - 1
        return self._rows(keep, new_index[self.text_index[keep]], int(text_mask.sum()))

    @classmethod
    def concat(cls, parts: Sequence[WindowFeatures]) -> WindowFeatures:
        """The rows of ``parts`` one after the other, as one batch of texts."""
        offsets = np.cumsum([0] + [p.n_texts for p in parts])
        layers = parts[0].features.keys()
        return cls(
            features={k: np.concatenate([p.features[k] for p in parts]) for k in layers},
            text_index=np.concatenate(
                [p.text_index + o for p, o in zip(parts, offsets, strict=False)]
            ),
            window_index=np.concatenate([p.window_index for p in parts]),
            token_start=np.concatenate([p.token_start for p in parts]),
            n_tokens=np.concatenate([p.n_tokens for p in parts]),
            n_texts=int(offsets[-1]),
            is_sub=np.concatenate([~p.full for p in parts]),
        )

    def select(self, texts: Sequence[int]) -> WindowFeatures:
        """The rows of ``texts`` (text numbers, repeats allowed), as a batch in that order."""
        order = np.argsort(self.text_index, kind="stable")
        counts = np.bincount(self.text_index, minlength=self.n_texts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rows = [order[starts[t] : starts[t] + counts[t]] for t in texts]
        keep = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        text_index = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
        return WindowFeatures(
            features={k: v[keep] for k, v in self.features.items()},
            text_index=text_index.astype(np.int64),
            window_index=self.window_index[keep],
            token_start=self.token_start[keep],
            n_tokens=self.n_tokens[keep],
            n_texts=len(rows),
            is_sub=None if self.is_sub is None else self.is_sub[keep],
        )

    def save(
        self, path: str | Path, key: str = "", extra: dict[str, np.ndarray] | None = None
    ) -> None:
        """Write an ``.npz`` file; ``key`` records what made it (see
        ``training.corpus.cached_extract``). The file is written next to ``path`` and moved into
        place, so a reader never sees half of it."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            **(extra or {}),
            key=np.array(key),
            text_index=self.text_index,
            window_index=self.window_index,
            token_start=self.token_start,
            n_tokens=self.n_tokens,
            n_texts=np.array(self.n_texts),
            is_sub=~self.full,
            **{f"layer_{k}": v for k, v in self.features.items()},
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> WindowFeatures:
        """Read a file written by :meth:`save`."""
        d = np.load(path)
        return cls(
            features={int(k.split("_")[1]): d[k] for k in d.files if k.startswith("layer_")},
            text_index=d["text_index"],
            window_index=d["window_index"],
            token_start=d["token_start"],
            n_tokens=d["n_tokens"],
            n_texts=int(d["n_texts"]),
            is_sub=d["is_sub"] if "is_sub" in d.files else None,
        )

    @staticmethod
    def saved_key(path: str | Path) -> str | None:
        """The ``key`` a file written by :meth:`save` records (None when it has none)."""
        with np.load(path) as d:
            return str(d["key"]) if "key" in d.files else None

    def per_text(self, pooling: str) -> dict[int, np.ndarray]:
        """Aggregate windows to one row per text (token-weighted mean; last window for 'last')."""
        if self.is_sub is not None and self.is_sub.any():
            return self.only_full().per_text(pooling)
        out: dict[int, np.ndarray] = {}
        # The last window of each text: the one with the highest window_index.
        last_win = np.zeros(self.n_texts, dtype=np.int64)
        for j in np.lexsort((self.window_index, self.text_index)):
            last_win[self.text_index[j]] = j
        w = np.maximum(self.n_tokens, 1).astype(np.float64)
        sums = np.zeros(self.n_texts)
        np.add.at(sums, self.text_index, w)
        for layer, f in self.features.items():
            hidden = f.shape[1] // (2 if pooling == "both" else 1)
            agg = np.zeros((self.n_texts, f.shape[1]), dtype=np.float64)
            np.add.at(agg, self.text_index, f.astype(np.float64) * w[:, None])
            agg /= sums[:, None]
            if pooling == "last":
                agg = f[last_win].astype(np.float64)
            elif pooling == "both":
                agg[:, hidden:] = f[last_win, hidden:]
            out[layer] = agg.astype(np.float32)
        return out
