"""Fitting: the statistics a codebook's distributions are fitted on are exactly the ones the
scorer computes at runtime (one projection, one residual: ``LayerStats.statistics``)."""

from __future__ import annotations

import numpy as np
import pytest

from alknet_firewall.codebook import BENIGN_KINDS, LayerStats
from alknet_firewall.distributions import SplineCDF
from alknet_firewall.errors import CorpusError
from alknet_firewall.features import WindowFeatures
from alknet_firewall.scoring import Scorer
from alknet_firewall.training.fitting import CodebookBuilder, calibrate

D = 20


def _features(
    n_benign: int = 300, n_attack: int = 60, seed: int = 0
) -> tuple[WindowFeatures, list[str]]:
    rng = np.random.default_rng(seed)
    benign = rng.normal(size=(n_benign, D)) * np.linspace(3.0, 0.3, D) + 1.5
    attack = rng.normal(size=(n_attack, D)) + 4.0
    x = np.concatenate([benign, attack]).astype(np.float32)
    n = len(x)
    feats = WindowFeatures(
        features={8: x},
        text_index=np.arange(n),
        window_index=np.zeros(n, dtype=np.int64),
        token_start=np.zeros(n, dtype=np.int64),
        n_tokens=np.full(n, 10),
        n_texts=n,
    )
    return feats, ["benign"] * n_benign + ["direct_injection"] * n_attack


@pytest.fixture(scope="module")
def fitted() -> tuple[CodebookBuilder, WindowFeatures, list[str]]:
    feats, kinds = _features()
    return CodebookBuilder(k=6).fit(feats, kinds), feats, kinds


def test_fit_and_score_statistics_agree(fitted) -> None:
    builder, feats, kinds = fitted
    cb = builder.codebook_
    st = cb.layer_stats[8]
    fit_rows = np.isin(kinds, list(BENIGN_KINDS)) & ~builder.calibration_mask_
    F = feats.features[8][fit_rows]
    # What the scorer computes on the fitting rows reproduces the stored knots exactly.
    z, resid = st.statistics(F)
    for i in range(st.basis.shape[0]):
        np.testing.assert_array_equal(
            SplineCDF.fit(z[:, i], builder.probs).knots, st.component_knots[i]
        )
    np.testing.assert_array_equal(SplineCDF.fit(resid, builder.probs).knots, st.residual_knots)
    # The standardised projections have unit spread on the fitting rows, by construction.
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-4)
    # project/residual are the same numbers as statistics, and as the textbook formula.
    np.testing.assert_array_equal(st.project(F), z)
    np.testing.assert_array_equal(st.residual(F), resid)
    C = F.astype(np.float64) - st.mean
    proj = C @ st.basis.T.astype(np.float64)
    np.testing.assert_allclose(st.project(F, standardise=False), proj)
    np.testing.assert_allclose(resid, ((C * C).sum(1) - (proj * proj).sum(1)) / D, atol=1e-9)


def test_scorer_uses_layer_statistics(fitted, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime anomaly statistic goes through LayerStats.statistics (no second formula)."""
    builder, feats, _ = fitted
    calls: list[int] = []
    original = LayerStats.statistics

    def spy(self: LayerStats, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(F))
        return original(self, F)

    monkeypatch.setattr(LayerStats, "statistics", spy)
    Scorer(builder.codebook_).raw_window_statistics(feats)
    assert calls == [feats.n_texts]


def test_bad_training_data_is_a_corpus_error(fitted) -> None:
    feats, kinds = _features(n_benign=50, n_attack=10)
    with pytest.raises(CorpusError, match="100 benign"):
        CodebookBuilder(k=4).fit(feats, kinds)
    with pytest.raises(CorpusError, match="unknown kinds"):
        CodebookBuilder(k=4).fit(feats, ["nope"] * feats.n_texts)
    with pytest.raises(ValueError):  # CorpusError is a ValueError
        calibrate(fitted[0].codebook_, feats.subset(np.arange(feats.n_texts) < 10))


def test_builder_stores_its_parameters_as_given() -> None:
    assert CodebookBuilder().target_fpr is None  # resolved in fit, sklearn-style


def test_span_rows_are_capped_evenly_per_text_and_class() -> None:
    from alknet_firewall.training.fitting import _evenly_capped

    key = np.array([0] * 10 + [1] * 3 + [2] * 6)
    mask = np.ones(len(key), dtype=bool)
    mask[11] = False
    out = _evenly_capped(mask, key, 4)
    assert out[:10].sum() == 4 and out[0] and out[9]  # first and last of a long text kept
    assert out[10:13].tolist() == [True, False, True]  # under the cap: unchanged
    assert out[13:].sum() == 4
