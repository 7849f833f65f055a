"""The codebook: what "normal" and "attack" look like in activation space.

Per layer: the benign mean, an SVD basis of the benign activations with per-component spline
distributions, and a residual-energy distribution (together: the ``anomaly`` signal). Per signal
(``injection``, ``jailbreak``, ``harmful``): a linear head over the standardised activations whose
benign score distribution is a monotone spline, so every signal speaks the same calibrated scale.
Thresholds per alarm level are set on held-out benign texts for target false-positive rates.

Stored as one ``.safetensors`` file with JSON metadata in its header (see ``docs/codebook.md``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CodebookError, CodebookMismatchError, ConfigurationError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
METADATA_KEY = "alknet_firewall"
#: A p-value of 10**-SCORE_DECADES maps to score 1.0; score = -log10(p) / SCORE_DECADES.
SCORE_DECADES = 4.0
DETECTION_SIGNALS = ("injection", "jailbreak", "harmful")
SIGNAL_KINDS: dict[str, frozenset[str]] = {
    "injection": frozenset({"direct_injection", "indirect_injection", "prompt_extraction"}),
    "jailbreak": frozenset({"jailbreak"}),
    "harmful": frozenset({"harmful_request"}),
}
BENIGN_KINDS = frozenset({"benign", "benign_hard"})
DEFAULT_TARGET_FPR: dict[str, float] = {"notice": 0.05, "warning": 0.01, "critical": 0.001}
#: Probabilities at which distributions are stored (denser in the tails).
DEFAULT_PROBS = np.array(
    [
        0.001,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        0.95,
        0.975,
        0.99,
        0.995,
        0.998,
        0.999,
    ],
    dtype=np.float64,
)
_P_FLOOR = 1e-12


def surprise(p: np.ndarray | float, *, clip: bool = True) -> np.ndarray:
    """Map a benign tail probability to the [0, 1] score scale (0.5 ≈ p of 1 %).

    ``clip=False`` keeps scores above 1 (p below 10**-4) apart, for ranking in evaluations.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), _P_FLOOR, 1.0)
    return np.clip(-np.log10(p) / SCORE_DECADES, 0.0, 1.0 if clip else None)


def surprise_inverse(score: float) -> float:
    """The tail probability a score stands for."""
    return float(10 ** (-score * SCORE_DECADES))


# --------------------------------------------------------------------------------------------
# Spline distributions
# --------------------------------------------------------------------------------------------
class SplineCDF:
    """A smooth monotone CDF through quantile knots, with exponential tails.

    Between knots: monotone cubic (PCHIP) interpolation of (value, probability). Beyond the
    outer knots the tail probability decays exponentially with the slope of the outermost knot
    gap, which never claims more certainty than the data: the tail is at least as heavy as the
    last observed gap implies.
    """

    def __init__(self, knots: np.ndarray, probs: np.ndarray) -> None:
        from scipy.interpolate import PchipInterpolator

        knots = np.asarray(knots, dtype=np.float64)
        probs = np.asarray(probs, dtype=np.float64)
        if knots.shape != probs.shape or knots.ndim != 1 or len(knots) < 3:
            raise CodebookError("a spline distribution needs matching 1-D knots and probabilities")
        # Strictly increasing values (ties from discrete data are spread by a tiny epsilon).
        span = max(float(knots[-1] - knots[0]), 1e-6)
        eps = span * 1e-9
        v = np.maximum.accumulate(knots + eps * np.arange(len(knots)))
        self.knots, self.probs = v, probs
        self._f = PchipInterpolator(v, probs, extrapolate=False)
        lo_gap = max(v[1] - v[0], span * 1e-3)
        hi_gap = max(v[-1] - v[-2], span * 1e-3)
        self._beta_lo = lo_gap / max(math.log(probs[1] / probs[0]), 1e-3)
        self._beta_hi = hi_gap / max(math.log((1 - probs[-2]) / (1 - probs[-1])), 1e-3)

    @classmethod
    def fit(cls, values: np.ndarray, probs: np.ndarray = DEFAULT_PROBS) -> SplineCDF:
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if len(values) < 20:
            raise CodebookError(
                f"need at least 20 finite values to fit a distribution, got {len(values)}"
            )
        n = len(values)
        # Keep only the tail probabilities this many samples can support.
        lo, hi = 1.0 / (n + 1), 1.0 - 1.0 / (n + 1)
        p = np.unique(np.clip(probs, lo, hi))
        return cls(np.quantile(values, p, method="linear"), p)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        v, p = self.knots, self.probs
        low, high = x < v[0], x > v[-1]
        mid = ~(low | high)
        out[mid] = np.clip(self._f(x[mid]), p[0], p[-1])
        out[low] = p[0] * np.exp((x[low] - v[0]) / self._beta_lo)
        out[high] = 1.0 - (1.0 - p[-1]) * np.exp(-(x[high] - v[-1]) / self._beta_hi)
        return out

    def sf(self, x: np.ndarray) -> np.ndarray:
        """Upper tail probability P(X > x) under the benign distribution."""
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        v, p = self.knots, self.probs
        high = x > v[-1]
        out[~high] = 1.0 - self.cdf(x[~high])
        out[high] = (1.0 - p[-1]) * np.exp(-(x[high] - v[-1]) / self._beta_hi)
        return np.clip(out, _P_FLOOR, 1.0)

    def two_sided(self, x: np.ndarray) -> np.ndarray:
        c = self.cdf(x)
        return np.clip(2.0 * np.minimum(c, self.sf(x)), _P_FLOOR, 1.0)


