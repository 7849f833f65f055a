"""The parts of the LiteLLM guardrail that need no litellm: policy selection, the config model
and settings, what each hook screens, the per-process firewall cache
(``alknet_firewall.integrations.litellm``'s ``policy``, ``settings``, ``subjects`` and
``_shared``). The hooks are tested in ``test_litellm.py``."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from alknet_firewall.errors import BadInputError, ConfigurationError, ModelNotFoundError
from alknet_firewall.integrations.litellm import _shared
from alknet_firewall.integrations.litellm.policy import select_policy
from alknet_firewall.integrations.litellm.settings import AlknetGuardrailParams, build_settings
from alknet_firewall.integrations.litellm.subjects import request_subject, response_text

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "integrations" / "litellm.md"

#: Keys of LiteLLM's own that the docs table lists beside ours.
LITELLM_KEYS = {"violation_message_template", "stream_scope"}


# --------------------------------------------------------------------------------------------
# Without litellm
# --------------------------------------------------------------------------------------------
def test_policy_settings_and_cache_import_without_litellm() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["litellm"] = None  # any 'import litellm' now raises ImportError
        from alknet_firewall.integrations.litellm import build_settings, get_firewall
        from alknet_firewall.integrations.litellm.policy import select_policy
        from alknet_firewall.integrations.litellm.settings import AlknetGuardrailParams
        from alknet_firewall.integrations.litellm.subjects import request_subject
        assert select_policy(None, {}, default_policy="default") == ("default", "default")
        assert AlknetGuardrailParams().metadata_key == "alknet_policy"
        try:
            from alknet_firewall.integrations.litellm import AlknetFirewallGuardrail
        except ImportError:
            print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --------------------------------------------------------------------------------------------
# Policy selection: a pure function of the key/team info and the tables
# --------------------------------------------------------------------------------------------
TABLES: dict[str, Any] = {
    "default_policy": "default",
    "key_policies": {"alias-b": "batch", "hash-1": "hashed"},
    "team_policies": {"team-t": "team", "Team T": "team"},
    "request_policies": ["req"],
}


def key(**attrs: Any) -> SimpleNamespace:
    """A stand-in for LiteLLM's ``UserAPIKeyAuth`` (every attribute the selection reads)."""
    fields = dict.fromkeys(
        ("metadata", "team_metadata", "key_alias", "api_key", "token", "team_id", "team_alias")
    )
    return SimpleNamespace(**{**fields, **attrs})


@pytest.mark.parametrize(
    ("user", "data", "expected"),
    [
        (key(metadata={"alknet_policy": "lenient"}, team_metadata={"alknet_policy": "strict"},
             team_id="team-t"), {}, ("lenient", "key_metadata")),
        (key(team_metadata={"alknet_policy": "strict"}, key_alias="alias-b"), {},
         ("strict", "team_metadata")),
        (key(key_alias="alias-b", team_id="team-t"), {}, ("batch", "key_policies")),
        (key(token="hash-1"), {}, ("hashed", "key_policies")),
        (key(team_id="team-t"), {}, ("team", "team_policies")),
        (key(team_alias="Team T"), {}, ("team", "team_policies")),
        (key(), {"metadata": {"alknet_policy": "req"}}, ("req", "request")),
        # a client may only pick a policy listed in request_policies
        (key(), {"metadata": {"alknet_policy": "lenient"}}, ("default", "default")),
        # request metadata never overrides the key's own rules
        (key(team_id="team-t"), {"metadata": {"alknet_policy": "req"}}, ("team", "team_policies")),
        # an empty metadata value is no choice
        (key(metadata={"alknet_policy": ""}), {}, ("default", "default")),
        # no key object: what the proxy stamped on the request's metadata
        (None, {"metadata": {"user_api_key_team_metadata": {"alknet_policy": "strict"}}},
         ("strict", "team_metadata")),
        (None, {"litellm_metadata": {"user_api_key_team_id": "team-t"}},
         ("team", "team_policies")),
        (None, {"metadata": {"user_api_key_hash": "hash-1"}}, ("hashed", "key_policies")),
        (None, None, ("default", "default")),
    ],
)  # fmt: skip
def test_policy_selection_order(
    user: Any, data: dict[str, Any] | None, expected: tuple[str, str]
) -> None:
    assert select_policy(user, data, **TABLES) == expected


def test_policy_selection_reads_the_configured_metadata_key() -> None:
    user = key(metadata={"alknet_policy": "ignored", "fw": "mine"})
    chosen = select_policy(user, {}, default_policy="d", metadata_key="fw")
    assert chosen == ("mine", "key_metadata")
    # without request_policies the body's metadata is never read
    body = {"metadata": {"fw": "req"}}
    assert select_policy(key(), body, default_policy="d", metadata_key="fw") == ("d", "default")


# --------------------------------------------------------------------------------------------
# The config model and the docs
# --------------------------------------------------------------------------------------------
def documented_keys() -> set[str]:
    """First-column keys of the ``| key | default | meaning |`` table in the LiteLLM doc."""
    lines = DOC.read_text().splitlines()
    start = lines.index("| key | default | meaning |")
    keys: set[str] = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        keys.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return keys


def test_every_config_field_is_described_and_documented() -> None:
    fields = AlknetGuardrailParams.model_fields
    assert all(f.description for f in fields.values()), "a field has no description"
    documented = documented_keys()
    assert set(fields) - documented == set(), "fields missing from docs/integrations/litellm.md"
    assert documented - set(fields) - LITELLM_KEYS == set(), "documented keys that do not exist"


