"""``/healthz`` says what runs the model (backend, dtype and why, device), from
:meth:`Firewall.status`; a model whose ``describe()`` fails does not fail the health check."""

from __future__ import annotations

from typing import Any

import pytest

from alknet_firewall.integrations.gateway import health
from tests.fakes import fake_firewall


def test_healthz_model_brief_reports_backend_and_dtype(
    fake_codebook: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = {
        "backend": "local",
        "dtype": "bfloat16",
        "dtype_reason": "measured",
        "device": "cpu",
        "weights_digest": "sha256:x",
    }
    with fake_firewall(fake_codebook) as fw:
        monkeypatch.setattr(fw.model, "describe", lambda: info)
        body, code = health(fw.status())
    assert code == 200 and body["status"] == "ok" and body["codebook"] == fake_codebook.id
    assert body["model"] == {
        "backend": "local",
        "dtype": "bfloat16",
        "dtype_reason": "measured",
        "device": "cpu",
    }


def test_healthz_model_brief_survives_a_failing_describe(
    fake_codebook: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom() -> dict[str, str]:
        raise ConnectionError("model server down")

    with fake_firewall(fake_codebook) as fw:
        monkeypatch.setattr(fw.model, "describe", boom)
        body, code = health(fw.status())
    # Only what the settings say is left: the configured backend.
    assert code == 200 and body["model"] == {"backend": "local"}


def test_healthz_is_503_once_the_firewall_is_closed(fake_codebook: Any) -> None:
    fw = fake_firewall(fake_codebook)
    fw.close()
    body, code = health(fw.status())
    assert code == 503 and body["status"] == "closed"
