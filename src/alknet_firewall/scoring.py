"""Codebook + activations → calibrated per-signal scores, composed and explained.

Every signal score lives on one scale: ``score = -log10(p) / 4`` clipped to [0, 1], where ``p``
is the probability that a benign text scores at least this high (from the codebook's spline
distributions). So 0.5 means "1 in 100 benign texts look this suspicious", 0.75 "1 in 1,000".
The message score is the maximum over the enabled signals; long texts are scored per window and
the worst window counts. :func:`adjust` then reads a text in its context (its calibration group:
short texts, languages; the critical floor for a few tokens) and :func:`request_score` as
evidence about the whole request — one rule for fitting, evaluation and the firewall
(``docs/adr/0008-detection-v3.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codebook import Codebook
from .constants import ALARM_LEVELS, LEVELS, Level
from .distributions import surprise, surprise_inverse
from .features import WindowFeatures
from .language import guess_language

__all__ = [
    "LANGUAGE_GROUPS",
    "MIN_CRITICAL_TOKENS",
    "SHORT_TOKENS",
    "Adjusted",
    "Context",
    "Evidence",
    "ScoredBatch",
    "Scorer",
    "Scores",
    "adjust",
    "group_key",
    "has_group",
    "language_of",
    "level_for",
    "request_score",
    "text_context",
]

#: A text of at most this many content tokens is *short* ("ok", "yes please"): it is scored
#: against short benign texts as well (``group.short`` of the codebook).
SHORT_TOKENS = 16
#: Evidence from a text of fewer content tokens never reaches ``critical`` on its own: a few
#: tokens carry too little evidence to block (they can still be flagged).
MIN_CRITICAL_TOKENS = 8
#: Language codes (``language.guess_language``) → the calibration group that holds them. Other
#: non-English codes have no calibration texts: the codebook has not seen them.
LANGUAGE_GROUPS: dict[str, str] = {
    "fr": "latin",
    "de": "latin",
    "es": "latin",
    "it": "latin",
    "pt": "latin",
    "nl": "latin",
    "zh": "cjk",
    "ja": "cjk",
}


def language_of(text: str) -> str | None:
    """The language code of a text that is not English at its start *and* at its end (an
    English instruction after a foreign preamble is English), else None."""
    head, tail = guess_language(text[:2000]), guess_language(text[-2000:])
    return None if head.english or tail.english else head.code


@dataclass(frozen=True)
class Context:
    """What scoring knows of a text besides its activations: the group it is calibrated in."""

    #: ``default``, ``short``, or ``lang:<group>`` (``lang:latin``, ``lang:cjk``, or
    #: the bare language code of a language no group holds, e.g. ``lang:bn``).
    group: str
    #: The non-English language code, else None.
    language: str | None
    #: Content tokens of the text.
    tokens: int


def text_context(text: str, n_tokens: int) -> Context:
    """The calibration group of ``text`` (``n_tokens`` content tokens): its language group when
    it is not English, else ``short`` up to :data:`SHORT_TOKENS` tokens, else ``default``.

    (A ``long`` group, texts beyond 256 tokens, was measured and dropped: it lowered long
    jailbreak templates with the long benign texts, 72.6 → 46.8 % flagged; ADR 0008.)"""
    lang = language_of(text)
    if lang is not None:
        group = "lang:" + LANGUAGE_GROUPS.get(lang, lang)
    elif n_tokens <= SHORT_TOKENS:
        group = "short"
    else:
        group = "default"
    return Context(group, lang, int(n_tokens))


@dataclass(frozen=True)
class Adjusted:
    """A text's alarm score after its context: the score, the signal that gave it, the highest
    level it may reach, and notes for the verdict."""

    score: float
    signal: str | None
    max_level: Level
    notes: tuple[str, ...] = ()


def group_key(group: str, signal: str) -> str:
    """The codebook key of a signal's benign distribution within a calibration group."""
    return f"{group}.{signal}"


def has_group(codebook: Codebook, group: str) -> bool:
    """Whether the codebook holds benign distributions for ``group``."""
    return any(k.startswith(group + ".") for k in codebook.group_knots)


