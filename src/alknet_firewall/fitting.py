"""Fitting and calibrating codebooks (scikit-learn style); nothing at runtime imports this.

:class:`CodebookBuilder` fits a :class:`~alknet_firewall.codebook.Codebook` from labelled
window features; :func:`calibrate` fits score distributions and level thresholds on benign
features alone, which is how users fit *their* normal::

    from alknet_firewall import calibrate, extract, load_codebook, load_model
    cb = calibrate(load_codebook(), extract(load_model(), my_benign_texts), source="my traffic")
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .codebook import (
    BENIGN_KINDS,
    DEFAULT_TARGET_FPR,
    SIGNAL_KINDS,
    Codebook,
    LayerStats,
    SignalHead,
)
from .constants import ALARM_LEVELS
from .distributions import DEFAULT_PROBS, SplineCDF, surprise
from .errors import ConfigurationError, CorpusError
from .features import WindowFeatures
from .scoring import Scorer

__all__ = ["CodebookBuilder", "Labelled", "calibrate"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Labelled:
    """Window features with a kind and a group (source) per text."""

    features: WindowFeatures
    kinds: Sequence[str]
    groups: Sequence[str] | None = None


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
        target_fpr: Mapping[str, float] | None = None,
        calibration_fraction: float = 0.3,
        probs: np.ndarray = DEFAULT_PROBS,
        random_state: int = 0,
    ) -> None:
        self.k = k
        self.C = C
        self.target_fpr = target_fpr
        self.calibration_fraction = calibration_fraction
        self.probs = probs
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
        metadata: Mapping[str, Any] | None = None,
    ) -> CodebookBuilder:
        """Fit on :class:`~alknet_firewall.features.WindowFeatures` and one kind per text."""
        from sklearn.linear_model import LogisticRegression  # sklearn is slow to import

        target_fpr = self._validate(feats, kinds)
        kinds_a = np.asarray(kinds)
        rng = np.random.default_rng(self.random_state)
        benign = np.isin(kinds_a, list(BENIGN_KINDS))
        if benign.sum() < 100:
            raise CorpusError("need at least 100 benign texts to fit a codebook")
        # Held-out benign texts for calibration, stratified by group.
        calib = np.zeros(len(kinds_a), dtype=bool)
        grp = np.asarray(groups) if groups is not None else np.array(["all"] * len(kinds_a))
        for g in np.unique(grp[benign]):
            idx = np.flatnonzero(benign & (grp == g))
            rng.shuffle(idx)
            calib[idx[: round(len(idx) * self.calibration_fraction)]] = True
        fit_benign = benign & ~calib
        all_feats = feats
        feats = feats.only_full()  # heads and layer statistics see whole windows only
        t = feats.text_index
        layers = tuple(sorted(feats.features))
        X = np.concatenate([feats.features[layer] for layer in layers], axis=1).astype(np.float64)
        n_win = np.bincount(t, minlength=len(kinds_a)).astype(np.float64)
        w_win = 1.0 / n_win[t]

        stats = {layer: self._layer_stats(feats.features[layer][fit_benign[t]]) for layer in layers}
        mu = X[~calib[t]].mean(0)
        sd = X[~calib[t]].std(0) + 1e-6
        Z = (X - mu) / sd

        heads: dict[str, SignalHead] = {}
        for name, signal_kinds in SIGNAL_KINDS.items():
            pos = np.isin(kinds_a, list(signal_kinds)) & ~calib
            if pos.sum() < 5:
                log.warning("signal %s has %d positive texts; not fitted", name, pos.sum())
                continue
            rows = (pos | fit_benign)[t]
            y = pos[t][rows]
            clf = LogisticRegression(C=self.C, max_iter=5000, class_weight="balanced")
            clf.fit(Z[rows], y, sample_weight=w_win[rows] * len(w_win[rows]) / w_win[rows].sum())
            w = clf.coef_[0] / sd
            b = float(clf.intercept_[0] - np.dot(clf.coef_[0], mu / sd))
            heads[name] = SignalHead(weight=w.astype(np.float32), bias=b, knots=np.zeros(0))
        cb = Codebook(
            layers=layers,
            layer_stats=stats,
            heads=heads,
            anomaly_knots=np.zeros(0),
            probs=np.asarray(self.probs, dtype=np.float64),
            thresholds={},
            metadata={
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "fit": {
                    "k": self.k,
                    "C": self.C,
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
        self.codebook_ = calibrate(cb, all_feats.subset(calib), target_fpr)
        return self

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


def calibrate(
    codebook: Codebook,
    benign: WindowFeatures,
    target_fpr: Mapping[str, float] | None = None,
    *,
    source: str | None = None,
) -> Codebook:
    """Fit score distributions and level thresholds on benign window features (no labels).

    This is how users fit *their* normal: run it on their own benign traffic
    (``benign = corpus.extract(model, texts)``). Too few texts raise :class:`CorpusError`.
    """
    target = dict(target_fpr or codebook.metadata.get("target_fpr") or DEFAULT_TARGET_FPR)
    if benign.n_texts < 50:
        raise CorpusError(f"calibration needs at least 50 benign texts, got {benign.n_texts}")
    probs = codebook.probs
    raw = Scorer(codebook, calibrated=False).raw_text_statistics(benign)
    heads = {
        name: SignalHead(h.weight, h.bias, SplineCDF.fit(raw[name], probs).knots)
        for name, h in codebook.heads.items()
    }
    cb = Codebook(
        layers=codebook.layers,
        layer_stats=codebook.layer_stats,
        heads=heads,
        anomaly_knots=SplineCDF.fit(raw["anomaly"], probs).knots,
        probs=probs,
        thresholds={},
        metadata=dict(codebook.metadata),
    )
    composite = Scorer(cb).score_features(benign).composite
    thresholds, table = {}, {}
    for level in ALARM_LEVELS:
        fpr = float(target[level])
        thr = float(np.quantile(composite, 1.0 - fpr, method="higher"))
        # Never below the score a single signal reaches at that FPR on its own.
        thr = max(thr, float(surprise(fpr)))
        thresholds[level] = min(thr, 1.0)
        table[level] = {
            "target_fpr": fpr,
            "threshold": thresholds[level],
            "observed_fpr": float((composite >= thresholds[level]).mean()),
            "benign_texts": int(benign.n_texts),
        }
    # Keep the level order even on tiny calibration sets.
    thresholds["warning"] = max(thresholds["warning"], thresholds["notice"])
    thresholds["critical"] = max(thresholds["critical"], thresholds["warning"])
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
