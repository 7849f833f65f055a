"""``model.backend: remote`` — the activation model behind HTTP (``alknet-firewall model serve``
or the Ray Serve deployment), spoken through :mod:`.wire`.

The screening process keeps policies, codebooks, the cache and fail modes; it tokenises and cuts
windows itself (with the server's own ``tokenizer.json``, checked against the digest the server
announces) and sends token windows, so one round trip per micro-batch carries only integers out
and pooled float32 rows back. Needs ``httpx`` and ``tokenizers``, never torch or Ray.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..config import ModelSettings, Settings
from ..errors import (
    CodebookMismatchError,
    ConfigurationError,
    ModelError,
    OverloadError,
    ScreenTimeoutError,
    require,
)
from ..features import Window, WindowFeatures
from . import wire
from .base import IDENTITY_KEYS, READING_KEYS, WindowedModel

__all__ = [
    "RemoteActivationModel",
]


log = logging.getLogger(__name__)

#: Server identity keys the client's settings must match exactly (the reading keys decide what
#: the model reads and how it pools; the codebook checks name and weights digest).
_MATCH_KEYS = tuple(k for k in READING_KEYS if k not in ("max_tokens", "window_overlap"))


class RemoteActivationModel(WindowedModel):
    """An :class:`~alknet_firewall.model.base.ActivationModel` whose forward passes run on a
    model server. Thread-safe: pool workers share one connection pool."""

    def __init__(self, settings: ModelSettings | Settings) -> None:
        ms = settings.model if isinstance(settings, Settings) else settings
        if not ms.remote.url:
            raise ConfigurationError(
                "model.backend 'remote' needs model.remote.url (the model server's base URL, "
                "e.g. http://127.0.0.1:8090)"
            )
        require("httpx", "server")
        import httpx

        self.settings = ms
        self.url = ms.remote.url.rstrip("/")
        self._timeout = httpx.Timeout(ms.remote.timeout_s, connect=ms.remote.connect_timeout_s)
        self._client = httpx.Client(
            base_url=self.url,
            timeout=self._timeout,
            limits=httpx.Limits(
                max_connections=ms.remote.connections,
                max_keepalive_connections=ms.remote.connections,
            ),
            headers=_headers(ms.remote.key),
        )
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        try:
            info = self._describe()
            self._check(info)
            self._tokenizer = self._load_tokenizer(info)
        except BaseException:
            self._client.close()
            raise

    # -- identity ------------------------------------------------------------------------------
    def _describe(self) -> dict[str, Any]:
        resp = self._send("GET", wire.DESCRIBE_PATH)
        try:
            info = resp.json()
        except ValueError:
            raise ModelError(f"{self.url}{wire.DESCRIBE_PATH} did not answer JSON") from None
        if info.get("protocol") != wire.PROTOCOL_VERSION:
            raise ModelError(
                f"the model server at {self.url} speaks protocol {info.get('protocol')!r}; "
                f"this client speaks {wire.PROTOCOL_VERSION}"
            )
        return info

    def _check(self, info: dict[str, Any]) -> None:
        ident = info["identity"]
        ms = self.settings
        want = {k: getattr(ms.reading, k) for k in (*_MATCH_KEYS, "max_tokens", "window_overlap")}
        want["layers"] = list(ms.reading.layers)
        if ms.reading.pooling != "mean":  # spans and edges only exist with mean pooling
            want["sub_window"] = want["edge_window"] = 0
        if ms.remote.weights_digest:
            want["weights_digest"] = ms.remote.weights_digest
        problems = wire.identity_problems(want, ident, (*want.keys(),))
        if problems:
            raise CodebookMismatchError(
                f"the model server at {self.url} serves {ident.get('name')!r} "
                f"({ident.get('weights_digest')}) read differently than this codebook needs: "
                + "; ".join(problems)
                + ". Start the server with the codebook's model settings "
                "(`alknet-firewall model serve --codebook ...`) or point model.remote.url at "
                "one that has them."
            )
        self.identity = ident
        self.name = str(ident["name"])
        self.revision = str(ident["revision"])
        self.weights_digest = str(ident["weights_digest"])
        self.layers = tuple(ms.reading.layers)
        self.hidden_size = int(ident["hidden_size"])
        self.feature_size = int(ident["feature_size"])
        self.pooling = str(ident["pooling"])
        self.max_tokens = int(ident["max_tokens"])
        self.window_overlap = int(ident["window_overlap"])
        self.dtype = str(ident["dtype"])
        self.limits = dict(info.get("limits", {}))

    def _load_tokenizer(self, info: dict[str, Any]) -> Any:
        require("tokenizers")
        from tokenizers import Tokenizer

        tok = info.get("tokenizer", {})
        raw = self._send("GET", tok.get("path", wire.TOKENIZER_PATH)).content
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if tok.get("sha256") and tok["sha256"] != digest:
            raise ModelError(
                f"the tokenizer from {self.url} has digest {digest}, the server announced "
                f"{tok['sha256']}: refusing it"
            )
        self.tokenizer_digest = digest
        return Tokenizer.from_str(raw.decode("utf-8"))

    # -- transport -----------------------------------------------------------------------------
    def _send(self, method: str, path: str, content: bytes | None = None) -> Any:
        """One request with retries for failures that cannot have reached the model twice
        harmfully (every call here is idempotent): connection refused or reset, the server
        gone mid-request. Overload and timeouts are not retried: the pool's caller decides."""
        import httpx

        ms = self.settings
        attempts = ms.remote.retries + 1
        delay = ms.remote.backoff_s
        last: BaseException | None = None
        for attempt in range(attempts):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            try:
                resp = self._client.request(
                    method,
                    path,
                    content=content,
                    headers={"content-type": wire.JSON_TYPE} if content is not None else None,
                )
            except httpx.TimeoutException as exc:
                raise ScreenTimeoutError(
                    f"the model server at {self.url} did not answer within "
                    f"{ms.remote.timeout_s:.1f}s ({type(exc).__name__})"
                ) from None
            except (httpx.TransportError, OSError) as exc:
                last = exc
                continue
            with self._lock:
                self.requests += 1
            if resp.status_code == 200:
                return resp
            self._raise_for(resp)
        raise ModelError(
            f"the model server at {self.url} is unreachable after {attempts} attempts: "
            f"{type(last).__name__}: {last}"
        )

    def _raise_for(self, resp: Any) -> None:
        try:
            err = resp.json().get("error", {})
            message = str(err.get("message", resp.text[:200]))
        except ValueError:
            message = resp.text[:200]
        status = resp.status_code
        if status == 401:
            raise ConfigurationError(
                f"the model server at {self.url} wants a key (401): set model.remote.key "
                "(or ALKNET_FIREWALL_MODEL__REMOTE__KEY) to one of its model_server.keys"
                + (" - the key set now is not one of them" if self.settings.remote.key else "")
            )
        if status in (429, 503):
            retry_after = _retry_after(resp.headers.get("retry-after"))
            raise OverloadError(
                f"the model server at {self.url} is overloaded ({status}): {message}",
                retry_after=retry_after,
            )
        if status == 409:
            raise CodebookMismatchError(f"the model server at {self.url} refused: {message}")
        raise ModelError(f"the model server at {self.url} answered {status}: {message}")

    # -- the model interface -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.tokenize(texts)]

    def _ids_and_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_token_windows(self, windows: list[Window], n_texts: int) -> WindowFeatures:
        body = wire.encode_request(
            windows,
            n_texts,
            layers=self.layers,
            identity={"weights_digest": self.weights_digest},
        )
        resp = self._send("POST", wire.ENCODE_PATH, body)
        try:
            feats = wire.features_from_body(resp.content, WindowFeatures)
        except wire.WireError as exc:
            raise ModelError(f"the model server at {self.url} sent a bad body: {exc}") from None
        if feats.n_texts != n_texts or any(layer not in feats.features for layer in self.layers):
            raise ModelError(f"the model server at {self.url} answered for other texts or layers")
        return feats

    def init_worker(self, threads: int | None = None) -> None:
        """Nothing to set up per pool worker: the connection pool is shared."""

    def warmup(self) -> None:
        self.encode(["warm-up"])

    def describe(self) -> dict[str, Any]:
        out = {k: self.identity.get(k) for k in IDENTITY_KEYS}
        out.update(
            {
                "hidden_size": self.hidden_size,
                "feature_size": self.feature_size,
                "backend": "remote",
                "backend_url": self.url,
                "tokenizer_digest": self.tokenizer_digest,
                "server": self.identity,
            }
        )
        return out

    def close(self) -> None:
        self._client.close()


def _headers(key: str | None) -> dict[str, str]:
    headers = {"user-agent": "alknet-firewall-remote/1"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return headers


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0