def adjust(
    codebook: Codebook,
    signals: Mapping[str, float],
    ctx: Context,
    *,
    languages: str = "calibrate",
) -> Adjusted:
    """The one rule (fit, evaluation and runtime) for scoring a text in its context.

    ``signals`` are the text's (unclipped) scores of the signals that may alarm; the result is
    the highest of them after this rule:

    * A text of a calibrated group (short texts, a language group the codebook holds benign
      texts of) has each signal scored against that signal's scores on the group's benign texts
      as well, and the lower of the two counts: a group whose benign texts look unusual to a
      signal (short replies to `injection`, Chinese prose) does not alarm for being that group;
      a group that looks ordinary keeps the global score. Per signal, so that one signal's
      benign tail (harmful-sounding short questions) does not lower another's evidence.
    * ``languages="calibrate"``: a language no group holds is one the codebook has not seen:
      the score is kept but the level stops at ``notice``, noted ``unsupported_language:<code>``
      (the model cannot tell an attack from ordinary text in a script it does not read).
      ``"demote"`` lowers any non-English text one level instead (the v2 rule, applied by the
      caller, which knows the thresholds); ``"score"`` treats every text like English.
    * Fewer than :data:`MIN_CRITICAL_TOKENS` content tokens never reach ``critical``.
    """
    notes: list[str] = []
    max_level: Level = "critical"
    group = ctx.group
    if languages != "calibrate" and ctx.language is not None:
        group = "default"
        if languages == "demote":
            notes.append(f"unsupported_language:{ctx.language}")
    scores = dict(signals)
    if group != "default":
        if has_group(codebook, group):
            for name, value in scores.items():
                key = group_key(group, name)
                if key in codebook.group_knots:
                    # Unclipped: a strong text of a group keeps its headroom.
                    sf = codebook.spline(f"group.{key}").sf(np.array([value]))
                    scores[name] = min(value, float(surprise(sf, clip=False)[0]))
        elif ctx.language is not None:
            max_level = "notice"
            notes.append(f"unsupported_language:{ctx.language}")
    if ctx.tokens < MIN_CRITICAL_TOKENS and max_level == "critical":
        max_level = "warning"
    best = max(scores, key=lambda k: scores[k], default=None)
    score = float(scores[best]) if best is not None else 0.0
    return Adjusted(score, best, max_level, tuple(notes))


def request_score(score: float, n_texts: int, exponent: float) -> float:
    """A text's score as evidence about a whole request of ``n_texts`` screened texts.

    Every text of a request is another chance for benign traffic to cross a threshold, so the
    best text's tail probability ``p`` is corrected to ``1 - (1 - p) ** (n ** exponent)``
    (Šidák with ``n ** exponent`` effective texts: the texts of one conversation are
    dependent, and ``exponent`` is calibrated on assembled benign requests; 0 switches the
    correction off)."""
    if n_texts <= 1 or exponent <= 0.0:
        return score
    p = surprise_inverse(score)
    m = float(n_texts) ** exponent
    return float(surprise(-np.expm1(m * np.log1p(-min(p, 1.0 - 1e-12)))))