class ComponentTable:
    """Every basis component's spline CDF of one layer, tabulated for vectorised lookup.

    Evaluating 64 PCHIP splines one by one per request cost several milliseconds; a table of
    each spline on a fine grid (linear between grid points, the same exponential tails outside)
    answers all components of all rows in one numpy expression, within 1e-4 of the splines.
    """

    GRID = 1024

    def __init__(self, splines: Sequence[SplineCDF]) -> None:
        self.lo = np.array([sp.knots[0] for sp in splines])
        self.hi = np.array([sp.knots[-1] for sp in splines])
        grid = np.linspace(0.0, 1.0, self.GRID)
        xs = self.lo[:, None] + grid[None, :] * (self.hi - self.lo)[:, None]
        self.table = np.stack([sp.cdf(x) for sp, x in zip(splines, xs, strict=True)])
        self.p_lo = np.array([sp.probs[0] for sp in splines])
        self.p_hi = np.array([sp.probs[-1] for sp in splines])
        self.beta_lo = np.array([sp._beta_lo for sp in splines])
        self.beta_hi = np.array([sp._beta_hi for sp in splines])
        self._rows = np.arange(len(splines))

    def two_sided(self, z: np.ndarray) -> np.ndarray:
        """Two-sided benign tail probability of ``z`` ([n, k]) per component."""
        z = np.asarray(z, dtype=np.float64)
        span = np.maximum(self.hi - self.lo, 1e-12)
        t = np.clip((z - self.lo) / span, 0.0, 1.0) * (self.GRID - 1)
        i = np.minimum(t.astype(np.int64), self.GRID - 2)
        f = t - i
        cdf = self.table[self._rows, i] * (1 - f) + self.table[self._rows, i + 1] * f
        low, high = z < self.lo, z > self.hi
        cdf = np.where(low, self.p_lo * np.exp((z - self.lo) / self.beta_lo), cdf)
        sf = np.where(high, (1 - self.p_hi) * np.exp(-(z - self.hi) / self.beta_hi), 1.0 - cdf)
        return np.clip(2.0 * np.minimum(cdf, sf), _P_FLOOR, 1.0)


# --------------------------------------------------------------------------------------------
# The codebook
# --------------------------------------------------------------------------------------------
@dataclass
class LayerStats:
    """Benign statistics of one layer."""

    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d] standard deviation of the fitting activations (for the heads)
    basis: np.ndarray  # [k, d] orthonormal rows: top right singular vectors of benign data
    singular: np.ndarray  # [k] std of benign projections on each component
    component_knots: np.ndarray  # [k, q] quantiles of the standardised projections
    residual_knots: np.ndarray  # [q] quantiles of residual energy outside the basis


@dataclass
class SignalHead:
    """A linear head over the concatenated raw activations of the codebook's layers."""

    weight: np.ndarray  # [n_layers * d]
    bias: float
    knots: np.ndarray  # [q] benign per-text score quantiles (calibration)


