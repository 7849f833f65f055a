"""``alknet-firewall model ...`` and the CLI's error contract (exit 2, message on stderr)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alknet_firewall import constants


def _one_json_object(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout  # exactly one line: easy to pipe into jq
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


@pytest.mark.slow
def test_model_info(run_cli, tmp_path: Path, embedded_location) -> None:
    config = tmp_path / "fw.yaml"
    config.write_text("model:\n  layers: [3, 2]\n  dtype: float32\n")
    proc = run_cli(
        "--config", str(config), "model", "info", env={"ALKNET_FIREWALL_MODEL__POOLING": "both"}
    )
    assert proc.returncode == 0, proc.stderr
    info = _one_json_object(proc.stdout)
    for key in ("name", "revision", "source", "layers", "hidden_size", "dtype", "cache_dir"):
        assert key in info, key
    assert info["name"] == constants.DEFAULT_MODEL_NAME
    assert info["revision"] == constants.EMBEDDED_REVISION
    assert info["source"] == "embedded"
    assert info["layers"] == [2, 3]  # from the YAML file
    assert info["dtype"] == "float32"
    assert info["pooling"] == "both"  # from the environment
    assert info["hidden_size"] == 576 and info["feature_size"] == 1152
    assert info["cache_dir"] == str(constants.cache_dir())
    assert info["weights_digest"] == embedded_location.weights_digest


@pytest.mark.slow
def test_model_prepare(run_cli, embedded_location) -> None:
    proc = run_cli("model", "prepare")
    assert proc.returncode == 0, proc.stderr
    out = _one_json_object(proc.stdout)
    assert out["source"] == "embedded"
    assert out["path"] == str(embedded_location.path)
    assert Path(out["path"], "model.safetensors").is_file()
    assert out["weights_digest"] == embedded_location.weights_digest


def test_missing_config_file_exits_2(run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    proc = run_cli("--config", str(missing), "model", "info")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("alknet-firewall: error:")
    assert "not found" in proc.stderr and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_env_setting_exits_2(run_cli) -> None:
    proc = run_cli("model", "info", env={"ALKNET_FIREWALL_MODEL__MAX_TOKENS": "3"})
    assert proc.returncode == 2
    assert "model.max_tokens" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_gguf_exits_2(run_cli, tmp_path: Path) -> None:
    proc = run_cli(
        "model",
        "prepare",
        env={constants.ENV_GGUF: str(tmp_path / "gone.gguf"), constants.ENV_CACHE: str(tmp_path)},
    )
    assert proc.returncode == 2
    assert constants.ENV_GGUF in proc.stderr and "gone.gguf" in proc.stderr


def test_model_needs_a_subcommand(run_cli) -> None:
    proc = run_cli("model")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
