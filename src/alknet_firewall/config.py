"""One validated settings object for every layer.

Sources, highest priority first: keyword arguments, ``ALKNET_FIREWALL_*`` environment variables
(nested fields with ``__``: ``ALKNET_FIREWALL_MODEL__LAYERS='[12]'``), a YAML file
(``path`` argument or ``$ALKNET_FIREWALL_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .constants import DEFAULT_MODEL_NAME, ENV_CONFIG, ENV_PREFIX
from .errors import ConfigurationError

Level = Literal["clear", "notice", "warning", "critical"]
Action = Literal["allow", "flag", "block"]
FailMode = Literal["closed", "open"]
Signal = Literal["injection", "jailbreak", "harmful", "anomaly"]
LEVELS: tuple[Level, ...] = ("clear", "notice", "warning", "critical")
SIGNALS: tuple[Signal, ...] = ("injection", "jailbreak", "harmful", "anomaly")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Strict):
    """Which model reads the text, and how its activations are pooled."""

    source: Literal["embedded", "hub", "local"] = "embedded"
    #: Hugging Face repo id (source ``hub``); also the name recorded for ``embedded``.
    repo_id: str = DEFAULT_MODEL_NAME
    #: Git revision for ``hub``; pin a commit hash in production.
    revision: str = "main"
    #: Directory with config, tokenizer and ``*.safetensors`` (source ``local``).
    local_path: Path | None = None
    #: Hidden-state layers returned (1-based, as in ``output_hidden_states``); the model stops
    #: after the deepest one.
    layers: tuple[int, ...] = (8,)
    pooling: Literal["mean", "last", "both"] = "mean"
    #: Mean pooling also covers the chat template's end-of-turn tokens after the text.
    pool_suffix: bool = True
    #: Wrap each text in the model's chat template as a user turn.
    chat_template: bool = True
    #: System turn rendered before the user turn: ``""`` an empty one (short: 8 template tokens
    #: for SmolLM2 instead of 24), ``None`` the template's own default system prompt.
    system_prompt: str | None = ""
    #: Content tokens per window; longer texts are split into overlapping windows.
    max_tokens: int = Field(128, ge=8, le=8192)
    window_overlap: int = Field(16, ge=0)
    #: Also score every span of this many tokens (stride ``sub_window_stride``) inside a window
    #: on its own, so a short attack is not diluted by a long benign window (used with mean
    #: pooling; 0 disables). Costs no extra forward pass, but 32-token spans lowered the
    #: leave-source-out AUC from 0.94 to 0.91 (ADR 0001), so it is off by default.
    sub_window: int = Field(0, ge=0)
    sub_window_stride: int = Field(16, ge=1)
    #: Also score the first and the last this-many tokens of every text longer than twice that
    #: on their own, so an instruction appended to a long benign text is not diluted by it. Two
    #: rows per text, no extra forward pass; but 32-token edges lowered the leave-source-out AUC
    #: from 0.945 to 0.923 (ADR 0001), so 0 (off) by default.
    edge_window: int = Field(0, ge=0)
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    #: torch intra-op threads for the calling thread (``None``: leave torch's default).
    threads: int | None = Field(None, ge=1, le=256)
    #: Windows per forward pass inside ``encode``.
    batch_size: int = Field(16, ge=1, le=1024)
    device: str = "cpu"
    #: Override of the cache directory (default ``$ALKNET_FIREWALL_CACHE``).
    cache_dir: Path | None = None

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("at least one layer is required")
        if any(layer < 1 for layer in v):
            raise ValueError("layers are 1-based hidden-state indices; each must be >= 1")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _check(self) -> ModelSettings:
        if self.window_overlap >= self.max_tokens:
            raise ValueError("window_overlap must be smaller than max_tokens")
        if self.source == "local" and self.local_path is None:
            raise ValueError("source 'local' needs local_path")
        return self


class DetectionSettings(_Strict):
    """Codebook and scoring."""

    #: Codebook file (``.safetensors``); ``None`` uses the default shipped in the package.
    codebook: Path | None = None
    #: Normalise what the model sees (NFKC, invisible characters, whitespace runs).
    normalize: bool = True
    #: Also screen each seam between consecutive screened messages (the end of one joined to
    #: the start of the next), so an attack split across two messages is read whole.
    seams: bool = True
    #: Inputs above this many tokens (all messages of a request) are refused, not truncated.
    max_input_tokens: int = Field(65536, ge=16)


class PolicySettings(_Strict):
    """How a verdict's level maps to an action, per tenant or route."""

    #: Score thresholds per level; unset levels use the codebook's calibrated thresholds.
    thresholds: dict[Literal["notice", "warning", "critical"], float] = Field(default_factory=dict)
    #: Signals that may raise the level (others are still scored and reported).
    signals: tuple[Signal, ...] = SIGNALS
    actions: dict[Level, Action] = Field(
        default_factory=lambda: {
            "clear": "allow",
            "notice": "allow",
            "warning": "flag",
            "critical": "block",
        }
    )
    fail_mode: FailMode = "closed"
    #: A full queue: ``reject`` raises OverloadError (HTTP 429/503 with Retry-After in the
    #: integrations); ``fail_mode`` turns it into the fail-mode verdict instead.
    overload: Literal["reject", "fail_mode"] = "reject"
    #: Chat roles whose content is screened. The system prompt is the operator's.
    roles: tuple[str, ...] = ("user", "tool", "function")
    #: Monitor only: never block, downgrade ``block`` to ``flag``.
    monitor: bool = False

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold {k}={t} must lie in [0, 1]")
        order = [v[k] for k in ("notice", "warning", "critical") if k in v]
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