@dataclass
class Codebook:
    """A fitted, validated codebook. Build with :class:`CodebookBuilder`, load with
    :func:`load_codebook`."""

    layers: tuple[int, ...]
    layer_stats: dict[int, LayerStats]
    heads: dict[str, SignalHead]
    anomaly_knots: np.ndarray  # [q] benign per-text anomaly statistic quantiles
    probs: np.ndarray  # [q] probabilities of every knot vector
    thresholds: dict[str, float]
    metadata: dict[str, Any] = field(default_factory=dict)

    # -- derived -------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._splines: dict[str, Any] = {}

    @property
    def id(self) -> str:
        return str(self.metadata.get("codebook_id") or self._digest()[:16])

    @property
    def signals(self) -> tuple[str, ...]:
        return (*self.heads.keys(), "anomaly")

    @property
    def k(self) -> int:
        return int(next(iter(self.layer_stats.values())).basis.shape[0])

    def components(self, layer: int) -> ComponentTable:
        """Vectorised component distributions of ``layer`` (cached)."""
        key = f"table.{layer}"
        tab = self._splines.get(key)
        if tab is None:
            k = self.layer_stats[layer].component_knots.shape[0]
            tab = ComponentTable([self.spline(f"component.{layer}.{i}") for i in range(k)])
            self._splines[key] = tab
        return tab

    def spline(self, key: str) -> SplineCDF:
        """Cached spline for ``signal.<name>``, ``anomaly``, ``residual.<layer>`` or
        ``component.<layer>.<i>``."""
        s = self._splines.get(key)
        if s is None:
            s = SplineCDF(self._knots_for(key), self._probs_for(key))
            self._splines[key] = s
        return s

    def _knots_for(self, key: str) -> np.ndarray:
        kind, _, rest = key.partition(".")
        if kind == "signal":
            return self.heads[rest].knots
        if kind == "anomaly":
            return self.anomaly_knots
        if kind == "residual":
            return self.layer_stats[int(rest)].residual_knots
        if kind == "component":
            layer, i = rest.split(".")
            return self.layer_stats[int(layer)].component_knots[int(i)]
        raise KeyError(key)

    def _probs_for(self, key: str) -> np.ndarray:
        n = len(self._knots_for(key))
        return self.probs[-n:] if n < len(self.probs) else self.probs

    # -- validation against a model ------------------------------------------------------------
    def check_model(self, model_info: Mapping[str, Any]) -> None:
        """Refuse a model this codebook was not built for (name, weights, layers, pooling)."""
        meta = self.metadata.get("model", {})
        problems = []
        for key in ("name", "weights_digest", "pooling", "chat_template", "system_prompt"):
            want, got = meta.get(key), model_info.get(key)
            if want is not None and got is not None and want != got:
                problems.append(f"{key}: codebook has {want!r}, model has {got!r}")
        missing = [
            layer for layer in self.layers if layer not in tuple(model_info.get("layers", ()))
        ]
        if missing:
            problems.append(f"layers {missing} are not produced by the model")
        if problems:
            raise CodebookMismatchError(
                "this codebook was built for another model configuration: "
                + "; ".join(problems)
                + ". Build one for this model with `alknet-firewall codebook build`, or configure "
                "the model the codebook names."
            )
        # The dtype is how the model is executed, not which model it is: a codebook fitted in
        # float32 holds in bfloat16 (and the float32 ONNX export) within the tolerance in
        # docs/adr/0005-cpu-defaults.md (tests/test_dtype_tolerance.py); int8 weights do not.
        # ``model.dtype`` in the metadata records the dtype the codebook was fitted in.
        fitted, runs = meta.get("dtype"), model_info.get("dtype")
        if fitted is not None and runs is not None and fitted != runs:
            if "int8" in (fitted, runs):
                log.warning(
                    "codebook fitted in %s, the model runs %s: int8 moves scores beyond the "
                    "documented tolerance (docs/adr/0005-cpu-defaults.md); fit or calibrate "
                    "the codebook in the dtype it runs in",
                    fitted,
                    runs,
                )
            else:
                log.info(
                    "codebook fitted in %s, the model runs %s (tolerance: ADR 0005)", fitted, runs
                )
        for key in ("max_tokens", "window_overlap", "sub_window"):
            want, got = meta.get(key), model_info.get(key)
            if want is not None and got is not None and want != got:
                log.warning(
                    "codebook was calibrated with %s=%r, the model runs %r: scores may drift; "
                    "recalibrate with `alknet-firewall codebook calibrate`",
                    key,
                    want,
                    got,
                )

    # -- serialisation -------------------------------------------------------------------------
    def tensors(self) -> dict[str, np.ndarray]:
        t: dict[str, np.ndarray] = {"probs": self.probs.astype(np.float64)}
        for layer, st in self.layer_stats.items():
            t[f"layer.{layer}.mean"] = st.mean.astype(np.float32)
            t[f"layer.{layer}.scale"] = st.scale.astype(np.float32)
            t[f"layer.{layer}.basis"] = st.basis.astype(np.float32)
            t[f"layer.{layer}.singular"] = st.singular.astype(np.float32)
            t[f"layer.{layer}.component_knots"] = st.component_knots.astype(np.float64)
            t[f"layer.{layer}.residual_knots"] = st.residual_knots.astype(np.float64)
        for name, h in self.heads.items():
            t[f"signal.{name}.weight"] = h.weight.astype(np.float32)
            t[f"signal.{name}.bias"] = np.array([h.bias], dtype=np.float64)
            t[f"signal.{name}.knots"] = h.knots.astype(np.float64)
        t["anomaly.knots"] = self.anomaly_knots.astype(np.float64)
        return t

    def _digest(self) -> str:
        h = hashlib.sha256()
        for name, arr in sorted(self.tensors().items()):
            h.update(name.encode())
            h.update(str(arr.dtype).encode())
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps(self.thresholds, sort_keys=True).encode())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = self._digest()
        meta = dict(self.metadata)
        meta.update(
            schema_version=SCHEMA_VERSION,
            layers=list(self.layers),
            k=self.k,
            signals=list(self.signals),
            thresholds=self.thresholds,
            score_decades=SCORE_DECADES,
            tensors_digest="sha256:" + digest,
            codebook_id=digest[:16],
        )
        self.metadata = meta
        tmp = path.with_name(path.name + ".tmp")
        save_file(
            self.tensors(), str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)}
        )
        tmp.chmod(0o644)
        tmp.replace(path)
        return path

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "schema_version": self.metadata.get("schema_version", SCHEMA_VERSION),
            "layers": list(self.layers),
            "k": self.k,
            "signals": list(self.signals),
            "thresholds": self.thresholds,
            **{k: v for k, v in self.metadata.items() if k not in {"thresholds", "layers", "k"}},
        }


