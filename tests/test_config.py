"""Settings: defaults, YAML, environment, priority, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from alknet_firewall.config import (
    ModelSettings,
    PolicySettings,
    Settings,
    coerce_settings,
    load_settings,
)
from alknet_firewall.errors import ConfigurationError, FirewallError


def write_yaml(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------
def test_defaults() -> None:
    s = load_settings()
    m = s.model
    assert m.source == "embedded"
    assert m.repo_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert m.revision == "main"
    # The default layer is a tuning choice (it moves with the shipped codebook): pin its shape only.
    layers = m.reading.layers
    assert len(layers) >= 1 and all(isinstance(x, int) and 1 <= x <= 30 for x in layers)
    assert m.reading.pooling == "mean"
    assert m.dtype == "auto"  # bfloat16 where faster (ADR 0005)
    assert m.reading.max_tokens == 128
    assert m.reading.window_overlap == 16
    assert m.batch_size == 16
    assert m.reading.chat_template is True
    assert m.cache_dir is None and m.local_path is None
    assert s.default_policy == "default"
    assert list(s.policies) == ["default"]
    p = s.policy()
    assert p.fail_mode == "closed"
    assert p.actions == {
        "clear": "allow",
        "notice": "allow",
        "warning": "flag",
        "critical": "block",
    }
    assert p.roles == ("user", "tool", "function", "tool_definition")
    assert s.server.host == "127.0.0.1" and s.server.port == 8080
    assert s.log_text is False
    assert s.detection.normalize is True
    assert 1 <= s.pool.workers <= 8


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(pydantic.ValidationError):
        s.model.reading.layers = (3,)  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        s.log_text = True  # type: ignore[misc]


def test_layers_are_sorted_and_deduplicated() -> None:
    assert ModelSettings(reading={"layers": (8, 4, 8)}).reading.layers == (4, 8)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
YAML = """
model:
  reading:
    layers: [6, 3, 6]
    max_tokens: 64
    window_overlap: 4
  dtype: float32
server:
  port: 9000
policies:
  default: {}
  strict:
    monitor: false
    thresholds: {notice: 0.2, warning: 0.5, critical: 0.8}