@dataclass(frozen=True)
class Evidence:
    """Where a signal's score came from."""

    signal: str
    score: float
    window: int
    token_start: int
    n_tokens: int
    layer: int
    #: Basis components that contributed most (index, contribution) on ``layer``.
    components: tuple[tuple[int, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "score": round(self.score, 6),
            "window": self.window,
            "token_start": self.token_start,
            "n_tokens": self.n_tokens,
            "layer": self.layer,
            "components": [[i, round(c, 4)] for i, c in self.components],
        }


@dataclass(frozen=True)
class Scores:
    """Scores of one text."""

    signals: dict[str, float]
    evidence: dict[str, Evidence]
    n_windows: int
    n_tokens: int

    def composite(
        self, enabled: Iterable[str] | None = None, *, cap: float | None = None
    ) -> tuple[float, str | None]:
        """Max score over the enabled signals and the signal that gave it (with ``cap``, scores
        above it count as equal, the first signal wins)."""
        names = [s for s in (self.signals if enabled is None else enabled) if s in self.signals]
        if not names:
            return 0.0, None

        def value(s: str) -> float:
            v = self.signals[s]
            return v if cap is None else min(v, cap)

        best = max(names, key=value)
        return value(best), best


@dataclass
class ScoredBatch:
    texts: list[Scores]
    composite: np.ndarray = field(default_factory=lambda: np.zeros(0))


class Scorer:
    """Applies a codebook to window features."""

    def __init__(self, codebook: Codebook, *, calibrated: bool = True, clip: bool = True) -> None:
        self.codebook = codebook
        self.calibrated = calibrated
        #: False: scores are not capped at 1.0 (evaluations rank beyond p = 1e-4).
        self.clip = clip
        cb = codebook
        self._layers = cb.layers
        self._offsets = np.cumsum([0] + [cb.layer_stats[x].mean.shape[0] for x in cb.layers])
        if cb.heads:
            self._W = np.stack([h.weight for h in cb.heads.values()], axis=1).astype(np.float32)
            self._b = np.array([h.bias for h in cb.heads.values()], dtype=np.float64)
        self._names = list(cb.heads)
        self._span_names = list(cb.span_heads)
        if cb.span_heads:
            self._Ws = np.stack([h.weight for h in cb.span_heads.values()], axis=1).astype(
                np.float32
            )
            self._bs = np.array([h.bias for h in cb.span_heads.values()], dtype=np.float64)
        from scipy.stats import chi2  # scipy.stats is slow to import

        self._chi2 = chi2

    # -- raw statistics ------------------------------------------------------------------------
    def raw_window_statistics(self, feats: WindowFeatures) -> dict[str, np.ndarray]:
        """Per row: each window head's logit on whole-window rows, each span head's logit
        (key ``span.<signal>``) on span rows, ``-inf`` where a head does not apply, and the
        anomaly statistic ``-log10 p`` on whole-window rows."""
        missing = [x for x in self._layers if x not in feats.features]
        if missing:
            raise ValueError(f"features lack codebook layers {missing}")
        out: dict[str, np.ndarray] = {}
        full = feats.full
        if self._names:
            # With span heads, window heads read whole windows only (span rows, ~7 a window,
            # belong to the span heads): compute their logits on those rows alone.
            rows = full if self._span_names else np.ones(len(full), dtype=bool)
            logits = np.full((len(full), len(self._names)), -np.inf)
            if rows.any():
                x = np.concatenate([feats.features[x][rows] for x in self._layers], axis=1)
                logits[rows] = x.astype(np.float32) @ self._W + self._b
            for j, name in enumerate(self._names):
                out[name] = logits[:, j]
        if self._span_names:
            span_rows = ~full
            logits = np.full((len(full), len(self._span_names)), -np.inf)
            if span_rows.any():
                x = feats.features[self.codebook.span_layer][span_rows].astype(np.float32)
                logits[span_rows] = x @ self._Ws + self._bs
            for j, name in enumerate(self._span_names):
                out[f"span.{name}"] = logits[:, j]
        # Anomaly is a whole-window statistic: short spans are noisy by nature.
        anomaly = np.zeros(len(full))
        if full.any():
            anomaly[full] = self._anomaly({x: feats.features[x][full] for x in self._layers})
        out["anomaly"] = anomaly
        return out

    def _anomaly(self, features: dict[int, np.ndarray]) -> np.ndarray:
        cb = self.codebook
        p_min = None
        for layer in self._layers:
            z, resid = cb.layer_stats[layer].statistics(features[layer])
            k = z.shape[1]
            pc = cb.components(layer).two_sided(z)
            fisher = -2.0 * np.log(pc).sum(1)
            p_f = self._chi2.sf(fisher, 2 * k)
            p_r = cb.spline(f"residual.{layer}").sf(resid)
            p = np.minimum(1.0, 2.0 * np.minimum(p_f, p_r))
            p_min = p if p_min is None else np.minimum(p_min, p)
        assert p_min is not None
        p_all = np.clip(p_min * len(self._layers), 1e-300, 1.0)
        return -np.log10(p_all)

    def raw_text_statistics(self, feats: WindowFeatures) -> dict[str, np.ndarray]:
        """Per text: the worst window's raw statistic."""
        raw = self.raw_window_statistics(feats)
        return {k: _max_per_text(v, feats.text_index, feats.n_texts)[0] for k, v in raw.items()}

    # -- calibrated scores ---------------------------------------------------------------------
    def score_features(self, feats: WindowFeatures) -> ScoredBatch:
        cb = self.codebook
        raw = self.raw_window_statistics(feats)
        per_window: dict[str, np.ndarray] = {}
        for name, values in raw.items():
            key = name if name == "anomaly" or name.startswith("span.") else f"signal.{name}"
            per_window[name] = (
                surprise(cb.spline(key).sf(values), clip=self.clip) if self.calibrated else values
            )
        best = {
            name: _max_per_text(v, feats.text_index, feats.n_texts)
            for name, v in per_window.items()
        }
        # A signal with a span head: the stronger of its window and span evidence.
        for name in self._span_names:
            w_best, w_arg = best.get(name, (np.zeros(feats.n_texts), np.full(feats.n_texts, -1)))
            s_best, s_arg = best.pop(f"span.{name}")
            use_span = s_best > w_best
            best[name] = (np.where(use_span, s_best, w_best), np.where(use_span, s_arg, w_arg))
            per_window.pop(f"span.{name}")
        n_windows = np.bincount(feats.text_index, minlength=feats.n_texts)
        tokens = np.zeros(feats.n_texts, dtype=np.int64)
        np.maximum.at(tokens, feats.text_index, feats.token_start + feats.n_tokens)
        texts: list[Scores] = []
        # The composite (what thresholds are calibrated on) covers the alarm signals only.
        alarm = cb.alarm_signals
        comp = np.zeros(feats.n_texts)
        for t in range(feats.n_texts):
            signals = {name: float(best[name][0][t]) for name in per_window}
            evidence = {
                name: self._evidence(feats, name, int(best[name][1][t]), signals[name])
                for name in per_window
            }
            texts.append(Scores(signals, evidence, int(n_windows[t]), int(tokens[t])))
            comp[t] = max((signals[x] for x in alarm if x in signals), default=0.0)
        return ScoredBatch(texts=texts, composite=comp)

    def _evidence(self, feats: WindowFeatures, name: str, j: int, score: float) -> Evidence:
        cb = self.codebook
        layer = self._layers[0]
        comps: tuple[tuple[int, float], ...] = ()
        if j >= 0:
            if name == "anomaly":
                # The layer and components with the smallest benign tail probabilities.
                best_layer, best_p, best_idx = layer, 2.0, np.zeros(0, dtype=int)
                for x in self._layers:
                    z = cb.layer_stats[x].project(feats.features[x][j : j + 1])[0]
                    p = cb.components(x).two_sided(z[None, :])[0]
                    if p.min() < best_p:
                        best_layer, best_p, best_idx = x, float(p.min()), np.argsort(p)[:3]
                        zz = z
                layer = best_layer
                if len(best_idx):
                    comps = tuple((int(i), float(zz[i])) for i in best_idx)
            elif name in cb.span_heads and not feats.full[j]:
                # A span row: components of the span layer's basis in the span head's logit.
                layer = cb.span_layer
                st = cb.layer_stats[layer]
                proj = st.project(feats.features[layer][j : j + 1], standardise=False)[0]
                contrib = (st.basis @ cb.span_heads[name].weight) * proj
                top = np.argsort(-contrib)[:3]
                comps = tuple((int(i), float(contrib[i])) for i in top)
            else:
                # Contribution of each basis component to the head's logit.
                h = cb.heads[name]
                best_sum = -np.inf
                for li, x in enumerate(self._layers):
                    st = cb.layer_stats[x]
                    w = h.weight[self._offsets[li] : self._offsets[li + 1]]
                    proj = st.project(feats.features[x][j : j + 1], standardise=False)[0]
                    contrib = (st.basis @ w) * proj
                    if contrib.sum() > best_sum:
                        best_sum = float(contrib.sum())
                        layer = x
                        top = np.argsort(-contrib)[:3]
                        comps = tuple((int(i), float(contrib[i])) for i in top)
        return Evidence(
            signal=name,
            score=score,
            window=int(feats.window_index[j]) if j >= 0 else 0,
            token_start=int(feats.token_start[j]) if j >= 0 else 0,
            n_tokens=int(feats.n_tokens[j]) if j >= 0 else 0,
            layer=int(layer),
            components=comps,
        )


def _max_per_text(
    values: np.ndarray, text_index: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Max of ``values`` per text and the window (row) that reached it (-1 for no window)."""
    best = np.full(n, -np.inf)
    arg = np.full(n, -1, dtype=np.int64)
    for j in np.argsort(values, kind="stable"):
        best[text_index[j]] = values[j]
        arg[text_index[j]] = j
    best[arg < 0] = 0.0
    return best, arg


def level_for(score: float, thresholds: dict[str, float], max_level: Level = "critical") -> Level:
    """The alarm level a composite score reaches (at most ``max_level``)."""
    cap = LEVELS.index(max_level)
    for level in reversed(ALARM_LEVELS):
        t = thresholds.get(level)
        if t is not None and score >= t and LEVELS.index(level) <= cap:
            return level
    return "clear"
