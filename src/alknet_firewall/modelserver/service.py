"""What every model server does, without a web framework: describe the model, parse encode
requests, run many clients' windows in one forward batch, split the answer back.

Used by the single-box server (:mod:`.app`) and the Ray Serve deployment (:mod:`.ray_serve`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import ModelSettings, Settings
from ..errors import BadInputError, CodebookMismatchError, InputTooLargeError
from ..features import Window, WindowFeatures
from ..integrations.openai_errors import status_for
from ..model import wire
from ..model.base import IDENTITY_KEYS, READING_KEYS

__all__ = [
    "EncodeService",
    "Job",
    "error_status",
    "serving_model_settings",
    "tokenizer_json",
]


log = logging.getLogger(__name__)


def serving_model_settings(settings: Settings) -> ModelSettings:
    """The model settings a server runs: the configured model read the way the configured
    codebook (``detection.codebook``) was built, so that clients using that codebook match."""
    from ..codebook import load_codebook

    cb = load_codebook(settings.detection.codebook)
    meta = cb.metadata.get("model", {})
    changes: dict[str, Any] = {"layers": list(cb.layers), "backend": "local", "threads": None}
    for key in READING_KEYS:
        if key in meta:
            changes[key] = meta[key]
    return settings.model.merged(**changes)


def tokenizer_json(model: Any) -> bytes:
    """The model's ``tokenizer.json`` (what clients tokenise with)."""
    fn = getattr(model, "tokenizer_json", None)
    if callable(fn):
        out = fn()
        return out.encode() if isinstance(out, str) else bytes(out)
    tok = getattr(model, "tokenizer", None)
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(model).__name__} exposes no fast tokenizer to serve")
    return backend.to_str().encode()


@dataclass
class Job:
    """One encode request: windows re-indexed from 0, and the layers it wants."""

    windows: list[Window]
    n_texts: int
    layers: list[int]
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class EncodeService:
    """The model, its identity, and the batch function."""

    def __init__(self, model: Any, *, max_request_windows: int = 4096) -> None:
        self.model = model
        self.max_request_windows = max_request_windows
        info = model.describe()
        self.identity = {
            **{k: info.get(k) for k in IDENTITY_KEYS},
            "hidden_size": int(info.get("hidden_size", model.hidden_size)),
            "feature_size": int(info.get("feature_size", model.feature_size)),
            "total_layers": info.get("total_layers"),
            "source": info.get("source"),
        }
        self.identity["layers"] = list(self.identity["layers"] or model.layers)
        self.tokenizer = tokenizer_json(model)
        self.tokenizer_digest = "sha256:" + hashlib.sha256(self.tokenizer).hexdigest()
        # Template tokens around every window: part of each window's forward cost.
        self._overhead = len(getattr(model, "_prefix", ())) + len(getattr(model, "_suffix", ()))

    def describe(self, **limits: Any) -> dict[str, Any]:
        return {
            "protocol": wire.PROTOCOL_VERSION,
            "identity": self.identity,
            "tokenizer": {"path": wire.TOKENIZER_PATH, "sha256": self.tokenizer_digest},
            "limits": {"max_request_windows": self.max_request_windows, **limits},
        }

    # -- requests ------------------------------------------------------------------------------
    def parse(self, body: bytes) -> Job:
        """A validated job, or BadInputError (400), InputTooLargeError (413),
        CodebookMismatchError (409)."""
        try:
            req = wire.decode_request(body)
        except wire.WireError as exc:
            raise BadInputError(str(exc)) from None
        if req["identity"]:
            problems = wire.identity_problems(req["identity"], self.identity, list(req["identity"]))
            if problems:
                raise CodebookMismatchError("; ".join(problems))
        layers = req["layers"] or list(self.identity["layers"])
        missing = [x for x in layers if x not in self.identity["layers"]]
        if missing:
            raise CodebookMismatchError(
                f"layers {missing} are not served (server has {self.identity['layers']})"
            )
        if "texts" in req:
            m = self.model
            wins = m.windows(m.tokenize(req["texts"]))
            n_texts = len(req["texts"])
        else:
            wins = [Window(t, i, s, c) for t, i, s, c in req["windows"]]
            n_texts = req["n_texts"]
        if len(wins) > self.max_request_windows:
            raise InputTooLargeError(
                f"the request carries {len(wins)} windows, above {self.max_request_windows}"
            )
        size = self.model.max_tokens if hasattr(self.model, "max_tokens") else None
        size = size or self.model.settings.max_tokens
        if any(len(w.content) > size for w in wins):
            raise BadInputError(f"a window is longer than the server's max_tokens={size}")
        tokens = sum(len(w.content) + self._overhead for w in wins)
        return Job(wins, n_texts, layers, tokens=max(1, tokens))

    # -- batches -------------------------------------------------------------------------------
    def run(self, jobs: list[Job]) -> list[WindowFeatures]:
        """One forward batch for every job; each gets its own rows back."""
        wins: list[Window] = []
        offsets = []
        off = 0
        for job in jobs:
            offsets.append(off)
            wins += [Window(w.text + off, w.index, w.start, w.content) for w in job.windows]
            off += job.n_texts
        feats = self.model.encode_token_windows(wins, off)
        return [
            _slice(feats, start, job.n_texts, job.layers)
            for job, start in zip(jobs, offsets, strict=True)
        ]

    def body(self, feats: WindowFeatures, job: Job, **extra: Any) -> bytes:
        return wire.encode_features(feats, job.layers, **extra)


def _slice(feats: WindowFeatures, start: int, n: int, layers: list[int]) -> WindowFeatures:
    keep = (feats.text_index >= start) & (feats.text_index < start + n)
    return WindowFeatures(
        features={k: feats.features[k][keep] for k in layers},
        text_index=feats.text_index[keep] - start,
        window_index=feats.window_index[keep],
        token_start=feats.token_start[keep],
        n_tokens=feats.n_tokens[keep],
        n_texts=n,
        is_sub=(feats.is_sub[keep] if feats.is_sub is not None else np.zeros(keep.sum(), bool)),
    )


def error_status(exc: BaseException) -> tuple[int, str]:
    """HTTP status and error code of an exception from parse/run."""
    from ..errors import FirewallError, OverloadError

    if isinstance(exc, OverloadError):
        return 429, exc.code
    if isinstance(exc, CodebookMismatchError):
        return 409, exc.code
    if isinstance(exc, BadInputError):
        return status_for(exc), exc.code
    if isinstance(exc, FirewallError):
        return 500, exc.code
    return 500, "internal_error"