default_policy: strict
log_text: true
"""


def test_yaml_file(tmp_path: Path) -> None:
    s = load_settings(write_yaml(tmp_path, YAML))
    assert s.model.reading.layers == (3, 6)
    assert s.model.dtype == "float32"
    assert s.model.reading.max_tokens == 64 and s.model.reading.window_overlap == 4
    assert s.model.reading.pooling == "mean"  # untouched fields keep their defaults
    assert s.server.port == 9000 and s.server.host == "127.0.0.1"
    assert s.default_policy == "strict"
    assert s.policy().thresholds == {"notice": 0.2, "warning": 0.5, "critical": 0.8}
    assert s.policy("default").thresholds == {}
    assert s.log_text is True


def test_yaml_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALKNET_FIREWALL_CONFIG", str(write_yaml(tmp_path, YAML)))
    assert load_settings().model.reading.layers == (3, 6)
    # An explicit path wins over $ALKNET_FIREWALL_CONFIG.
    other = write_yaml(tmp_path, "model: {reading: {layers: [9]}}\n", name="other.yaml")
    assert load_settings(other).model.reading.layers == (9,)


def test_empty_yaml_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write_yaml(tmp_path, "")) == load_settings()


def test_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__READING__LAYERS", "[4,8]")
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__DTYPE", "float32")
    monkeypatch.setenv("ALKNET_FIREWALL_SERVER__PORT", "8181")
    monkeypatch.setenv("ALKNET_FIREWALL_LOG_TEXT", "true")
    s = load_settings()
    assert s.model.reading.layers == (4, 8)
    assert s.model.dtype == "float32"
    assert s.server.port == 8181
    assert s.log_text is True
    # Settings() itself reads the environment too.
    assert Settings().model.reading.layers == (4, 8)


def test_non_setting_env_vars_do_not_trip_extra_forbid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # These share the ALKNET_FIREWALL_ prefix but are not settings fields.
    monkeypatch.setenv("ALKNET_FIREWALL_CACHE", str(tmp_path))
    monkeypatch.setenv("ALKNET_FIREWALL_GGUF", str(tmp_path / "x.gguf"))
    monkeypatch.setenv("ALKNET_FIREWALL_CONFIG", str(write_yaml(tmp_path, "log_text: true\n")))
    assert load_settings().log_text is True


def test_priority_kwargs_over_env_over_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_yaml(
        tmp_path,
        "model:\n  reading: {layers: [2], max_tokens: 64}\n  dtype: float32\n"
        "server:\n  port: 9000\n",
    )
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__READING__LAYERS", "[4,8]")
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__READING__POOLING", "last")
    monkeypatch.setenv("ALKNET_FIREWALL_SERVER__PORT", "9100")

    s = load_settings(path)
    assert s.model.reading.layers == (4, 8)  # env beats yaml
    assert s.server.port == 9100
    assert s.model.dtype == "float32"  # yaml beats defaults
    assert s.model.reading.max_tokens == 64
    assert s.model.reading.pooling == "last"  # env beats defaults

    s = load_settings(path, model={"reading": {"layers": [10]}}, server={"port": 9200})
    assert s.model.reading.layers == (10,)  # kwargs beat env and yaml
    assert s.server.port == 9200
    # Nested sections merge field by field across sources.
    assert s.model.reading.pooling == "last"
    assert s.model.dtype == "float32"
    assert s.model.reading.max_tokens == 64


def test_coerce_settings(tmp_path: Path) -> None:
    s = load_settings(model={"reading": {"layers": [5]}})
    assert coerce_settings(s) is s
    assert coerce_settings({"model": {"reading": {"layers": [5]}}}).model.reading.layers == (5,)
    assert coerce_settings(write_yaml(tmp_path, YAML)).model.reading.layers == (3, 6)
    assert coerce_settings(str(write_yaml(tmp_path, YAML))).model.reading.layers == (3, 6)
    assert coerce_settings(None) == load_settings()


def test_unknown_policy_lookup() -> None:
    with pytest.raises(ConfigurationError, match="nope"):
        load_settings().policy("nope")


# --------------------------------------------------------------------------------------------
# Errors name the field
# --------------------------------------------------------------------------------------------
def _error(**overrides: object) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_settings(**overrides)
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": {"reading": {"max_tokens": 3}}}, "model.reading.max_tokens"),
        ({"model": {"reading": {"max_tokens": 100000}}}, "model.reading.max_tokens"),
        ({"model": {"reading": {"layers": [0]}}}, "model.reading.layers"),
        ({"model": {"reading": {"layers": []}}}, "model.reading.layers"),
        ({"model": {"dtype": "float16"}}, "model.dtype"),
        ({"model": {"reading": {"pooling": "max"}}}, "model.reading.pooling"),
        ({"model": {"source": "s3"}}, "model.source"),
        ({"model": {"batch_size": 0}}, "model.batch_size"),
        ({"model": {"nope": 1}}, "model.nope"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"pool": {"workers": 0}}, "pool.workers"),
        ({"policies": {"default": {"fail_mode": "maybe"}}}, "policies.default.fail_mode"),
        ({"policies": {"default": {"thresholds": {"notice": 1.5}}}}, "policies.default.thresholds"),
    ],
)
def test_invalid_values_name_the_field(overrides: dict[str, object], field: str) -> None:
    assert field in _error(**overrides)


def test_window_overlap_must_be_below_max_tokens() -> None:
    msg = _error(model={"reading": {"max_tokens": 32, "window_overlap": 32}})
    assert "window_overlap" in msg and "max_tokens" in msg
    assert any(line.strip().startswith("model") for line in msg.splitlines()[1:])
    # One below is fine.
    ok = load_settings(model={"reading": {"max_tokens": 32, "window_overlap": 31}})
    assert ok.model.reading.window_overlap == 31


def test_local_source_needs_a_path() -> None:
    assert "local_path" in _error(model={"source": "local"})


def test_unknown_top_level_key() -> None:
    assert "bogus" in _error(bogus=1)


def test_unknown_default_policy() -> None:
    msg = _error(default_policy="strict")
    assert "default_policy" in msg and "'strict'" in msg


def test_decreasing_thresholds_rejected() -> None:
    msg = _error(policies={"default": {"thresholds": {"notice": 0.6, "warning": 0.3}}})
    assert "policies.default.thresholds" in msg and "increase" in msg


def test_actions_must_cover_every_level() -> None:
    msg = _error(policies={"default": {"actions": {"clear": "allow"}}})
    assert "policies.default.actions" in msg and "critical" in msg


def test_every_error_is_listed() -> None:
    msg = _error(model={"reading": {"max_tokens": 3}, "dtype": "int8"}, server={"port": -1})
    for field in ("model.reading.max_tokens", "model.dtype", "server.port"):
        assert field in msg


def test_invalid_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__DTYPE", "float16")
    assert "model.dtype" in _error()


def test_unknown_nested_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__LAYER", "[4]")  # typo for LAYERS
    assert "model.layer:" in _error()


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"model\.layerz"):
        load_settings(write_yaml(tmp_path, "model:\n  layerz: [4]\n"))


def test_invalid_value_in_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"model\.reading\.max_tokens"):
        load_settings(write_yaml(tmp_path, "model:\n  reading: {max_tokens: 2}\n"))


def test_bad_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "model: [unclosed\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings(path)
    assert "not valid YAML" in str(info.value) and str(path) in str(info.value)


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="mapping"):
        load_settings(write_yaml(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigurationError) as info:
        load_settings(path)
    assert "not found" in str(info.value) and str(path) in str(info.value)


def test_missing_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALKNET_FIREWALL_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigurationError, match=r"gone\.yaml"):
        load_settings()


def test_configuration_error_hierarchy() -> None:
    with pytest.raises(ValueError):  # callers may catch it as a ValueError
        load_settings(model={"reading": {"max_tokens": 3}})
    assert issubclass(ConfigurationError, FirewallError)
    assert ConfigurationError.code == "configuration_error"


def test_policy_settings_direct_validation() -> None:
    # Sub-models validate on their own as well (used when building settings in code).
    with pytest.raises(pydantic.ValidationError):
        PolicySettings(thresholds={"warning": 0.9, "critical": 0.1})
    with pytest.raises(pydantic.ValidationError):
        ModelSettings(reading={"max_tokens": 16, "window_overlap": 16})


# --------------------------------------------------------------------------------------------
# Derived settings: Settings.merged validates (model_copy(update=...) does not)
# --------------------------------------------------------------------------------------------
def test_merged_validates_and_names_the_field() -> None:
    s = load_settings()
    with pytest.raises(ConfigurationError, match=r"model\.reading\.layers"):
        s.merged(model={"reading": {"layers": (0, 5, 3)}})
    with pytest.raises(ConfigurationError, match=r"pool\.workers"):
        s.merged(pool={"workers": 0})
    with pytest.raises(ConfigurationError, match=r"pool\.no_such_field"):
        s.merged(pool={"no_such_field": 1})
    with pytest.raises(ConfigurationError, match="layers"):
        s.model.merged(reading={"layers": (0,)})


def test_merged_merges_nested_sections_field_by_field() -> None:
    from alknet_firewall.config import PoolSettings

    s = load_settings(None, pool={"queue_size": 7})
    m = s.merged(pool={"workers": 2}, model={"reading": {"layers": (8, 3, 3)}})
    assert isinstance(m.pool, PoolSettings)
    assert (m.pool.workers, m.pool.queue_size) == (2, 7)
    assert m.model.reading.layers == (3, 8)  # the validator ran: sorted, deduplicated
    assert s.pool.workers != 2 or s.pool.queue_size == 7  # the original is untouched
    assert s.merged() is s
    whole = s.merged(pool=PoolSettings(workers=3))  # a settings object replaces the section
    assert (whole.pool.workers, whole.pool.queue_size) == (3, 256)


def test_from_config_overrides_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from alknet_firewall.config import PoolSettings
    from alknet_firewall.firewall import Firewall

    seen: list[Settings] = []
    monkeypatch.setattr(Firewall, "__init__", lambda self, settings: seen.append(settings))
    Firewall.from_config(load_settings(), pool={"workers": 2})
    assert isinstance(seen[-1].pool, PoolSettings) and seen[-1].pool.workers == 2
    Firewall.from_config(None, pool={"workers": 2})
    assert isinstance(seen[-1].pool, PoolSettings) and seen[-1].pool.workers == 2
    with pytest.raises(ConfigurationError, match=r"pool\.workers"):
        Firewall.from_config(load_settings(), pool={"workers": "many"})
    assert coerce_settings({"pool": {"workers": 1}}, pool={"warmup": False}).pool.workers == 1


def test_codebook_build_rejects_invalid_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``codebook build --layers 0,5,3`` used to slip past the layer validator."""
    from alknet_firewall.cli import main

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "hello", "label": 0}\n', encoding="utf-8")
    out = tmp_path / "cb.safetensors"
    rc = main(["codebook", "build", "--corpus", str(corpus), "--layers", "0,5,3", "-o", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "layers" in err and "must be >= 1" in err, err
    assert not out.exists()


def test_every_settings_field_is_described() -> None:
    from pydantic import BaseModel

    missing: list[str] = []

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            if not info.description:
                missing.append(f"{prefix}{name}")
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(f"{prefix}{name}.", ann)

    walk("", Settings)
    policy_fields = PolicySettings.model_fields.items()
    missing += [f"policies.{n}" for n, f in policy_fields if not f.description]
    assert not missing, f"fields without Field(description=...): {missing}"


# --------------------------------------------------------------------------------------------
# Grouped model settings; the flat names of 0.1 still work, with a DeprecationWarning
# --------------------------------------------------------------------------------------------
def test_reading_settings_are_the_codebooks_reading_keys() -> None:
    from alknet_firewall.config import ReadingSettings
    from alknet_firewall.model.base import READING_KEYS

    assert set(ReadingSettings.model_fields) == {"layers", *READING_KEYS}


def test_env_nested_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__ONNX__PATH", "/models/x")
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__ONNX__THREADS", "3")
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__REMOTE__URL", "http://10.0.0.5:8090")
    m = load_settings().model
    assert (m.onnx.path, m.onnx.threads) == (Path("/models/x"), 3)
    assert m.remote.url == "http://10.0.0.5:8090"


LEGACY = {
    "layers": [4, 8],
    "sub_window": 32,
    "onnx_path": "/models/x",
    "onnx_threads": 3,
    "onnx_precision": "int8",
    "backend_url": "http://10.0.0.5:8090",
    "backend_timeout_s": 5.0,
    "backend_key": "k",
}


def _check_legacy(m: ModelSettings) -> None:
    assert m.reading.layers == (4, 8) and m.reading.sub_window == 32
    assert (m.onnx.path, m.onnx.threads, m.onnx.precision) == (Path("/models/x"), 3, "int8")
    assert (m.remote.url, m.remote.timeout_s, m.remote.key) == ("http://10.0.0.5:8090", 5.0, "k")
    assert m.reading.pooling == "mean" and m.remote.retries == 2  # the rest: defaults


def test_legacy_flat_keys_from_a_dict() -> None:
    with pytest.warns(DeprecationWarning) as record:
        _check_legacy(load_settings(model=LEGACY).model)
    assert "model.onnx_path is deprecated; use model.onnx.path" in str(record[2].message)
    with pytest.warns(DeprecationWarning) as record:
        _check_legacy(ModelSettings(**LEGACY))
    assert "use model.reading.layers" in str(record[0].message)


def test_legacy_flat_keys_from_yaml(tmp_path: Path) -> None:
    import yaml

    path = write_yaml(tmp_path, yaml.safe_dump({"model": LEGACY}))
    with pytest.warns(DeprecationWarning) as record:
        _check_legacy(load_settings(path).model)
    assert any(
        "model.backend_url is deprecated; use model.remote.url" in str(w.message) for w in record
    )


def test_legacy_flat_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in LEGACY.items():
        text = "[4,8]" if key == "layers" else str(value)
        monkeypatch.setenv(f"ALKNET_FIREWALL_MODEL__{key.upper()}", text)
    with pytest.warns(DeprecationWarning) as record:
        _check_legacy(load_settings().model)
    assert len(record) == len(LEGACY)
    assert any("ALKNET_FIREWALL_MODEL__ONNX__PATH" in str(w.message) for w in record)


def test_legacy_env_values_are_compared_as_their_fields_hold_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An environment value is a string ("0"); a pass over already-moved settings holds 0.
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__BACKEND_RETRIES", "0")
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__BACKEND_TIMEOUT_S", "5")
    with pytest.warns(DeprecationWarning):
        s = load_settings()
        again = s.merged(server={"port": 9999})
    assert (again.model.remote.retries, again.model.remote.timeout_s) == (0, 5.0)
    monkeypatch.setenv("ALKNET_FIREWALL_MODEL__REMOTE__RETRIES", "1")
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigurationError, match="disagree"):
        load_settings()


def test_legacy_and_new_name_must_agree() -> None:
    with pytest.warns(DeprecationWarning):
        same = load_settings(model={"onnx_threads": 2, "onnx": {"threads": 2}})
    assert same.model.onnx.threads == 2
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigurationError) as info:
        load_settings(model={"onnx_threads": 2, "onnx": {"threads": 4}})
    assert "model.onnx_threads" in str(info.value) and "model.onnx.threads" in str(info.value)
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigurationError, match="disagree"):
        ModelSettings().merged(onnx_threads=2, onnx={"threads": 4})