def test_config_model_defaults_are_the_guardrails() -> None:
    model = AlknetGuardrailParams()
    assert model.metadata_key == "alknet_policy"
    assert model.response_headers is True
    assert model.request_policies is None and model.fail_mode is None


# --------------------------------------------------------------------------------------------
# What each hook screens
# --------------------------------------------------------------------------------------------
def test_request_subject_reads_every_text_field_of_the_body() -> None:
    chat = [{"role": "user", "content": "hi"}]
    assert request_subject({"messages": chat}) == chat
    assert request_subject({"prompt": "p"}) == [{"role": "user", "content": "p"}]
    assert request_subject({"input": ["a", "b"]}) == [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    # Not only the first of messages/prompt/input: every field (suffix, tools...) too.
    both = request_subject({"messages": chat, "prompt": "p", "suffix": "s"})
    assert both is not None and [m["content"] for m in both] == ["hi", "p", "s"]
    tools = [{"type": "function", "function": {"name": "f", "description": "d"}}]
    assert request_subject({"messages": chat, "tools": tools}) == [
        *chat,
        {"role": "tool_definition", "content": "d"},
    ]
    with pytest.raises(BadInputError):  # token ids: cannot be screened
        request_subject({"input": [1, 2]})
    assert request_subject({"model": "m"}) is None


def test_response_text_reads_content_and_tool_call_arguments() -> None:
    call = {"function": {"name": "f", "arguments": '{"q": "x"}'}}
    as_dict = {"choices": [{"message": {"content": "Paris.", "tool_calls": [call]}}]}
    assert response_text(as_dict) == 'Paris.\n{"q": "x"}'
    fn = SimpleNamespace(arguments="{}")
    msg = SimpleNamespace(content=None, tool_calls=[SimpleNamespace(function=fn)])
    assert response_text(SimpleNamespace(choices=[SimpleNamespace(message=msg)])) == "{}"
    assert response_text({"choices": []}) is None
    assert response_text({"choices": [{"message": {"content": ""}}]}) is None


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------
def test_settings_from_params_and_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(
        "pool: {workers: 1}\npolicies:\n  default: {}\n  strict:\n"
        "    actions: {clear: allow, notice: flag, warning: block, critical: block}\n"
    )
    s = build_settings(
        config_path=str(cfg),
        codebook="/x/cb.safetensors",
        policy="strict",
        roles="user",
        firewall_settings={"pool": {"queue_size": 7}},
    )
    assert str(s.detection.codebook) == "/x/cb.safetensors"
    assert (s.pool.workers, s.pool.queue_size) == (1, 7)
    assert s.default_policy == "strict"
    assert all(list(p.roles) == ["user"] for p in s.policies.values())


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"fail_mode": "ajar"}, "fail_mode"),
        ({"policy": "nope"}, "default_policy"),
        ({"firewall_settings": {"pool": {"workers": 0}}}, "pool.workers"),
    ],
)
def test_invalid_params_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        build_settings(**params)


# --------------------------------------------------------------------------------------------
# One firewall per process and settings
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fake_firewall_class(monkeypatch: pytest.MonkeyPatch) -> Any:
    class FakeFirewall:
        built: ClassVar[list[Any]] = []
        gate = threading.Event()
        fail: BaseException | None = None

        def __init__(self, settings: Any) -> None:
            assert FakeFirewall.gate.wait(10), "test never opened the gate"
            if FakeFirewall.fail is not None:
                raise FakeFirewall.fail
            self.settings = settings
            self.closed = False
            FakeFirewall.built.append(self)

        def close(self, timeout: float = 0) -> None:
            self.closed = True

    monkeypatch.setattr(_shared, "Firewall", FakeFirewall)
    _shared.close_firewalls()
    yield FakeFirewall
    FakeFirewall.gate.set()
    _shared.close_firewalls()


def test_one_firewall_shared_built_in_a_thread(fake_firewall_class: Any) -> None:
    settings = build_settings()
    other = build_settings(policy="strict", policies={"strict": {}})

    async def main() -> tuple[Any, ...]:
        first = asyncio.create_task(_shared.get_firewall(settings))
        waiters = [asyncio.create_task(_shared.get_firewall(settings)) for _ in range(3)]
        # the loop keeps running while the firewall is being built
        t0 = time.monotonic()
        await asyncio.sleep(0.05)
        assert time.monotonic() - t0 < 1.0
        assert not any(t.done() for t in [first, *waiters])
        first.cancel()  # a cancelled request does not cancel the construction
        fake_firewall_class.gate.set()
        results = await asyncio.gather(*waiters)
        again = await _shared.get_firewall(settings)
        separate = await _shared.get_firewall(other)
        return (*results, again, separate)

    *shared, separate = asyncio.run(main())
    assert len({id(fw) for fw in shared}) == 1
    assert separate is not shared[0]
    assert len(fake_firewall_class.built) == 2
    _shared.close_firewalls()
    assert all(fw.closed for fw in fake_firewall_class.built)


def test_failed_construction_is_reported_then_retried(
    fake_firewall_class: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = build_settings()
    fake_firewall_class.gate.set()
    fake_firewall_class.fail = ModelNotFoundError("no model")

    async def attempt() -> Any:
        return await _shared.get_firewall(settings)

    for _ in range(2):  # the failure is remembered for RETRY_BUILD_AFTER_S
        with pytest.raises(ModelNotFoundError):
            asyncio.run(attempt())
    fake_firewall_class.fail = None
    with pytest.raises(ModelNotFoundError):
        asyncio.run(attempt())
    monkeypatch.setattr(_shared, "RETRY_BUILD_AFTER_S", 0.0)
    assert asyncio.run(attempt()) is fake_firewall_class.built[0]
