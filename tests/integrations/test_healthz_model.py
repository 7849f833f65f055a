"""``/healthz`` says what runs the model: backend, dtype (and why), device."""

from __future__ import annotations

from types import SimpleNamespace

from alknet_firewall.integrations.gateway import _model_brief


def test_healthz_model_brief_reports_backend_and_dtype() -> None:
    info = {
        "backend": "local",
        "dtype": "bfloat16",
        "dtype_reason": "measured",
        "device": "cpu",
        "weights_digest": "sha256:x",
    }
    fw = SimpleNamespace(model=SimpleNamespace(describe=lambda: info))
    assert _model_brief(fw) == {
        "backend": "local",
        "dtype": "bfloat16",
        "dtype_reason": "measured",
        "device": "cpu",
    }


def test_healthz_model_brief_survives_a_failing_describe() -> None:
    def boom() -> dict[str, str]:
        raise ConnectionError("model server down")

    assert _model_brief(SimpleNamespace(model=SimpleNamespace(describe=boom))) == {}