def test_legacy_names_in_merged_and_attribute_reads() -> None:
    s = load_settings(model={"reading": {"max_tokens": 64}})
    with pytest.warns(DeprecationWarning, match=r"model\.reading\.layers"):
        m = s.merged(model={"layers": (8, 3)})
    assert m.model.reading.layers == (3, 8) and m.model.reading.max_tokens == 64
    with pytest.warns(DeprecationWarning):
        assert s.model.merged(backend_url="http://h:1").remote.url == "http://h:1"
    with pytest.warns(DeprecationWarning, match=r"\.onnx\.precision"):
        assert s.model.onnx_precision == "float32"
    with pytest.raises(AttributeError):
        _ = s.model.no_such_field


def test_merged_merges_groups_field_by_field() -> None:
    m = ModelSettings(remote={"url": "http://h:1", "retries": 5})
    changed = m.merged(remote={"timeout_s": 3.0}, reading={"sub_window": 32})
    assert (changed.remote.url, changed.remote.retries, changed.remote.timeout_s) == (
        "http://h:1",
        5,
        3.0,
    )
    assert changed.reading.sub_window == 32 and changed.reading.layers == m.reading.layers


def test_remote_backend_needs_a_url() -> None:
    assert "remote.url" in _error(model={"backend": "remote"})


def test_pool_and_model_server_share_their_worker_fields() -> None:
    from alknet_firewall.config import ModelServerSettings, PoolSettings

    shared = ("workers", "threads_per_worker", "burst_threads", "max_wait_ms", "queue_size")
    for name in (*shared, "timeout_s"):
        assert name in PoolSettings.model_fields and name in ModelServerSettings.model_fields
    assert PoolSettings().max_wait_ms == 2.0 and ModelServerSettings().max_wait_ms == 0.0
