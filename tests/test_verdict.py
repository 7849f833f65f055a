"""Verdict.failed: the one fail-mode constructor (firewall and LiteLLM guardrail use it)."""

from __future__ import annotations

import typing

from alknet_firewall.config import PolicySettings
from alknet_firewall.constants import ALARM_LEVELS, LEVELS
from alknet_firewall.errors import OverloadError, ScreenTimeoutError
from alknet_firewall.verdict import Verdict


def test_fail_closed_blocks_and_records_the_error() -> None:
    v = Verdict.failed(
        ScreenTimeoutError("slow"), "p", PolicySettings(), codebook_id="cb", latency_ms=3.0
    )
    assert (v.action, v.level, v.score, v.signals) == ("block", "critical", 1.0, {})
    assert (v.policy, v.codebook_id, v.latency_ms) == ("p", "cb", 3.0)
    assert v.error == "ScreenTimeoutError: slow" and v.error_code == "screen_timeout"


def test_fail_open_monitor_and_override() -> None:
    v = Verdict.failed(RuntimeError("x"), "p", PolicySettings(fail_mode="open"))
    assert (v.action, v.level, v.score, v.error_code) == ("flag", "notice", 0.0, "internal_error")
    v = Verdict.failed(RuntimeError("x"), "p", PolicySettings(monitor=True))
    assert (v.action, v.level) == ("flag", "critical")
    v = Verdict.failed(OverloadError("full"), "p", fail_mode="open")  # no policy at hand
    assert (v.action, v.level, v.error_code) == ("flag", "notice", "overloaded")
    assert Verdict.failed(RuntimeError("x"), "p").blocked  # no policy: closed


def test_action_and_level_are_typed_with_the_literals() -> None:
    hints = typing.get_type_hints(Verdict)
    assert typing.get_args(hints["level"]) == LEVELS
    assert typing.get_args(hints["action"]) == ("allow", "flag", "block")
    assert LEVELS[1:] == ALARM_LEVELS


def test_firewall_reexports_verdict() -> None:
    from alknet_firewall import firewall

    assert firewall.Verdict is Verdict
