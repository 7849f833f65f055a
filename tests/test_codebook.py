"""Codebook: spline distributions, calibration, safetensors round trip, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alknet_firewall.codebook import load_codebook
from alknet_firewall.distributions import SplineCDF, surprise
from alknet_firewall.errors import (
    CodebookError,
    CodebookMismatchError,
    ConfigurationError,
    CorpusError,
)
from alknet_firewall.features import WindowFeatures
from alknet_firewall.training.fitting import CodebookBuilder, calibrate

D = 24


def synthetic(
    n_benign: int, n_attack: int, seed: int, shift: float = 0.0
) -> tuple[WindowFeatures, list[str]]:
    """One window per text; attacks are shifted along a direction the benign data barely uses."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(3.0, 0.3, D)
    benign = rng.normal(size=(n_benign, D)) * scale + shift
    attack = rng.normal(size=(n_attack, D)) * scale
    attack[:, -3:] += 4.0
    x = np.concatenate([benign, attack]).astype(np.float32)
    n = len(x)
    feats = WindowFeatures(
        features={8: x},
        text_index=np.arange(n),
        window_index=np.zeros(n, dtype=int),
        token_start=np.zeros(n, dtype=int),
        n_tokens=np.full(n, 10),
        n_texts=n,
    )
    kinds = (
        ["benign"] * n_benign
        + ["direct_injection"] * (n_attack // 2)
        + ["jailbreak"] * (n_attack - n_attack // 2)
    )
    return feats, kinds


META = {"model": {"name": "m", "weights_digest": "sha256:abc", "layers": [8], "pooling": "mean"}}


@pytest.fixture(scope="module")
def fitted() -> CodebookBuilder:
    feats, kinds = synthetic(6000, 600, seed=1)
    return CodebookBuilder(k=8, random_state=0).fit(feats, kinds, metadata=META)


# -- splines ---------------------------------------------------------------------------------
def test_spline_cdf_matches_a_normal_and_is_monotone() -> None:
    from scipy.stats import norm

    x = np.random.default_rng(0).normal(size=20000)
    s = SplineCDF.fit(x)
    grid = np.linspace(-6, 6, 2001)
    c = s.cdf(grid)
    assert np.all(np.diff(c) >= -1e-12)
    assert c[0] > 0 and c[-1] < 1
    inner = np.abs(grid) < 2.5
    assert np.max(np.abs(c[inner] - norm.cdf(grid[inner]))) < 0.01
    sf = s.sf(grid)
    assert np.all(np.diff(sf) <= 1e-12)
    # Beyond the data the tail keeps decaying but never reaches zero.
    assert 0 < s.sf(np.array([50.0]))[0] < s.sf(np.array([5.0]))[0]
    assert np.allclose(s.two_sided(np.array([0.0])), 1.0, atol=0.05)


def test_spline_needs_enough_data() -> None:
    with pytest.raises(CodebookError):
        SplineCDF.fit(np.arange(5.0))


def test_surprise_scale() -> None:
    assert surprise(0.01) == pytest.approx(0.5)
    assert surprise(1e-4) == pytest.approx(1.0)
    assert surprise(1.0) == pytest.approx(0.0)


# -- calibration -----------------------------------------------------------------------------
def test_calibration_hits_target_fpr_on_fresh_benign(fitted: CodebookBuilder) -> None:
    from alknet_firewall.scoring import Scorer

    cb = fitted.codebook_
    fresh, _ = synthetic(20000, 0, seed=7)
    comp = Scorer(cb).score_features(fresh).composite
    for level, target in (("notice", 0.05), ("warning", 0.01)):
        observed = float((comp >= cb.thresholds[level]).mean())
        assert target * 0.5 <= observed <= target * 1.6, (level, observed)
    assert (comp >= cb.thresholds["critical"]).mean() <= 0.003
    assert cb.thresholds["notice"] <= cb.thresholds["warning"] <= cb.thresholds["critical"]
    # And attacks from the same family score far above benign.
    atk, _ = synthetic(0, 400, seed=9)
    atk_comp = Scorer(cb).score_features(atk).composite
    assert (atk_comp >= cb.thresholds["warning"]).mean() > 0.9


def test_recalibration_fits_new_normal(fitted: CodebookBuilder) -> None:
    from alknet_firewall.scoring import Scorer

    cb = fitted.codebook_
    shifted, _ = synthetic(6000, 0, seed=11, shift=1.5)
    before = Scorer(cb).score_features(shifted).composite
    assert (before >= cb.thresholds["warning"]).mean() > 0.05  # the old normal no longer fits
    new = calibrate(cb, shifted, source="test")
    fresh, _ = synthetic(6000, 0, seed=12, shift=1.5)
    after = Scorer(new).score_features(fresh).composite
    assert (after >= new.thresholds["warning"]).mean() < 0.03
    assert new.metadata["calibration"]["source"] == "test"
    assert new.id != cb.id


# -- round trip ------------------------------------------------------------------------------
def test_save_load_round_trip_is_bit_exact(fitted: CodebookBuilder, tmp_path: Path) -> None:
    cb = fitted.codebook_
    path = cb.save(tmp_path / "cb.safetensors")
    loaded = load_codebook(path)
    a, b = cb.tensors(), loaded.tensors()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert loaded.thresholds == cb.thresholds
    assert loaded.id == cb.id and len(loaded.id) == 16
    assert loaded.metadata["model"] == META["model"]
    for key in ("schema_version", "tensors_digest", "created_at", "calibration", "fit"):
        assert key in loaded.metadata
    info = loaded.info()
    assert info["layers"] == [8] and info["k"] == 8
    assert set(info["signals"]) == {"injection", "jailbreak", "anomaly"}


def _rewrite(
    path: Path, out: Path, *, meta_update: dict | None = None, tensor_update: dict | None = None
) -> Path:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as fh:
        header = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    meta = json.loads(header["alknet_firewall"])
    meta.update(meta_update or {})
    tensors.update(tensor_update or {})
    save_file(tensors, str(out), metadata={"alknet_firewall": json.dumps(meta)})
    return out


def test_tampered_codebook_is_refused(fitted: CodebookBuilder, tmp_path: Path) -> None:
    path = fitted.codebook_.save(tmp_path / "cb.safetensors")
    w = load_codebook(path).heads["injection"].weight.copy()
    w[0] += 1.0
    bad = _rewrite(path, tmp_path / "bad.safetensors", tensor_update={"signal.injection.weight": w})
    with pytest.raises(CodebookError, match="digest mismatch"):
        load_codebook(bad)
    # Loosened thresholds without a new digest are tampering too.
    meta = json.loads(json.dumps(load_codebook(path).metadata))
    meta["thresholds"] = {"notice": 0.99, "warning": 0.995, "critical": 0.999}
    bad2 = _rewrite(
        path, tmp_path / "bad2.safetensors", meta_update={"thresholds": meta["thresholds"]}
    )
    with pytest.raises(CodebookError, match="digest mismatch"):
        load_codebook(bad2)


def test_unreadable_and_foreign_files_are_refused(fitted: CodebookBuilder, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = fitted.codebook_.save(tmp_path / "cb.safetensors")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CodebookError):
        load_codebook(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": np.zeros(3, dtype=np.float32)}, str(foreign))
    with pytest.raises(CodebookError, match="not an alknet-firewall codebook"):
        load_codebook(foreign)
    with pytest.raises(CodebookError, match="does not exist"):
        load_codebook(tmp_path / "missing.safetensors")
    future = _rewrite(path, tmp_path / "v99.safetensors", meta_update={"schema_version": 99})
    with pytest.raises(CodebookError, match="schema version"):
        load_codebook(future)
    pickle = tmp_path / "cb.pt"
    pickle.write_bytes(b"\x80\x04\x95pickle")
    with pytest.raises(CodebookError):
        load_codebook(pickle)


def test_codebook_for_another_model_is_refused(fitted: CodebookBuilder) -> None:
    cb = fitted.codebook_
    ok = {"name": "m", "weights_digest": "sha256:abc", "layers": [4, 8], "pooling": "mean"}
    cb.check_model(ok)
    with pytest.raises(CodebookMismatchError, match="weights_digest"):
        cb.check_model({**ok, "weights_digest": "sha256:other"})
    with pytest.raises(CodebookMismatchError, match="name"):
        cb.check_model({**ok, "name": "other/model"})
    with pytest.raises(CodebookMismatchError, match="layers"):
        cb.check_model({**ok, "layers": [4]})
    with pytest.raises(CodebookMismatchError, match="pooling"):
        cb.check_model({**ok, "pooling": "last"})


def test_builder_validates_its_inputs() -> None:
    feats, kinds = synthetic(300, 40, seed=3)
    with pytest.raises(CorpusError, match="unknown kinds"):
        CodebookBuilder().fit(feats, ["weird"] * feats.n_texts)
    with pytest.raises(CorpusError, match="kinds for"):
        CodebookBuilder().fit(feats, kinds[:-1])
    with pytest.raises(ConfigurationError, match="target_fpr"):
        CodebookBuilder(target_fpr={"notice": 0.01, "warning": 0.05, "critical": 0.001}).fit(
            feats, kinds
        )
    b = CodebookBuilder(k=4)
    assert b.fit(feats, kinds) is b  # fit returns self
    assert hasattr(b, "codebook_") and b.codebook_.k == 4


def test_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    feats, kinds = synthetic(300, 60, seed=5)
    cb = CodebookBuilder(k=4).fit(feats, kinds).codebook_
    cb.save(tmp_path / "cb.safetensors")
    cb.save(tmp_path / "cb.safetensors")  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["cb.safetensors"]
    assert load_codebook(tmp_path / "cb.safetensors").id == cb.id