def load_codebook(path: str | Path | None = None) -> Codebook:
    """Load and validate a codebook (``None``: the default shipped in the package)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path) if path is not None else default_codebook_path()
    if not path.is_file():
        raise CodebookError(
            f"codebook {path} does not exist. Build one with `alknet-firewall codebook build` "
            "or leave detection.codebook unset to use the default."
        )
    try:
        with safe_open(str(path), framework="numpy") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError, ValueError) as exc:
        raise CodebookError(f"{path} is not a readable safetensors codebook: {exc}") from exc
    if METADATA_KEY not in header:
        raise CodebookError(f"{path} is a safetensors file but not an alknet-firewall codebook")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CodebookError(f"{path}: codebook metadata is not valid JSON: {exc}") from exc
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CodebookError(
            f"{path}: codebook schema version {version!r} is not supported (this release reads "
            f"{SCHEMA_VERSION}); rebuild it with `alknet-firewall codebook build`."
        )
    try:
        cb = _from_tensors(tensors, meta)
    except (KeyError, ValueError, IndexError) as exc:
        raise CodebookError(f"{path}: codebook is incomplete or inconsistent: {exc}") from exc
    want = str(meta.get("tensors_digest", "")).removeprefix("sha256:")
    got = cb._digest()
    if want != got:
        raise CodebookError(
            f"{path}: codebook digest mismatch (header {want[:16]}…, content {got[:16]}…): the "
            "file was altered or corrupted. Rebuild or re-download it."
        )
    return cb


def _from_tensors(t: dict[str, np.ndarray], meta: dict[str, Any]) -> Codebook:
    layers = tuple(int(x) for x in meta["layers"])
    stats = {}
    for layer in layers:
        p = f"layer.{layer}."
        stats[layer] = LayerStats(
            mean=t[p + "mean"],
            scale=t[p + "scale"],
            basis=t[p + "basis"],
            singular=t[p + "singular"],
            component_knots=t[p + "component_knots"],
            residual_knots=t[p + "residual_knots"],
        )
        d = stats[layer].mean.shape[0]
        if stats[layer].basis.shape[1] != d or stats[layer].scale.shape != (d,):
            raise ValueError(f"layer {layer} tensors have inconsistent shapes")
    heads = {}
    for name in meta["signals"]:
        if name == "anomaly":
            continue
        heads[name] = SignalHead(
            weight=t[f"signal.{name}.weight"],
            bias=float(t[f"signal.{name}.bias"][0]),
            knots=t[f"signal.{name}.knots"],
        )
        if heads[name].weight.shape[0] != sum(stats[x].mean.shape[0] for x in layers):
            raise ValueError(f"signal {name} weight does not match the layers")
    return Codebook(
        layers=layers,
        layer_stats=stats,
        heads=heads,
        anomaly_knots=t["anomaly.knots"],
        probs=t["probs"],
        thresholds={k: float(v) for k, v in meta["thresholds"].items()},
        metadata=meta,
    )


def default_codebook_path() -> Path:
    return Path(__file__).parent / "data" / "default_codebook.safetensors"


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Labelled:
    """Window features with a kind and a group (source) per text."""

    features: Any  # model.WindowFeatures
    kinds: Sequence[str]
    groups: Sequence[str] | None = None


class CodebookBuilder:
    """Fits a :class:`Codebook` from labelled window features (scikit-learn style).

    ``fit`` returns ``self``; the result is ``codebook_``. Heads are fitted on one part of the
    benign texts and calibrated (splines, thresholds) on the held-out rest.
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
        self.target_fpr = dict(target_fpr or DEFAULT_TARGET_FPR)
        self.calibration_fraction = calibration_fraction
        self.probs = probs
        self.random_state = random_state

    def _validate(self, feats: Any, kinds: Sequence[str]) -> None:
        if len(kinds) != feats.n_texts:
            raise ConfigurationError(f"{len(kinds)} kinds for {feats.n_texts} texts")
        unknown = set(kinds) - BENIGN_KINDS - set().union(*SIGNAL_KINDS.values())
        if unknown:
            raise ConfigurationError(f"unknown kinds {sorted(unknown)}")
        if not 0.05 <= self.calibration_fraction <= 0.9:
            raise ConfigurationError("calibration_fraction must lie in [0.05, 0.9]")
        levels = ("notice", "warning", "critical")
        if set(self.target_fpr) != set(levels):
            raise ConfigurationError(f"target_fpr must name exactly {levels}")
        fprs = [self.target_fpr[x] for x in levels]
        if not all(0 < f < 1 for f in fprs) or fprs != sorted(fprs, reverse=True):
            raise ConfigurationError("target_fpr must decrease: notice > warning > critical > 0")

    def fit(
        self,
        feats: Any,
        kinds: Sequence[str],
        *,
        groups: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CodebookBuilder:
        """Fit on :class:`~alknet_firewall.model.WindowFeatures` and one kind per text."""
        from sklearn.linear_model import LogisticRegression

        self._validate(feats, kinds)
        kinds_a = np.asarray(kinds)
        rng = np.random.default_rng(self.random_state)
        benign = np.isin(kinds_a, list(BENIGN_KINDS))
        if benign.sum() < 100:
            raise ConfigurationError("need at least 100 benign texts to fit a codebook")
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
        self.codebook_ = calibrate(cb, _subset(all_feats, calib), self.target_fpr)
        return self

    def _layer_stats(self, F: np.ndarray) -> LayerStats:
        F = F.astype(np.float64)
        mean = F.mean(0)
        C = F - mean
        k = min(self.k, C.shape[1], C.shape[0] - 1)
        _, _, vt = np.linalg.svd(C, full_matrices=False)
        basis = vt[:k]
        proj = C @ basis.T
        sing = proj.std(0) + 1e-8
        zs = proj / sing
        comp = np.stack([SplineCDF.fit(zs[:, i], self.probs).knots for i in range(k)])
        resid = _residual(C, basis)
        return LayerStats(
            mean=mean.astype(np.float32),
            scale=F.std(0).astype(np.float32) + 1e-6,
            basis=basis.astype(np.float32),
            singular=sing.astype(np.float32),
            component_knots=comp,
            residual_knots=SplineCDF.fit(resid, self.probs).knots,
        )


def _residual(C: np.ndarray, basis: np.ndarray) -> np.ndarray:
    proj = C @ basis.T
    return np.maximum((C * C).sum(1) - (proj * proj).sum(1), 0.0) / C.shape[1]


def _subset(feats: Any, text_mask: np.ndarray) -> Any:
    return feats.subset(text_mask)


def calibrate(
    codebook: Codebook,
    benign: Any,
    target_fpr: Mapping[str, float] | None = None,
    *,
    source: str | None = None,
) -> Codebook:
    """Fit score distributions and level thresholds on benign window features (no labels).

    This is how users fit *their* normal: run it on their own benign traffic.
    """
    from .scoring import Scorer

    target = dict(target_fpr or codebook.metadata.get("target_fpr") or DEFAULT_TARGET_FPR)
    if benign.n_texts < 50:
        raise ConfigurationError(
            f"calibration needs at least 50 benign texts, got {benign.n_texts}"
        )
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
    for level in ("notice", "warning", "critical"):
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