class PoolSettings(_Strict):
    """The worker-thread model pool."""

    #: Worker threads, each running the model with ``threads_per_worker`` torch threads.
    workers: int = Field(default_factory=lambda: max(1, min(os.cpu_count() or 1, 8)), ge=1, le=64)
    threads_per_worker: int = Field(1, ge=1, le=64)
    max_batch_size: int = Field(8, ge=1, le=1024)
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    #: Requests waiting at most; beyond it new work is refused with an overload error.
    queue_size: int = Field(256, ge=1)
    #: Per-call timeout in seconds.
    timeout_s: float = Field(30.0, gt=0.0)
    warmup: bool = True
    #: Screened messages remembered (content hash + codebook id) so multi-turn chats pay once.
    cache_size: int = Field(4096, ge=0)


class ServerSettings(_Strict):
    """The OpenAI-compatible gateway."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    upstream: str | None = None
    #: Replace the client's Authorization header with this key when forwarding.
    upstream_api_key: str | None = None
    upstream_timeout_s: float = Field(60.0, gt=0)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    block_status: int = Field(400, ge=400, le=499)


class Settings(BaseSettings):
    """Everything alknet-firewall can be told. See ``docs/configuration.md``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    model: ModelSettings = ModelSettings()
    detection: DetectionSettings = DetectionSettings()
    policies: dict[str, PolicySettings] = Field(
        default_factory=lambda: {"default": PolicySettings()}
    )
    default_policy: str = "default"
    pool: PoolSettings = PoolSettings()
    server: ServerSettings = ServerSettings()
    #: Put message text into logs (off: logs carry hashes and lengths only).
    log_text: bool = False

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
        """The named policy, or the default one. Unknown names are a configuration error."""
        key = name or self.default_policy
        try:
            return self.policies[key]
        except KeyError:
            raise ConfigurationError(
                f"unknown policy {key!r}; configured policies: {sorted(self.policies)}"
            ) from None


_yaml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("_yaml_path", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        path = _yaml_path.get()
        if path is None:
            return {}
        import yaml

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
    settings: Settings | str | os.PathLike[str] | dict[str, Any] | None,
) -> Settings:
    """Accept settings, a YAML path, a dict of overrides or ``None`` (defaults + env)."""
    if isinstance(settings, Settings):
        return settings
    if isinstance(settings, dict):
        return load_settings(None, **settings)
    return load_settings(settings)


def _describe(exc: ValidationError) -> str:
    lines = ["invalid alknet-firewall settings:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
