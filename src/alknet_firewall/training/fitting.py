"""Fitting and calibrating codebooks (scikit-learn style); nothing at runtime imports this.

Size (~530 lines): the builder and :func:`calibrate` share the weighting and quantile helpers
and the calibration-group rule; splitting them would split one procedure across files.

:class:`CodebookBuilder` fits a :class:`~alknet_firewall.codebook.Codebook` from labelled
window features; :func:`calibrate` fits score distributions and level thresholds on benign
features alone, which is how users fit *their* normal::

    from alknet_firewall import calibrate, extract, load_codebook, load_model
    from alknet_firewall.normalize import normalize
    texts = [normalize(t) for t in my_benign_texts]
    cb = calibrate(load_codebook(), extract(load_model(), texts), texts=texts, source="my traffic")
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..codebook import (
    BENIGN_KINDS,
    DEFAULT_TARGET_FPR,
    DETECTION_SIGNALS,
    SIGNAL_KINDS,
    Codebook,
    LayerStats,
    SignalHead,
)
from ..constants import ALARM_LEVELS
from ..distributions import DEFAULT_PROBS, SplineCDF, surprise
from ..errors import ConfigurationError, CorpusError
from ..features import WindowFeatures
from ..scoring import Context, Scorer, adjust, group_key, text_context

__all__ = ["CodebookBuilder", "calibrate", "contexts_of", "text_tokens"]

log = logging.getLogger(__name__)


class CodebookBuilder:
    """Fits a :class:`Codebook` from labelled window features (scikit-learn style).

    ``fit`` returns ``self``; the result is ``codebook_``. Heads are fitted on one part of the
    benign texts and calibrated (splines, thresholds) on the held-out rest. Bad training data
    raises :class:`~alknet_firewall.errors.CorpusError`, bad parameters
    :class:`~alknet_firewall.errors.ConfigurationError` (both when ``fit`` runs).
    """

    def __init__(
        self,
        *,
        k: int = 64,
        C: float = 0.01,
        span_C: float = 0.01,
        target_fpr: Mapping[str, float] | None = None,
        calibration_fraction: float = 0.3,
        probs: np.ndarray = DEFAULT_PROBS,
        alarm_signals: Sequence[str] = DETECTION_SIGNALS,
        min_style_texts: int = 30,
        style_rate_factor: Mapping[str, float] | None = None,
        random_state: int = 0,
        max_span_rows: int = 24,
    ) -> None:
        self.max_span_rows = max_span_rows
        self.k = k
        self.C = C
        self.span_C = span_C
        self.target_fpr = target_fpr
        self.calibration_fraction = calibration_fraction
        self.probs = probs
        self.alarm_signals = alarm_signals
        self.min_style_texts = min_style_texts
        self.style_rate_factor = style_rate_factor
        self.random_state = random_state

    def _validate(self, feats: WindowFeatures, kinds: Sequence[str]) -> dict[str, float]:
        """Check data and parameters; the target FPR per alarm level."""
        if len(kinds) != feats.n_texts:
            raise CorpusError(f"{len(kinds)} kinds for {feats.n_texts} texts")
        unknown = set(kinds) - BENIGN_KINDS - set().union(*SIGNAL_KINDS.values())
        if unknown:
            raise CorpusError(f"unknown kinds {sorted(unknown)}")
        if not 0.05 <= self.calibration_fraction <= 0.9:
            raise ConfigurationError("calibration_fraction must lie in [0.05, 0.9]")
        target = dict(self.target_fpr or DEFAULT_TARGET_FPR)
        if set(target) != set(ALARM_LEVELS):
            raise ConfigurationError(f"target_fpr must name exactly {ALARM_LEVELS}")
        fprs = [target[x] for x in ALARM_LEVELS]
        if not all(0 < f < 1 for f in fprs) or fprs != sorted(fprs, reverse=True):
            raise ConfigurationError("target_fpr must decrease: notice > warning > critical > 0")
        return target

    def fit(
        self,
        feats: WindowFeatures,
        kinds: Sequence[str],
        *,
        groups: Sequence[str] | None = None,
        families: Sequence[str] | None = None,
        styles: Sequence[str | None] | None = None,
        span_labels: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        fit_mask: Sequence[bool] | np.ndarray | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CodebookBuilder:
        """Fit on :class:`~alknet_firewall.features.WindowFeatures` and one kind per text.

        ``groups`` (a source per text) stratifies the calibration hold-out and balances the
        benign side: every source weighs ``1/sqrt(texts)``; ``families`` (attack families) do
        the same for the attack side, so no single collection decides a head. ``styles`` (a
        benign style per text) make calibration hold the target rate for every style.
        ``span_labels`` (one per feature row: 1 a span of an attack instruction, 0 benign,
        -1 unused) fit the span head of the ``injection`` signal on span rows. ``texts`` (the
        texts themselves) give calibration its groups (short texts, languages; see
        :func:`calibrate`). ``fit_mask`` marks the texts heads may learn from (default: all);
        benign texts outside it only calibrate (the default build: texts in other languages,
        so no head learns a language as a sign of anything), attacks outside it are unused.
        """
        from sklearn.linear_model import LogisticRegression  # sklearn is slow to import

        target_fpr = self._validate(feats, kinds)
        if span_labels is not None and len(span_labels) != len(feats.text_index):
            raise CorpusError(
                f"{len(span_labels)} span labels for {len(feats.text_index)} feature rows"
            )
        if styles is not None and len(styles) != len(kinds):
            raise CorpusError(f"{len(styles)} styles for {len(kinds)} texts")
        kinds_a = np.asarray(kinds)
        rng = np.random.default_rng(self.random_state)
        benign = np.isin(kinds_a, list(BENIGN_KINDS))
        if benign.sum() < 100:
            raise CorpusError("need at least 100 benign texts to fit a codebook")
        fits = np.ones(len(kinds_a), dtype=bool) if fit_mask is None else np.asarray(fit_mask)
        if fits.shape != kinds_a.shape:
            raise CorpusError(f"{len(fits)} fit_mask entries for {len(kinds_a)} texts")
        if texts is not None and len(texts) != len(kinds_a):
            raise CorpusError(f"{len(texts)} texts for {len(kinds_a)} kinds")
        # Held-out benign texts for calibration, stratified by group; benign texts heads may
        # not learn from calibrate only.
        calib = benign & ~fits
        grp = np.asarray(groups) if groups is not None else np.array(["all"] * len(kinds_a))
        for g in np.unique(grp[benign & fits]):
            idx = np.flatnonzero(benign & fits & (grp == g))
            rng.shuffle(idx)
            calib[idx[: round(len(idx) * self.calibration_fraction)]] = True
        unused = calib | ~fits
        fit_benign = benign & ~unused
        fam = np.asarray(families) if families is not None else grp
        all_feats = feats
        full_rows = feats.full
        feats = feats.only_full()  # heads and layer statistics see whole windows only
        t = feats.text_index
        layers = tuple(sorted(feats.features))
        X = np.concatenate([feats.features[layer] for layer in layers], axis=1).astype(np.float64)
        n_win = np.bincount(t, minlength=len(kinds_a)).astype(np.float64)

        stats = {layer: self._layer_stats(feats.features[layer][fit_benign[t]]) for layer in layers}
        mu = X[~unused[t]].mean(0)
        sd = X[~unused[t]].std(0) + 1e-6
        Z = (X - mu) / sd

        heads: dict[str, SignalHead] = {}
        for name, signal_kinds in SIGNAL_KINDS.items():
            pos = np.isin(kinds_a, list(signal_kinds)) & ~unused
            if pos.sum() < 5:
                log.warning("signal %s has %d positive texts; not fitted", name, pos.sum())
                continue
            text_w = _balanced(pos, fit_benign, fam, grp)
            rows = (pos | fit_benign)[t]
            sw = text_w[t][rows] / n_win[t][rows]
            clf = LogisticRegression(C=self.C, max_iter=5000)
            clf.fit(Z[rows], pos[t][rows], sample_weight=sw * len(sw) / sw.sum())
            w = clf.coef_[0] / sd
            b = float(clf.intercept_[0] - np.dot(clf.coef_[0], mu / sd))
            heads[name] = SignalHead(weight=w.astype(np.float32), bias=b, knots=np.zeros(0))
        span_heads: dict[str, SignalHead] = {}
        span_layer = max(layers)
        if span_labels is not None and "injection" in heads:
            head = self._span_head(
                all_feats, np.asarray(span_labels), full_rows, unused, fam, grp, span_layer
            )
            if head is not None:
                span_heads["injection"] = head
        cb = Codebook(
            span_heads=span_heads,
            layers=layers,
            layer_stats=stats,
            heads=heads,
            anomaly_knots=np.zeros(0),
            probs=np.asarray(self.probs, dtype=np.float64),
            thresholds={},
            metadata={
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "alarm_signals": [x for x in self.alarm_signals if x in heads or x == "anomaly"],
                "span_layer": span_layer,
                "fit": {
                    "k": self.k,
                    "C": self.C,
                    "span_C": self.span_C,
                    "max_span_rows": self.max_span_rows,
                    "weights": "1/sqrt(texts) per benign source and per attack family",
                    "calibration_fraction": self.calibration_fraction,
                    "random_state": self.random_state,
                    "texts": len(kinds_a),
                    "windows": len(t),
                    "kinds": {
                        str(k): int(v)
                        for k, v in zip(*np.unique(kinds_a, return_counts=True), strict=False)
                    },
                },
                **dict(metadata or {}),
            },
        )
        self.calibration_mask_ = calib
        # Calibration sees every row the runtime scores, spans included.
        calib_styles = None if styles is None else [styles[i] for i in np.flatnonzero(calib)]
        self.codebook_ = calibrate(
            cb,
            all_feats.subset(calib),
            target_fpr,
            styles=calib_styles,
            texts=None if texts is None else [texts[i] for i in np.flatnonzero(calib)],
            min_style_texts=self.min_style_texts,
            style_rate_factor=self.style_rate_factor,
        )
        return self

    def _span_head(
        self,
        feats: WindowFeatures,
        labels: np.ndarray,
        full_rows: np.ndarray,
        calib: np.ndarray,
        fam: np.ndarray,
        grp: np.ndarray,
        layer: int,
    ) -> SignalHead | None:
        """A linear head over span rows of ``layer``: attack-instruction spans against benign
        spans (including the benign data around an injected instruction)."""
        from sklearn.linear_model import LogisticRegression

        use = ~full_rows & (labels >= 0) & ~calib[feats.text_index]
        use = _evenly_capped(use, feats.text_index * 2 + (labels == 1), self.max_span_rows)
        y = labels[use] == 1
        if y.sum() < 20 or (~y).sum() < 100:
            log.warning("span head: %d attack and %d benign spans; not fitted", y.sum(), (~y).sum())
            return None
        F = feats.features[layer][use].astype(np.float64)
        mu = F[~y].mean(0)
        sd = F[~y].std(0) + 1e-6
        ti = feats.text_index[use]
        # Each text weighs as in the window heads, spread over its spans of each class.
        pos_text = np.zeros(feats.n_texts, dtype=bool)
        pos_text[ti[y]] = True
        ben_text = np.zeros(feats.n_texts, dtype=bool)
        ben_text[ti[~y]] = True
        text_w = _balanced(pos_text, ben_text & ~pos_text, fam, grp)
        key = ti * 2 + y
        _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
        sw = text_w[ti] / cnt[inv]
        sw[y] *= sw[~y].sum() / sw[y].sum()
        clf = LogisticRegression(C=self.span_C, max_iter=5000)
        clf.fit((F - mu) / sd, y, sample_weight=sw * len(sw) / sw.sum())
        w = clf.coef_[0] / sd
        b = float(clf.intercept_[0] - np.dot(clf.coef_[0], mu / sd))
        return SignalHead(weight=w.astype(np.float32), bias=b, knots=np.zeros(0))

    def _layer_stats(self, F: np.ndarray) -> LayerStats:
        """Mean, SVD basis and the benign distributions of one layer, the distributions fitted
        on exactly what scoring computes (:meth:`LayerStats.statistics` of the stored float32
        mean and basis)."""
        F = F.astype(np.float64)
        mean = F.mean(0)
        C = F - mean
        k = min(self.k, C.shape[1], C.shape[0] - 1)
        _, _, vt = np.linalg.svd(C, full_matrices=False)
        stats = LayerStats(
            mean=mean.astype(np.float32),
            scale=F.std(0).astype(np.float32) + 1e-6,
            basis=vt[:k].astype(np.float32),
            singular=np.ones(k, dtype=np.float32),
            component_knots=np.zeros((k, 0)),
            residual_knots=np.zeros(0),
        )
        sing = stats.project(F, standardise=False).std(0) + 1e-8
        stats = replace(stats, singular=sing.astype(np.float32))
        z, resid = stats.statistics(F)
        return replace(
            stats,
            component_knots=np.stack([SplineCDF.fit(z[:, i], self.probs).knots for i in range(k)]),
            residual_knots=SplineCDF.fit(resid, self.probs).knots,
        )


def text_tokens(feats: WindowFeatures) -> np.ndarray:
    """Content tokens of every text of ``feats`` (the end of its last row)."""
    tokens = np.zeros(feats.n_texts, dtype=np.int64)
    np.maximum.at(tokens, feats.text_index, feats.token_start + feats.n_tokens)
    return tokens


def contexts_of(texts: Sequence[str], feats: WindowFeatures) -> list[Context]:
    """The calibration context of each text (``scoring.text_context``)."""
    if len(texts) != feats.n_texts:
        raise CorpusError(f"{len(texts)} texts for {feats.n_texts} featurised texts")
    return [text_context(t, int(n)) for t, n in zip(texts, text_tokens(feats), strict=True)]


def calibrate(
    codebook: Codebook,
    benign: WindowFeatures,
    target_fpr: Mapping[str, float] | None = None,
    *,
    source: str | None = None,
    styles: Sequence[str | None] | None = None,
    texts: Sequence[str] | None = None,
    min_style_texts: int = 30,
    min_group_texts: int = 30,
    style_rate_factor: Mapping[str, float] | None = None,
    request_exponent: float | None = None,
) -> Codebook:
    """Fit score distributions and level thresholds on benign window features (no labels).

    This is how users fit *their* normal: run it on their own benign traffic
    (``benign = extract(model, texts)``, :func:`~alknet_firewall.training.corpus.extract`).
    Too few texts raise :class:`CorpusError`.

    With ``styles`` (one benign style per text: short chat, documents, code, ...), each level's
    threshold is the highest of the per-style thresholds (styles with at least
    ``min_style_texts`` texts) and the overall one, so the target rate holds for every style,
    not only on average; the observed rate per style is recorded. ``style_rate_factor``
    tolerates a multiple of the target rate for some styles (the default build: 3× for
    benign-but-suspicious styles — role-play, system prompts, look-alikes — whose tolerated
    false-alarm rate is 3 % against 1 % for ordinary traffic).

    With ``texts`` (the benign texts themselves, in feature order), each calibration group
    (``scoring.text_context``: short texts, language groups) with at least
    ``min_group_texts`` texts gets its own benign distribution of the composite score, and
    thresholds are set on scores after that group rule (``scoring.adjust``), the same rule
    the firewall applies. Without ``texts`` the codebook has no groups (texts in other
    languages then stop at ``notice``). ``request_exponent`` (default: the codebook's, else
    0.5) sets how a request's texts combine (``scoring.request_score``).
    """
    target = dict(target_fpr or codebook.metadata.get("target_fpr") or DEFAULT_TARGET_FPR)
    if benign.n_texts < 50:
        raise CorpusError(f"calibration needs at least 50 benign texts, got {benign.n_texts}")
    if codebook.span_heads and benign.full.all():
        raise CorpusError(
            "this codebook has span heads but the features have no span rows: extract them "
            "with the codebook's reading settings (model settings merged with "
            "codebook.reading(): sub_window, sub_window_stride, ...)"
        )
    probs = codebook.probs
    raw = Scorer(codebook, calibrated=False).raw_text_statistics(benign)
    splines: dict[str, SplineCDF] = {}

    def fitted(key: str, values: np.ndarray) -> np.ndarray:
        """The knots of a spline fitted on ``values``; its probabilities are kept for the
        codebook when the sample could not support every tail probability."""
        splines[key] = SplineCDF.fit(values, probs)
        return splines[key].knots

    heads = {
        name: SignalHead(h.weight, h.bias, fitted(f"signal.{name}", raw[name]))
        for name, h in codebook.heads.items()
    }
    span_heads = {
        name: SignalHead(h.weight, h.bias, fitted(f"span.{name}", raw[f"span.{name}"]))
        for name, h in codebook.span_heads.items()
    }
    if styles is not None and len(styles) != benign.n_texts:
        raise CorpusError(f"{len(styles)} styles for {benign.n_texts} calibration texts")
    cb = Codebook(
        span_heads=span_heads,
        layers=codebook.layers,
        layer_stats=codebook.layer_stats,
        heads=heads,
        anomaly_knots=fitted("anomaly", raw["anomaly"]),
        probs=probs,
        thresholds={},
        metadata=dict(codebook.metadata),
    )

    def keep_probs() -> None:
        cb.spline_probs = {
            k: sp.probs
            for k, sp in splines.items()
            if len(sp.probs) != len(probs) or not np.allclose(sp.probs, probs)
        }
        cb._splines.clear()

    keep_probs()
    # Unclipped, as the firewall scores: a score past the last decade stays apart from one at it.
    scored = Scorer(cb, clip=False).score_features(benign)
    composite = scored.composite
    alarm = [x for x in cb.alarm_signals if x in cb.signals]
    # Calibration groups: each signal scored against its group's benign texts too.
    caps = np.full(benign.n_texts, len(ALARM_LEVELS))  # highest level index allowed
    groups_n: dict[str, int] = {}
    if texts is None:
        log.warning(
            "calibrate() without texts fits no calibration groups: short replies and texts in "
            "other languages lose their own calibration (pass texts=... in feature order)"
        )
    else:
        ctxs = contexts_of(texts, benign)
        g_a = np.array([c.group for c in ctxs])
        for g in sorted(set(g_a.tolist()) - {"default"}):
            n_g = int((g_a == g).sum())
            if n_g >= min_group_texts:
                idx = np.flatnonzero(g_a == g)
                for name in alarm:
                    values = np.array([scored.texts[i].signals.get(name, 0.0) for i in idx])
                    key = group_key(g, name)
                    cb.group_knots[key] = fitted(f"group.{key}", values)
                groups_n[g] = n_g
        keep_probs()
        adjusted = [
            adjust(cb, {x: t.signals[x] for x in alarm if x in t.signals}, c)
            for t, c in zip(scored.texts, ctxs, strict=True)
        ]
        composite = np.array([a.score for a in adjusted])
        caps = np.array(
            [ALARM_LEVELS.index(a.max_level) if a.max_level != "clear" else -1 for a in adjusted]
        )
    composite = np.minimum(composite, 1.0)
    lost = sorted({k.rsplit(".", 1)[0] for k in codebook.group_knots} - set(groups_n))
    if lost:
        log.warning(
            "recalibrated without enough texts (%d) of calibration groups %s: texts of those "
            "groups are no longer calibrated on their own (languages among them stop at notice); "
            "add such texts to the calibration set to keep them",
            min_group_texts,
            lost,
        )
    exponent = (
        request_exponent
        if request_exponent is not None
        else float(codebook.metadata.get("request", {}).get("exponent", 0.5))
    )
    cb.metadata["request"] = {"exponent": exponent}
    cb.metadata["calibration_groups"] = groups_n
    style_a = np.asarray([s or "" for s in styles]) if styles is not None else None
    counted = (
        [x for x in np.unique(style_a) if x and (style_a == x).sum() >= min_style_texts]
        if style_a is not None
        else []
    )
    thresholds: dict[str, float] = {}
    for li, level in enumerate(ALARM_LEVELS):
        fpr = float(target[level])
        # A text whose context caps it below this level cannot reach it.
        eff = np.where(caps >= li, composite, 0.0)
        thr = _quantile(eff, fpr)
        # Per style where the style has the texts to estimate the rate: a 0.1 % (critical)
        # quantile needs thousands of texts per style, so critical is set on all styles pooled.
        for x in counted if level != "critical" else ():
            rate = min(fpr * float((style_rate_factor or {}).get(x, 1.0)), 0.5)
            thr = max(thr, _quantile(eff[style_a == x], rate))
        # Never below the score a single signal reaches at that FPR on its own.
        thresholds[level] = min(max(thr, float(surprise(fpr))), 1.0)
    # Keep the level order even on tiny calibration sets.
    thresholds["warning"] = max(thresholds["warning"], thresholds["notice"])
    thresholds["critical"] = max(thresholds["critical"], thresholds["warning"])
    table: dict[str, dict[str, Any]] = {}
    for li, level in enumerate(ALARM_LEVELS):
        hit = (composite >= thresholds[level]) & (caps >= li)
        table[level] = {
            "target_fpr": float(target[level]),
            "threshold": thresholds[level],
            "observed_fpr": float(hit.mean()),
            "benign_texts": int(benign.n_texts),
        }
        if counted:
            assert style_a is not None
            table[level]["per_style"] = {
                str(x): round(float(hit[style_a == x].mean()), 5) for x in counted
            }
    cb.thresholds = thresholds
    cb.metadata["target_fpr"] = target
    cb.metadata["calibration"] = {
        "levels": table,
        "source": source or cb.metadata.get("calibration", {}).get("source", "corpus hold-out"),
        "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    cb.metadata.pop("codebook_id", None)
    cb.metadata.pop("tensors_digest", None)
    return cb


def _quantile(scores: np.ndarray, rate: float) -> float:
    """The score that ``rate`` of ``scores`` reach, estimated with at least two of them above
    it (a smaller rate on a small set is just its maximum)."""
    return float(np.quantile(scores, 1.0 - max(rate, 2.0 / len(scores)), method="higher"))


def _evenly_capped(mask: np.ndarray, key: np.ndarray, cap: int) -> np.ndarray:
    """``mask`` with at most ``cap`` rows per ``key`` (evenly spaced, first and last kept): a
    long document's hundreds of spans weigh no more than before (each text's weight is spread
    over its rows) and cost a bounded fit."""
    out = mask.copy()
    rows = np.flatnonzero(mask)
    order = np.argsort(key[rows], kind="stable")
    _, starts, counts = np.unique(key[rows][order], return_index=True, return_counts=True)
    for a, n in zip(starts[counts > cap], counts[counts > cap], strict=True):
        group = rows[order[a : a + n]]
        keep = np.unique(np.linspace(0, n - 1, cap).round().astype(int))
        drop = np.ones(n, dtype=bool)
        drop[keep] = False
        out[group[drop]] = False
    return out


def _balanced(
    pos: np.ndarray, neg: np.ndarray, families: np.ndarray, groups: np.ndarray
) -> np.ndarray:
    """Text weights: ``1/sqrt(n)`` for a text of a family (attacks) or source (benign) with
    ``n`` texts, the attack side scaled to the benign side's total (zero elsewhere)."""
    w = np.zeros(len(pos))
    for side, key in ((pos, families), (neg & ~pos, groups)):
        idx = np.flatnonzero(side)
        if not len(idx):
            continue
        _, inv, cnt = np.unique(key[idx], return_inverse=True, return_counts=True)
        w[idx] = 1.0 / np.sqrt(cnt[inv])
    if w[pos].sum() > 0:
        w[pos] *= w[neg & ~pos].sum() / w[pos].sum()
    return w
