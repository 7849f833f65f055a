"""What every model server does, without a web framework: describe the model, parse encode
requests, run many clients' windows in one forward batch, split the answer back.

Used by the single-box server (:mod:`.app`) and the Ray Serve deployment (:mod:`.ray_serve`).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import ModelSettings, Settings
from ..errors import BadInputError, CodebookMismatchError, InputTooLargeError
from ..features import Window, WindowFeatures
from ..integrations.openai_errors import status_for
from ..model import wire
from ..model.base import IDENTITY_KEYS

__all__ = [
    "EncodeService",
    "Job",
    "error_reply",
    "error_status",
    "serving_model_settings",
    "tokenizer_json",
    "vocab_size",
]


log = logging.getLogger(__name__)


def serving_model_settings(settings: Settings) -> ModelSettings:
    """The model settings a server runs: the configured model read the way the configured
    codebook (``detection.codebook``) was built, so that clients using that codebook match."""
    from ..codebook import load_codebook

    cb = load_codebook(settings.detection.codebook)
    return settings.model.merged(reading=cb.reading(), backend="local", threads=None)


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
        size = model.max_tokens if hasattr(model, "max_tokens") else None
        self.limits = wire.RequestLimits(
            max_windows=max_request_windows,
            max_tokens=int(size or model.settings.reading.max_tokens),
            vocab_size=vocab_size(model),
        )

    def describe(self, **limits: Any) -> dict[str, Any]:
        return {
            "protocol": wire.PROTOCOL_VERSION,
            "identity": self.identity,
            "tokenizer": {"path": wire.TOKENIZER_PATH, "sha256": self.tokenizer_digest},
            "limits": {
                "max_request_windows": self.max_request_windows,
                "vocab_size": self.limits.vocab_size,
                **limits,
            },
        }

    def body_limit(self, configured: int | None = None) -> int:
        """Bytes an encode body may have: ``configured`` (``model_server.max_body_bytes``), or
        what the largest valid request takes (every window full, each token id at most 7
        digits and a separator, 64 bytes per window around them) plus 64 KiB."""
        if configured is not None:
            return configured
        tokens = self.limits.max_tokens or 0
        return self.max_request_windows * (tokens * 8 + 64) + 64 * 1024

    # -- requests ------------------------------------------------------------------------------
    def parse(self, body: bytes) -> Job:
        """A validated job, or BadInputError (400), InputTooLargeError (413),
        CodebookMismatchError (409). Every field is checked here, before the job may share a
        forward batch with other clients' jobs (token ids within the vocabulary included)."""
        try:
            req = wire.decode_request(body, self.limits)
        except wire.WireTooLarge as exc:
            raise InputTooLargeError(str(exc)) from None
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

    def run_each(self, jobs: list[Job]) -> list[WindowFeatures | Exception]:
        """:meth:`run`, isolating failures: when the shared forward pass raises, each job runs
        again alone, so only a job that fails on its own gets an error (its exception, in its
        place); the others get their features. One bad request never fails another client's."""
        try:
            return list(self.run(jobs))
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
            log.warning(
                "a forward batch of %d requests failed (%s); running each alone",
                len(jobs),
                type(exc).__name__,
            )
        out: list[WindowFeatures | Exception] = []
        for job in jobs:
            try:
                out.append(self.run([job])[0])
            except Exception as exc:
                out.append(exc)
        return out

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


def vocab_size(model: Any) -> int | None:
    """Token ids the model can embed (its embedding rows; else its tokenizer's size), or
    ``None`` when the model does not say (then ids are only checked to be non-negative)."""
    own = getattr(model, "vocab_size", None)
    if isinstance(own, int):
        return own
    torch_model = getattr(model, "_model", None)
    embeddings = getattr(torch_model, "get_input_embeddings", None)
    if callable(embeddings):
        rows = getattr(embeddings(), "num_embeddings", None)
        if isinstance(rows, int):
            return rows
    tok = getattr(model, "tokenizer", None)
    size = getattr(tok, "get_vocab_size", None)
    if callable(size):  # tokenizers.Tokenizer (the ONNX backend)
        return int(size(with_added_tokens=True))
    if tok is not None and hasattr(tok, "__len__"):  # a transformers tokenizer
        return len(tok)
    return None


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


def error_reply(exc: BaseException) -> tuple[int, str, str]:
    """Status, code and message of an error answer. A 4xx carries the message of one of our
    own checks; a 5xx never carries exception text (it may name internals): a generic message
    and a reference that the server's log has, with the detail."""
    status, code = error_status(exc)
    if status < 500:
        return status, code, str(exc)
    ref = uuid.uuid4().hex[:12]
    log.error("encode failed (ref %s): %s: %s", ref, type(exc).__name__, exc)
    return status, code, f"the model failed on this request (ref {ref} in the server log)"
