"""``docs/configuration.md``'s settings tables are generated from the fields' descriptions."""

from __future__ import annotations

from pathlib import Path

from tests.scripts_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_up_to_date() -> None:
    gen = load_script("scripts/gen_config_docs.py")
    current = gen.DOC.read_text(encoding="utf-8")
    assert gen.update(current) == current, (
        "docs/configuration.md is out of date: run `.venv/bin/python scripts/gen_config_docs.py`"
    )


def test_reference_lists_every_field() -> None:
    from alknet_firewall.config import PolicySettings, PoolSettings, Settings

    text = load_script("scripts/gen_config_docs.py").render()
    for name in (*PoolSettings.model_fields, *PolicySettings.model_fields, *Settings.model_fields):
        assert f"`{name}" in text, name
    assert "CPU count" in text  # machine-dependent defaults are named, not printed


def test_groups_get_their_own_table_and_env_prefix() -> None:
    from alknet_firewall.config import LEGACY_MODEL_KEYS, OnnxSettings, RemoteSettings

    text = load_script("scripts/gen_config_docs.py").render()
    assert "#### `model.onnx`" in text and "`ALKNET_FIREWALL_MODEL__ONNX__PATH`" in text
    assert "#### `model.reading`" in text and "#### `model.remote`" in text
    for name in (*OnnxSettings.model_fields, *RemoteSettings.model_fields):
        assert f"| `{name}` |" in text, name
    for old in LEGACY_MODEL_KEYS:  # the deprecated flat names are listed, not tabled
        assert f"`{old}`" in text, old
