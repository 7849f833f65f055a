"""The activation wire protocol (version 1): what a screening process and a model server exchange.

numpy and the standard library only, so the screening side (``model.backend: remote``) needs
neither torch nor Ray. The full description is ``docs/deploy/protocol.md``.

- ``GET /v1/describe`` → JSON: ``{"protocol": 1, "identity": {...}, "tokenizer": {...},
  "limits": {...}}``. ``identity`` holds :data:`IDENTITY_KEYS` (name, revision, weights digest,
  layers, pooling and windowing, dtype) plus hidden and feature sizes.
- ``GET /v1/tokenizer`` → the server's ``tokenizer.json`` (its sha256 is in ``describe``).
- ``POST /v1/encode`` with a JSON body (:func:`encode_request`): token windows the client cut
  (``{"windows": [[text, index, start, [ids...]], ...], "n_texts": N, "layers": [...]}``) or
  raw texts (``{"texts": [...]}``, the server tokenises). The answer is a binary body
  (:data:`CONTENT_TYPE`, :func:`encode_features`): ``b"AKF1"``, a little-endian ``uint32``
  header length, a JSON header naming each array (dtype, shape), then the raw little-endian
  arrays, each padded to 8 bytes: window metadata (``text_index``, ``window_index``,
  ``token_start``, ``n_tokens``, ``is_sub``) and ``layer.<n>`` float32 ``[rows, feature_size]``.
- Errors are JSON ``{"error": {"code", "message"}}``: 400 bad request (every field is checked
  by :func:`decode_request` against the server's :class:`RequestLimits`), 401 no valid key,
  408 body too slow, 409 identity mismatch, 413 too large, 429/503 overloaded or not ready
  (with ``Retry-After``), 500 model failure (a generic message; the detail is in the log).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CONTENT_TYPE",
    "DESCRIBE_PATH",
    "ENCODE_PATH",
    "JSON_TYPE",
    "MAGIC",
    "PROTOCOL_VERSION",
    "TOKENIZER_PATH",
    "RequestLimits",
    "WireError",
    "WireTooLarge",
    "decode_features",
    "decode_request",
    "encode_features",
    "encode_request",
    "error_body",
    "features_from_body",
    "identity_problems",
]


PROTOCOL_VERSION = 1
MAGIC = b"AKF1"
CONTENT_TYPE = "application/x-alknet-features"
JSON_TYPE = "application/json"
DESCRIBE_PATH = "/v1/describe"
TOKENIZER_PATH = "/v1/tokenizer"
ENCODE_PATH = "/v1/encode"

#: Window metadata arrays, in body order, with their wire dtypes.
_META = (
    ("text_index", "<i4"),
    ("window_index", "<i4"),
    ("token_start", "<i4"),
    ("n_tokens", "<i4"),
    ("is_sub", "|u1"),
)
_HEAD = struct.Struct("<4sI")


class WireError(ValueError):
    """A body that does not follow the protocol."""


class WireTooLarge(WireError):
    """A request above the server's limits (413 rather than 400)."""


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------
def encode_request(
    windows: Sequence[Any] | None = None,
    n_texts: int | None = None,
    *,
    texts: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    identity: Mapping[str, Any] | None = None,
) -> bytes:
    """JSON body of ``POST /v1/encode``. ``windows`` are objects with ``text, index, start,
    content``; ``identity`` (optional) is what the client expects: the server answers 409 when
    its own identity differs in any key given."""
    body: dict[str, Any] = {"protocol": PROTOCOL_VERSION}
    if texts is not None:
        body["texts"] = list(texts)
    else:
        assert windows is not None and n_texts is not None
        body["n_texts"] = int(n_texts)
        body["windows"] = [[w.text, w.index, w.start, list(w.content)] for w in windows]
    if layers is not None:
        body["layers"] = [int(x) for x in layers]
    if identity:
        body["identity"] = dict(identity)
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RequestLimits:
    """What a server accepts in one ``POST /v1/encode`` (``None``: no limit of that kind).

    :func:`decode_request` checks every field against them before a request may join a batch,
    so that no request can fail a forward pass it shares with other clients."""

    #: Windows (and texts) in one request.
    max_windows: int | None = None
    #: Content tokens in one window.
    max_tokens: int | None = None
    #: Token ids must be below this (the model's embedding rows).
    vocab_size: int | None = None


#: Window text/index/start travel as int32 in the answer.
_MAX_INDEX = 2**31 - 1
#: Keys of a request body; anything else is refused (so that typos do not pass silently).
_REQUEST_KEYS = frozenset({"protocol", "n_texts", "windows", "texts", "layers", "identity"})
#: Keys an ``identity`` object may carry at most (the server announces about 15).
_MAX_IDENTITY_KEYS = 64


