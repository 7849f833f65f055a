"""The codebook: what "normal" and "attack" look like in activation space.

Per layer: the benign mean, an SVD basis of the benign activations with per-component spline
distributions, and a residual-energy distribution (together: the ``anomaly`` signal). Per signal
(``injection``, ``jailbreak``, ``harmful``): a linear head over the standardised activations whose
benign score distribution is a monotone spline, so every signal speaks the same calibrated scale.
Thresholds per alarm level are set on held-out benign texts for target false-positive rates.

Stored as one ``.safetensors`` file with JSON metadata in its header (see ``docs/codebook.md``).
This module holds the data, its I/O and its check against a model; fitting is in
:mod:`alknet_firewall.training.fitting`, scoring in :mod:`alknet_firewall.scoring`.

Size (~470 lines): the dataclasses, the schema-1/2/3 reader, the digest and the model check
share one tensor layout; apart they would each restate it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from .distributions import (
    DEFAULT_PROBS,
    SCORE_DECADES,
    ComponentTable,
    SplineCDF,
    surprise,
    surprise_inverse,
)
from .errors import CodebookError, CodebookMismatchError
from .model.base import READING_KEYS

__all__ = [
    "BENIGN_KINDS",
    "DEFAULT_PROBS",
    "DEFAULT_TARGET_FPR",
    "DETECTION_SIGNALS",
    "METADATA_KEY",
    "SCHEMA_VERSION",
    "SCORE_DECADES",
    "SIGNAL_KINDS",
    "Codebook",
    "ComponentTable",
    "LayerStats",
    "SignalHead",
    "SplineCDF",
    "default_codebook_path",
    "load_codebook",
    "surprise",
    "surprise_inverse",
]

log = logging.getLogger(__name__)

#: 2 adds span heads (``span.<signal>.*``) and ``alarm_signals``; version 1 files still load.
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
METADATA_KEY = "alknet_firewall"
DETECTION_SIGNALS = ("injection", "jailbreak", "harmful")
SIGNAL_KINDS: dict[str, frozenset[str]] = {
    "injection": frozenset({"direct_injection", "indirect_injection", "prompt_extraction"}),
    "jailbreak": frozenset({"jailbreak"}),
    "harmful": frozenset({"harmful_request"}),
}
BENIGN_KINDS = frozenset({"benign", "benign_hard"})
DEFAULT_TARGET_FPR: dict[str, float] = {"notice": 0.05, "warning": 0.01, "critical": 0.001}


@dataclass
class LayerStats:
    """Benign statistics of one layer."""

    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d] standard deviation of the fitting activations (for the heads)
    basis: np.ndarray  # [k, d] orthonormal rows: top right singular vectors of benign data
    singular: np.ndarray  # [k] std of benign projections on each component
    component_knots: np.ndarray  # [k, q] quantiles of the standardised projections
    residual_knots: np.ndarray  # [q] quantiles of residual energy outside the basis

    def project(self, F: np.ndarray, *, standardise: bool = True) -> np.ndarray:
        """Projections ``[n, k]`` of activations ``F`` (``[n, d]``) on the benign basis, in
        units of the benign spread (``standardise=False``: raw projections). The one place
        fitting, scoring and evidence compute it."""
        proj = self._centred(F) @ self.basis.T.astype(np.float64)
        return proj / self.singular if standardise else proj

    def residual(self, F: np.ndarray) -> np.ndarray:
        """Residual energy ``[n]``: mean squared activation outside the basis."""
        return self.statistics(F)[1]

    def statistics(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(project(F), residual(F))`` in one pass."""
        C = self._centred(F)
        proj = C @ self.basis.T.astype(np.float64)
        resid = np.maximum((C * C).sum(1) - (proj * proj).sum(1), 0.0) / C.shape[1]
        return proj / self.singular, resid

    def _centred(self, F: np.ndarray) -> np.ndarray:
        return np.asarray(F, dtype=np.float64) - self.mean


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
    #: Heads over span rows (``span_layer`` features of short spans inside windows), keyed by
    #: the signal they add evidence to: its score is the max of window and span evidence.
    span_heads: dict[str, SignalHead] = field(default_factory=dict)
    #: Benign quantiles of the composite score per calibration group (``short`` texts, a
    #: language group: ``lang:latin``, ``lang:cjk``): a text of a group is scored against its
    #: own group's benign texts too (``scoring.Context``; schema 3).
    group_knots: dict[str, np.ndarray] = field(default_factory=dict)
    #: The probabilities of a spline's knots where they are not the tail of ``probs`` (a
    #: distribution fitted on fewer than ~1,000 values keeps only the tail probabilities its
    #: sample supports, at both ends), keyed like :meth:`spline` (schema 3: ``probs.<key>``).
    spline_probs: dict[str, np.ndarray] = field(default_factory=dict)

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
    def alarm_signals(self) -> tuple[str, ...]:
        """Signals that may raise ``warning`` and ``critical``: those that lifted detection in
        the leave-family-out evaluation (``metadata['alarm_signals']``). The others only
        annotate (at most ``notice``). Codebooks without the entry: every signal."""
        names = self.metadata.get("alarm_signals")
        return tuple(names) if names is not None else self.signals

    def reading(self) -> dict[str, Any]:
        """``model.reading`` settings that make a model read text the way this codebook was
        fitted: its layers and the reading keys it records (pooling, windows, spans ...). Every
        place that builds a model for a codebook merges them over the user's:
        ``settings.model.merged(reading=codebook.reading())``."""
        meta = self.metadata.get("model", {})
        return {"layers": tuple(self.layers), **{k: meta[k] for k in READING_KEYS if k in meta}}

    @property
    def span_layer(self) -> int:
        """The layer span heads read (the deepest codebook layer)."""
        return int(self.metadata.get("span_layer", max(self.layers)))

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
        if kind == "span":
            return self.span_heads[rest].knots
        if kind == "anomaly":
            return self.anomaly_knots
        if kind == "group":
            return self.group_knots[rest]
        if kind == "residual":
            return self.layer_stats[int(rest)].residual_knots
        if kind == "component":
            layer, i = rest.split(".")
            return self.layer_stats[int(layer)].component_knots[int(i)]
        raise KeyError(key)

    def _probs_for(self, key: str) -> np.ndarray:
        if key in self.spline_probs:
            return self.spline_probs[key]
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
        for name, h in self.span_heads.items():
            t[f"span.{name}.weight"] = h.weight.astype(np.float32)
            t[f"span.{name}.bias"] = np.array([h.bias], dtype=np.float64)
            t[f"span.{name}.knots"] = h.knots.astype(np.float64)
        t["anomaly.knots"] = self.anomaly_knots.astype(np.float64)
        for name, knots in self.group_knots.items():
            t[f"group.{name}.knots"] = knots.astype(np.float64)
        for key, p in self.spline_probs.items():
            t[f"probs.{key}"] = p.astype(np.float64)
        return t

    def _digest(self) -> str:
        h = hashlib.sha256()
        for name, arr in sorted(self.tensors().items()):
            h.update(name.encode())
            h.update(str(arr.dtype).encode())
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps(self.thresholds, sort_keys=True).encode())
        if self.span_heads or "alarm_signals" in self.metadata:
            # Schema 2: which signals may alarm, and which layer span heads read, decide
            # verdicts as much as the tensors do (schema-1 digests stay as they were).
            decisive = {
                "alarm_signals": self.metadata.get("alarm_signals"),
                "span_layer": self.metadata.get("span_layer"),
            }
            if self.group_knots or "request" in self.metadata:
                # Schema 3: how a request's texts combine decides verdicts too.
                decisive["request"] = self.metadata.get("request")
            h.update(json.dumps(decisive, sort_keys=True).encode())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = self._digest()
        meta = dict(self.metadata)
        meta.update(
            schema_version=SCHEMA_VERSION,
            layers=list(self.layers),
            k=self.k,
            signals=list(self.signals),
            span_signals=list(self.span_heads),
            groups=list(self.group_knots),
            thresholds=self.thresholds,
            score_decades=SCORE_DECADES,
            tensors_digest="sha256:" + digest,
            codebook_id=digest[:16],
        )
        self.metadata = meta
        # A unique temporary name: concurrent saves to one path never write the same file.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.incomplete")
        try:
            save_file(
                self.tensors(), str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)}
            )
            tmp.chmod(0o644)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
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
    if version not in READABLE_SCHEMAS:
        raise CodebookError(
            f"{path}: codebook schema version {version!r} is not supported (this release reads "
            f"{', '.join(map(str, READABLE_SCHEMAS))}); rebuild it with "
            "`alknet-firewall codebook build`."
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
    span_heads = {}
    for name in meta.get("span_signals", ()):
        span_heads[name] = SignalHead(
            weight=t[f"span.{name}.weight"],
            bias=float(t[f"span.{name}.bias"][0]),
            knots=t[f"span.{name}.knots"],
        )
        span_layer = int(meta.get("span_layer", max(layers)))
        if (
            span_layer not in stats
            or span_heads[name].weight.shape[0] != (stats[span_layer].mean.shape[0])
        ):
            raise ValueError(f"span head {name} does not match layer {span_layer}")
    group_knots = {name: t[f"group.{name}.knots"] for name in meta.get("groups", ())}
    spline_probs = {k.removeprefix("probs."): v for k, v in t.items() if k.startswith("probs.")}
    for key, p in spline_probs.items():
        kind, _, rest = key.partition(".")
        knots = {
            "signal": lambda r: heads[r].knots,
            "span": lambda r: span_heads[r].knots,
            "group": lambda r: group_knots[r],
            "anomaly": lambda r: t["anomaly.knots"],
        }[kind](rest)
        if p.shape != knots.shape:
            raise ValueError(f"probs.{key} does not match its knots")
    return Codebook(
        span_heads=span_heads,
        group_knots=group_knots,
        spline_probs=spline_probs,
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
