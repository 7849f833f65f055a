"""What pip users copy and the CLI's conventions: packaged example configs, ``--version``, help
on every option, and the start-up checks that refuse to run without a model, backend or
codebook (instead of a per-request "retry later")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from alknet_firewall import constants
from alknet_firewall.cli import EXAMPLES, build_parser, example_text
from alknet_firewall.config import load_settings
from alknet_firewall.errors import CodebookError, DependencyMissingError, ModelNotFoundError
from alknet_firewall.integrations import openai_errors
from alknet_firewall.integrations.preflight import check_screening
from alknet_firewall.verdict import Verdict
from tests.integration_helpers import ServerThread

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Packaged files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_config_example_prints_the_packaged_file(run_cli: Any, name: str, tmp_path: Path) -> None:
    proc = run_cli("config", "example", name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == example_text(name)
    out = tmp_path / f"{name}.yaml"
    proc = run_cli("config", "example", name, "-o", str(out))
    assert proc.returncode == 0 and out.read_text() == example_text(name)
    proc = run_cli("config", "example", name, "-o", str(out))  # no silent overwrite
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert run_cli("config", "example", name, "-o", str(out), "--force").returncode == 0


def test_settings_examples_are_valid_settings(tmp_path: Path) -> None:
    for name in ("gateway", "policies", "onnx"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(example_text(name))
        settings = load_settings(path)
        if name == "policies":
            assert "team-a" in settings.policies
        if name == "onnx":
            assert settings.model.backend == "onnx" and settings.model.onnx.path is not None


def test_litellm_example_runs_alone() -> None:
    cfg = yaml.safe_load(example_text("litellm"))
    assert cfg["model_list"], "the LiteLLM example needs a model_list to run on its own"
    [guard] = cfg["guardrails"]
    assert guard["litellm_params"]["guardrail"].endswith("AlknetFirewallGuardrail")
    assert cfg["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"


def test_packaged_verdict_schema_is_the_documented_one() -> None:
    packaged = REPO / "src/alknet_firewall/data/verdict.schema.json"
    assert json.loads(packaged.read_text()) == json.loads(
        (REPO / "docs/verdict.schema.json").read_text()
    )


# --------------------------------------------------------------------------------------------
# CLI conventions
# --------------------------------------------------------------------------------------------
def test_version(run_cli: Any) -> None:
    from importlib.metadata import version

    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"alknet-firewall {version('alknet-firewall')}"


def _parsers(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, Any]]:
    found = [(path or "alknet-firewall", parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}".strip())
    return found


def test_every_option_has_help() -> None:
    missing = [
        f"{path} {'/'.join(a.option_strings) or a.dest}"
        for path, parser in _parsers(build_parser())
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction) and not a.help
    ]
    assert not missing, f"options without help: {missing}"


def test_usage_errors_exit_2(run_cli: Any) -> None:
    proc = run_cli("screen", "--no-such-flag", "x")
    assert proc.returncode == 2 and "usage:" in proc.stderr


# --------------------------------------------------------------------------------------------
# Start-up checks: a permanent problem is reported once, with the fix
# --------------------------------------------------------------------------------------------
def test_check_screening_names_the_missing_codebook(tmp_path: Path) -> None:
    with pytest.raises(CodebookError, match="does not exist"):
        check_screening(load_settings(None, detection={"codebook": tmp_path / "nope"}))


def test_check_screening_names_the_missing_onnx_export(tmp_path: Path) -> None:
    settings = load_settings(None, model={"backend": "onnx", "onnx": {"path": tmp_path / "nope"}})
    with pytest.raises(ModelNotFoundError, match="model prepare --format onnx"):
        check_screening(settings)


def test_check_screening_names_the_missing_model_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(constants.ENV_GGUF, str(tmp_path / "gone.gguf"))
    with pytest.raises(ModelNotFoundError, match=r"gone\.gguf"):
        check_screening(load_settings(None))


def test_missing_torch_names_the_pin_and_the_onnx_backend() -> None:
    from alknet_firewall.errors import require

    with pytest.raises(DependencyMissingError) as ei:
        require("alknet_no_such_module_torch_stand_in")  # any missing torch-extra module
    assert "torch==2.13.0" in str(ei.value)
    assert "https://download.pytorch.org/whl/cpu" in str(ei.value)
    # the ONNX alternative is named for the torch runtime's own modules
    from alknet_firewall import errors

    assert "model.backend: onnx" in errors.onnx_alternative()
    assert "torch" in errors._TORCH_MODULES


def test_guardrail_refuses_to_start_without_a_codebook(tmp_path: Path) -> None:
    from alknet_firewall.integrations.litellm import AlknetFirewallGuardrail

    with pytest.raises(CodebookError, match="does not exist"):
        AlknetFirewallGuardrail(
            guardrail_name="fw", event_hook="pre_call", codebook=str(tmp_path / "nope")
        )


def test_serve_exits_1_with_the_fix_when_the_model_is_missing(run_cli: Any, tmp_path: Path) -> None:
    env = {constants.ENV_GGUF: str(tmp_path / "gone.gguf"), constants.ENV_CACHE: str(tmp_path)}
    proc = run_cli("serve", "--upstream", "http://127.0.0.1:9/v1", "--port", "0", env=env)
    assert proc.returncode == 1, proc.stderr
    assert "gone.gguf" in proc.stderr and "Traceback" not in proc.stderr


def test_permanent_screening_failure_says_what_is_wrong_without_retry_after() -> None:
    v = Verdict.failed(ModelNotFoundError("the embedded model is not installed"), "default")
    reply = openai_errors.blocked(v)
    assert reply.status == 503 and "retry-after" not in reply.headers
    msg = reply.body["error"]["message"]
    assert "Retry later" not in msg and "Retrying cannot help" in msg
    assert "activation model is not installed" in msg
    assert "the embedded model is not installed" not in json.dumps(reply.body)  # log only
    transient = openai_errors.blocked(Verdict.failed(TimeoutError("slow"), "default"))
    assert transient.headers["retry-after"] == "1"


def test_middleware_without_a_firewall_says_how_to_configure_it() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from alknet_firewall.integrations.asgi import FirewallMiddleware

    async def chat(request: Any) -> PlainTextResponse:
        return PlainTextResponse("forwarded")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.add_middleware(FirewallMiddleware)  # neither firewall= nor lifespan state
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with ServerThread(app) as srv, httpx.Client(timeout=10, trust_env=False) as client:
        r = client.post(f"{srv.url}/v1/chat/completions", json=body)
    assert r.status_code == 500 and "retry-after" not in r.headers
    err = r.json()["error"]
    assert err["code"] == "firewall_not_configured"
    assert "FirewallMiddleware(firewall=" in err["message"]
