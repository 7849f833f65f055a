"""Client keys: who may use the gateway (and the pages mounted on it).

Keys come from ``server.client_keys`` (settings, YAML, or ``ALKNET_FIREWALL_SERVER__CLIENT_KEYS``)
and ``server.client_keys_file`` (one per line, ``#`` comments). Each entry is a key or its
SHA-256 digest, ``sha256:<64 hex digits>``, so a configuration file need not hold the keys
themselves (``hash_key``)::

    echo "sha256:$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"

A request presents ``Authorization: Bearer <key>``. The presented key is hashed and compared
with **every** configured digest by :func:`hmac.compare_digest` (constant time, no early exit),
so neither the comparison nor the number of keys tried leaks through timing. Keys are never
logged, echoed or forwarded.

For other apps mounted on the gateway (the console)::

    from alknet_firewall.integrations.auth import RequireKey, admin_keys
    Mount("/console", app=RequireKey(console_app, admin_keys(settings.server)))

or, inside an ASGI endpoint, ``if not await authorize(scope, receive, send, keys): return``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from . import openai_errors
from .bodies import ASGIApp, Receive, Scope, Send, refuse

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ServerSettings


_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")
#: Shorter keys are refused: a key is a secret, not a password to remember.
MIN_KEY_CHARS = 16
#: What a refused request's body may cost to read and throw away (then the connection closes).
DISCARD_BYTES = 1024 * 1024


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def hash_key(key: str) -> str:
    """The ``sha256:<hex>`` form of a key, for the settings file."""
    return "sha256:" + digest(key).hex()


class KeySet:
    """A set of accepted keys, held as SHA-256 digests only."""

    def __init__(self, entries: Iterable[str] = (), *, source: str = "client_keys") -> None:
        digests: list[bytes] = []
        for n, raw in enumerate(entries):
            entry = raw.strip()
            if not entry:
                continue
            m = _DIGEST.fullmatch(entry)
            if m:
                digests.append(bytes.fromhex(m.group(1)))
            elif entry.lower().startswith("sha256:"):
                raise ConfigurationError(
                    f"{source}[{n}] starts with 'sha256:' but is not 64 hex digits"
                )
            elif len(entry) < MIN_KEY_CHARS or any(c.isspace() for c in entry):
                # Never print the entry: it may be a real key.
                raise ConfigurationError(
                    f"{source}[{n}] must be a key of at least {MIN_KEY_CHARS} characters "
                    "without spaces, or sha256:<64 hex digits>"
                )
            else:
                digests.append(digest(entry))
        self._digests = tuple(dict.fromkeys(digests))

    def __len__(self) -> int:
        return len(self._digests)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:  # never the digests either
        return f"KeySet({len(self)} keys)"

    def matches(self, key: str | None) -> bool:
        """Whether ``key`` is one of the set: constant time in the key and in which one."""
        if key is None:
            return False
        presented = digest(key)
        found = False
        for d in self._digests:
            found |= hmac.compare_digest(presented, d)
        return found

    def allows(self, scope: Scope) -> bool:
        """Whether the request carries ``Authorization: Bearer <one of the keys>``."""
        return self.matches(bearer_token(scope))


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if the request has one."""
    for k, v in scope.get("headers") or ():
        if k.lower() == b"authorization":
            scheme, _, token = v.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def _read_file(path: Path, source: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{source} {path}: {exc.strerror or exc}") from None
    return [line.split("#", 1)[0] for line in text.splitlines()]


def key_set(entries: Iterable[str], path: Path | str | None, source: str) -> KeySet:
    """Keys from a settings list plus a keys file (``<source>_file``: one per line, ``#``
    comments), e.g. ``model_server.keys`` and ``model_server.keys_file``."""
    found = list(entries)
    if path is not None:
        found += _read_file(Path(path), f"{source}_file")
    return KeySet(found, source=source)


def client_keys(server: ServerSettings) -> KeySet:
    """The gateway's client keys: ``server.client_keys`` plus ``server.client_keys_file``."""
    return key_set(server.client_keys, server.client_keys_file, "server.client_keys")


def admin_keys(server: ServerSettings) -> KeySet:
    """Keys for operator pages (the console): ``server.admin_keys`` only. A client key is
    never an admin key. Empty when none are configured: the caller decides whether that means
    loopback only, closed, or refusing to start."""
    return KeySet(server.admin_keys, source="server.admin_keys")


async def authorize(
    scope: Scope,
    receive: Receive,
    send: Send,
    keys: KeySet,
    *,
    body_timeout_s: float | None = 10.0,
    discard_bytes: int = DISCARD_BYTES,
) -> bool:
    """``True`` if the request may go on; otherwise a 401 has been sent (after reading and
    throwing away up to ``discard_bytes`` of body, so that the client sees it; a longer body:
    the connection is closed after the 401)."""
    if keys.allows(scope):
        return True
    await refuse(
        openai_errors.unauthorized(),
        receive,
        send,
        discard_bytes=discard_bytes,
        timeout_s=body_timeout_s,
    )
    return False


class RequireKey:
    """ASGI middleware: HTTP requests need a key of ``keys`` (401 otherwise).

    :param protect: which requests need one (default: all HTTP requests); the rest pass.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: KeySet,
        *,
        protect: Callable[[Scope], bool] | None = None,
        body_timeout_s: float | None = 10.0,
        discard_bytes: int = DISCARD_BYTES,
    ) -> None:
        if not keys:
            raise ConfigurationError("RequireKey needs at least one key")
        self.app = app
        self.keys = keys
        self.protect = protect
        self.body_timeout_s = body_timeout_s
        self.discard_bytes = discard_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.protect is not None and not self.protect(scope)):
            await self.app(scope, receive, send)
            return
        if await authorize(
            scope,
            receive,
            send,
            self.keys,
            body_timeout_s=self.body_timeout_s,
            discard_bytes=self.discard_bytes,
        ):
            await self.app(scope, receive, send)


__all__: Sequence[str] = [
    "KeySet",
    "RequireKey",
    "admin_keys",
    "authorize",
    "bearer_token",
    "client_keys",
    "hash_key",
    "key_set",
]