def decode_request(body: bytes, limits: RequestLimits | None = None) -> dict[str, Any]:
    """Parse and validate a ``POST /v1/encode`` body. Returns a dict with ``windows`` (list of
    ``(text, index, start, content)`` tuples) and ``n_texts``, or ``texts``; plus ``layers``
    and ``identity`` (``None`` when absent). Every field is checked (types: a bool is not an
    integer, nor is ``1.0``; ranges; ``limits``). Raises :class:`WireError` with a message that
    names the field; it never quotes the body."""
    lim = limits or RequestLimits()
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except WireError:
        raise
    except RecursionError:
        raise WireError("the request body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise WireError(
            f"the request body is not JSON (line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise WireError("the request body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise WireError("the request body must be a JSON object")
    unknown = sorted(k for k in data if k not in _REQUEST_KEYS)
    if unknown:
        raise WireError(f"unknown field(s) {_names(unknown)}; allowed: {sorted(_REQUEST_KEYS)}")
    protocol = data.get("protocol", PROTOCOL_VERSION)
    if not _is_int(protocol) or protocol != PROTOCOL_VERSION:
        raise WireError(f"'protocol' must be {PROTOCOL_VERSION}")
    out: dict[str, Any] = {"layers": None, "identity": None}
    layers = data.get("layers")
    if layers is not None:
        if not isinstance(layers, list) or not all(_is_int(x) and 0 <= x < 1024 for x in layers):
            raise WireError("'layers' must be a list of layer numbers (integers 0..1023)")
        if len(set(layers)) != len(layers):
            raise WireError("'layers' names a layer twice")
        out["layers"] = [int(x) for x in layers]
    identity = data.get("identity")
    if identity is not None:
        out["identity"] = _identity(identity)
    if "texts" in data:
        if "windows" in data or "n_texts" in data:
            raise WireError("send either 'texts' or 'windows' with 'n_texts', not both")
        texts = data["texts"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise WireError("'texts' must be a list of strings")
        if lim.max_windows is not None and len(texts) > lim.max_windows:
            raise WireTooLarge(f"the request carries {len(texts)} texts, above {lim.max_windows}")
        out["texts"] = texts
        return out
    n_texts, windows = data.get("n_texts"), data.get("windows")
    if not _is_int(n_texts) or n_texts < 0:
        raise WireError("'n_texts' must be a non-negative integer")
    if not isinstance(windows, list):
        raise WireError("'windows' must be a list of [text, index, start, [token ids]]")
    if lim.max_windows is not None:
        if len(windows) > lim.max_windows:
            raise WireTooLarge(
                f"the request carries {len(windows)} windows, above {lim.max_windows}"
            )
        if n_texts > lim.max_windows:
            raise WireTooLarge(f"'n_texts' is {n_texts}, above {lim.max_windows}")
    parsed = [_window(i, w, n_texts, lim) for i, w in enumerate(windows)]
    out["windows"] = parsed
    out["n_texts"] = int(n_texts)
    return out


def _window(i: int, w: Any, n_texts: int, lim: RequestLimits) -> tuple[int, int, int, list[int]]:
    shape = f"window {i} must be [text, index, start, [token ids]] of integers"
    if not isinstance(w, list) or len(w) != 4 or not isinstance(w[3], list):
        raise WireError(shape)
    text, index, start, ids = w
    if not all(_is_int(x) for x in (text, index, start)):
        raise WireError(shape)
    if not 0 <= text < n_texts:
        raise WireError(f"window {i}: text index {text} is outside 0..{n_texts - 1} (n_texts)")
    if not (0 <= index <= _MAX_INDEX and 0 <= start <= _MAX_INDEX):
        raise WireError(f"window {i}: index and start must be in 0..{_MAX_INDEX}")
    if lim.max_tokens is not None and len(ids) > lim.max_tokens:
        raise WireError(
            f"window {i} is longer than the server's max_tokens={lim.max_tokens} "
            f"({len(ids)} tokens)"
        )
    top = lim.vocab_size if lim.vocab_size is not None else _MAX_INDEX + 1
    for x in ids:
        if not _is_int(x):
            raise WireError(f"window {i}: token ids must be integers")
        if not 0 <= x < top:
            raise WireError(f"window {i}: token id {x} is outside the vocabulary (0..{top - 1})")
    return int(text), int(index), int(start), ids


def _identity(identity: Any) -> dict[str, Any]:
    """``identity``: an object of at most 64 string keys whose values are scalars (``layers``:
    a list of integers)."""
    if not isinstance(identity, dict):
        raise WireError("'identity' must be an object")
    if len(identity) > _MAX_IDENTITY_KEYS:
        raise WireError(f"'identity' has more than {_MAX_IDENTITY_KEYS} keys")
    for key, value in identity.items():
        if key == "layers":
            if not isinstance(value, list) or not all(_is_int(x) for x in value):
                raise WireError("'identity.layers' must be a list of integers")
        elif value is not None and not isinstance(value, str | int | float | bool):
            raise WireError(f"'identity.{key[:64]}' must be a string, number, boolean or null")
    return identity


def _names(keys: list[str]) -> str:
    return ", ".join(repr(k[:32]) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")


def _no_constant(name: str) -> Any:
    raise WireError(f"the request body holds {name}, which is not JSON")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------
def encode_features(feats: Any, layers: Sequence[int] | None = None, **extra: Any) -> bytes:
    """Binary body for a ``WindowFeatures`` (only ``layers`` when given). ``extra`` goes into
    the header (server timings, batch size)."""
    rows = len(feats.text_index)
    is_sub = feats.is_sub if feats.is_sub is not None else np.zeros(rows, dtype=bool)
    arrays: list[tuple[str, np.ndarray]] = [
        (name, np.ascontiguousarray(getattr(feats, name) if name != "is_sub" else is_sub, dt))
        for name, dt in _META
    ]
    for layer in layers if layers is not None else sorted(feats.features):
        arrays.append((f"layer.{layer}", np.ascontiguousarray(feats.features[layer], "<f4")))
    header = {
        "n_texts": int(feats.n_texts),
        "rows": rows,
        "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays],
        **extra,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    parts = [_HEAD.pack(MAGIC, len(head)), head, b"\0" * _pad(_HEAD.size + len(head))]
    for _, a in arrays:
        raw = a.tobytes()
        parts += [raw, b"\0" * _pad(len(raw))]
    return b"".join(parts)


def decode_features(body: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and arrays of a binary body (arrays are read-only views into ``body``)."""
    if len(body) < _HEAD.size:
        raise WireError("the response body is too short")
    magic, n = _HEAD.unpack_from(body)
    if magic != MAGIC:
        raise WireError(f"the response body does not start with {MAGIC!r}")
    try:
        header = json.loads(body[_HEAD.size : _HEAD.size + n])
    except ValueError as exc:
        raise WireError(f"the response header is not JSON: {exc}") from None
    offset = _HEAD.size + n
    offset += _pad(offset)
    arrays: dict[str, np.ndarray] = {}
    for spec in header.get("arrays", []):
        dt = np.dtype(spec["dtype"])
        shape = tuple(int(x) for x in spec["shape"])
        count = int(np.prod(shape)) if shape else 1
        size = count * dt.itemsize
        if offset + size > len(body):
            raise WireError(f"array {spec['name']} runs past the end of the body")
        arrays[spec["name"]] = np.frombuffer(body, dt, count, offset).reshape(shape)
        offset += size + _pad(size)
    return header, arrays


def features_from_body(body: bytes, window_features: type) -> Any:
    """``WindowFeatures`` (the class is passed in) from a binary body."""
    header, arrays = decode_features(body)
    try:
        feats = {
            int(name.split(".", 1)[1]): a.astype(np.float32)
            for name, a in arrays.items()
            if name.startswith("layer.")
        }
        return window_features(
            features=feats,
            text_index=arrays["text_index"].astype(np.int64),
            window_index=arrays["window_index"].astype(np.int64),
            token_start=arrays["token_start"].astype(np.int64),
            n_tokens=arrays["n_tokens"].astype(np.int64),
            n_texts=int(header["n_texts"]),
            is_sub=arrays["is_sub"].astype(bool),
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise WireError(f"the response body misses a field: {exc}") from None


def _pad(n: int) -> int:
    return -n % 8


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------
def identity_problems(
    want: Mapping[str, Any], got: Mapping[str, Any], keys: Sequence[str]
) -> list[str]:
    """Keys whose values differ (``layers``: every wanted layer must be served)."""
    problems = []
    for key in keys:
        if key not in want or want[key] is None:
            continue
        if key == "layers":
            missing = [x for x in want[key] if x not in tuple(got.get("layers", ()))]
            if missing:
                problems.append(f"layers {missing} are not served (server has {got.get('layers')})")
            continue
        if key not in got:
            problems.append(f"{key}: the server does not announce it")
        elif want[key] != got[key]:
            problems.append(f"{key}: expected {want[key]!r}, server has {got[key]!r}")
    return problems


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()
