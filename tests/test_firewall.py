"""Firewall runtime on a deterministic model double: policy, fail modes, cache, overload,
timeouts and shutdown. (Real-model behaviour: tests/test_firewall_real.py.)"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from alknet_firewall.config import load_settings
from alknet_firewall.errors import (
    BadInputError,
    FirewallClosedError,
    InputTooLargeError,
    OverloadError,
)
from alknet_firewall.firewall import Firewall, Verdict
from tests.fakes import FakeModel, attack_text, benign_text, fit_fake_codebook


@pytest.fixture(scope="module")
def codebook() -> Any:
    return fit_fake_codebook(FakeModel())


def make(
    codebook: Any, model: FakeModel | None = None, **overrides: Any
) -> tuple[Firewall, FakeModel]:
    model = model or FakeModel()
    settings = load_settings(
        None,
        **{
            "pool": {"workers": 2, "warmup": False, "timeout_s": 5, **overrides.pop("pool", {})},
            "policies": overrides.pop(
                "policies",
                {
                    "default": {},
                    "open": {"fail_mode": "open"},
                    "monitor": {"monitor": True},
                    "strict": {"thresholds": {"notice": 0.0, "warning": 0.0, "critical": 0.0}},
                    "flag-only": {
                        "actions": {
                            "clear": "allow",
                            "notice": "allow",
                            "warning": "flag",
                            "critical": "flag",
                        }
                    },
                    "no-injection": {"signals": ["jailbreak", "harmful"]},
                    "shed": {"overload": "fail_mode"},
                },
            ),
            **overrides,
        },
    )
    return Firewall(settings, model=model, codebook=codebook), model


def test_attack_blocked_benign_allowed_and_verdict_explains(codebook: Any) -> None:
    fw, _ = make(codebook)
    with fw:
        ok = fw.screen(benign_text(10_001))
        bad = fw.screen(
            [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": attack_text(10_002)},
            ]
        )
    assert ok.action == "allow" and ok.level in ("clear", "notice")
    assert bad.action == "block" and bad.level == "critical" and bad.signal == "injection"
    assert bad.message_index == 1 and bad.window is not None and bad.window["layer"] == 8
    assert bad.codebook_id == codebook.id and bad.score >= bad.thresholds["critical"]
    # JSON and header forms.
    d = json.loads(bad.to_json())
    assert Verdict.from_dict(d).action == "block"
    h = bad.headers()
    assert h["x-alknet-firewall-action"] == "block"
    assert all(v.isascii() for v in h.values())


def test_verdicts_match_the_documented_json_schema(codebook: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    schema = json.loads((Path(__file__).parent.parent / "docs" / "verdict.schema.json").read_text())
    fw, model = make(codebook)
    with fw:
        verdicts = [fw.screen(benign_text(3)), fw.screen(attack_text(3))]
        model.fail = RuntimeError("boom")
        verdicts.append(fw.screen(benign_text(4)))
    for v in verdicts:
        jsonschema.validate(json.loads(v.to_json()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**verdicts[0].to_dict(), "action": "maybe"}, schema)


def test_system_prompt_is_not_screened_but_tool_results_are(codebook: Any) -> None:
    fw, _ = make(codebook)
    with fw:
        sys_only = fw.screen(
            [{"role": "system", "content": attack_text(1)}, {"role": "user", "content": "hi there"}]
        )
        tool = fw.screen(
            [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "1", "content": attack_text(2)},
            ]
        )
        parts = fw.screen(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                        {"type": "text", "text": attack_text(3)},
                    ],
                }
            ]
        )
    assert sys_only.action == "allow" and sys_only.screened_messages == 1
    assert tool.action == "block" and tool.message_index == 1
    assert parts.action == "block" and parts.ignored == ["messages[0].content[0]:image_url"]


def test_tool_call_arguments_follow_the_assistant_role(codebook: Any) -> None:
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": attack_text(9)}}
    msgs = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    fw, _ = make(
        codebook, policies={"default": {}, "agents": {"roles": ["user", "tool", "assistant"]}}
    )
    with fw:
        assert fw.screen(msgs).screened_messages == 0  # the assistant's turn is the model's own
        assert fw.screen(msgs, policy="agents").action == "block"


def test_policies_change_the_outcome(codebook: Any) -> None:
    fw, _ = make(codebook)
    text = attack_text(5)
    with fw:
        assert fw.screen(text).action == "block"
        assert fw.screen(text, policy="monitor").action == "flag"
        assert fw.screen(text, policy="flag-only").action == "flag"
        assert fw.screen(benign_text(4), policy="strict").action == "block"
        assert fw.screen(benign_text(4)).action == "allow"
        assert fw.screen(text, policy="no-injection").signal != "injection"
        with pytest.raises(Exception, match="unknown policy"):
            fw.screen(text, policy="nope")


def test_bad_input_raises_clear_errors(codebook: Any) -> None:
    fw, _ = make(codebook)
    with fw:
        for bad in (
            None,
            42,
            {"role": "user"},
            [1, 2],
            [{"content": "x"}],
            [{"role": "user", "content": 5}],
            [{"role": "user", "content": [{"type": "text", "text": None}]}],
            [{"role": "tool", "content": "x", "tool_calls": 5}],
            [{"role": "tool", "content": "x", "tool_calls": "call"}],
            b"bytes",
        ):
            with pytest.raises(BadInputError):
                fw.screen(bad)  # type: ignore[arg-type]
        empty = fw.screen([{"role": "user", "content": None}, {"role": "user", "content": ""}])
        assert empty.action == "allow" and empty.screened_messages == 0


def test_fail_mode_closed_blocks_and_open_flags_on_model_failure(codebook: Any) -> None:
    fw, model = make(codebook)
    with fw:
        model.fail = RuntimeError("CUDA on fire")
        closed = fw.screen(benign_text(20_001))
        opened = fw.screen(benign_text(20_002), policy="open")
        assert (
            closed.action == "block"
            and closed.error_code == "internal_error"
            and "CUDA" in closed.error
        )
        assert opened.action == "flag" and opened.error is not None
        model.fail = None
        assert fw.screen(benign_text(20_003)).action == "allow"  # recovered


def test_timeout_gives_fail_mode_verdict_sync_and_async(codebook: Any) -> None:
    fw, model = make(codebook, pool={"timeout_s": 0.3})
    with fw:
        model.sleep_s = 1.0
        t0 = time.perf_counter()
        v = fw.screen(benign_text(30_001))
        assert time.perf_counter() - t0 < 0.9
        assert v.action == "block" and v.error_code == "screen_timeout"
        v2 = asyncio.run(fw.ascreen(benign_text(30_002), policy="open"))
        assert v2.action == "flag" and v2.error_code == "screen_timeout"
        model.sleep_s = 0.0
        time.sleep(1.2)
        assert fw.screen(benign_text(30_003)).error is None


def test_overload_is_refused_at_once_or_shed_by_fail_mode(codebook: Any) -> None:
    fw, model = make(codebook, pool={"workers": 1, "queue_size": 2, "max_batch_size": 1})
    model.hang.set()
    try:
        blockers = [
            threading.Thread(target=fw.screen, args=(benign_text(40_000 + i),)) for i in range(3)
        ]
        for t in blockers:  # one held by the worker, two waiting: the queue is full
            t.start()
            time.sleep(0.1)
        time.sleep(0.1)
        t0 = time.perf_counter()
        with pytest.raises(OverloadError):
            fw.screen(benign_text(40_100))
        shed = fw.screen(benign_text(40_101), policy="shed")
        assert time.perf_counter() - t0 < 0.5
        assert shed.action == "block" and shed.error_code == "overloaded"
    finally:
        model.release.set()
        model.hang.clear()
        for t in blockers:
            t.join(5)
        fw.close()


def test_multi_turn_cache_skips_screened_messages(codebook: Any) -> None:
    fw, model = make(codebook)
    with fw:
        history: list[dict[str, str]] = []
        for turn in range(20):
            history.append({"role": "user", "content": benign_text(50_000 + turn)})
            before = model.texts_seen
            v = fw.screen(list(history))
            # Only the new message (and its seam with the previous one) reaches the model.
            assert model.texts_seen - before == (1 if turn == 0 else 2)
            assert v.cached_messages == turn and v.screened_messages == turn + 1
            history.append({"role": "assistant", "content": "ok"})
        assert fw.cache_hits >= 190 + 170  # earlier messages and earlier seams


def test_seams_between_messages_are_screened(codebook: Any) -> None:
    msgs = [{"role": "user", "content": benign_text(55_000 + i)} for i in range(3)]
    fw, model = make(codebook)
    with fw:
        before = model.texts_seen
        v = fw.screen(msgs)
        assert model.texts_seen - before == 3 + 2  # three messages, two seams
        assert v.screened_messages == 3 and v.action == "allow"
    fw, model = make(codebook, detection={"seams": False})
    with fw:
        before = model.texts_seen
        fw.screen(msgs)
        assert model.texts_seen - before == 3


def test_cache_is_bounded(codebook: Any) -> None:
    fw, model = make(codebook, pool={"cache_size": 3})
    with fw:
        for i in range(10):
            fw.screen(benign_text(60_000 + i))
        before = model.texts_seen
        fw.screen(benign_text(60_000))  # evicted long ago
        assert model.texts_seen == before + 1
        assert len(fw._cache) == 3


def test_size_limit_refuses_instead_of_truncating(codebook: Any) -> None:
    fw, _ = make(codebook, detection={"max_input_tokens": 50})
    with fw:
        with pytest.raises(InputTooLargeError):
            fw.screen("word " * 10_000)  # rejected before tokenising
        with pytest.raises(InputTooLargeError, match="61 tokens"):
            fw.screen("ATTACK " + "word " * 60)  # over the token limit, found in the worker
        with pytest.raises(InputTooLargeError):
            asyncio.run(fw.ascreen("ATTACK " + "word " * 60))
        assert fw.screen("ATTACK " + "word " * 40).action == "block"


def test_attack_hidden_after_long_benign_preamble_is_found(codebook: Any) -> None:
    fw, _ = make(codebook)
    with fw:
        v = fw.screen(" ".join(benign_text(70_000 + i) for i in range(60)) + " ATTACK do it")
    assert v.action == "block" and v.window["window"] > 5


def test_async_concurrency_matches_sequential(codebook: Any) -> None:
    fw, _ = make(codebook, pool={"max_wait_ms": 5, "queue_size": 1000})
    texts = [benign_text(80_000 + i) if i % 3 else attack_text(80_000 + i) for i in range(300)]
    with fw:
        sequential = [fw.screen(t).action for t in texts]
        fw._cache.clear()

        async def run() -> list[str]:
            return [v.action for v in await asyncio.gather(*(fw.ascreen(t) for t in texts))]

        assert asyncio.run(run()) == sequential
        assert fw.pool.stats().mean_batch_size > 1


def test_close_under_load_never_hangs(codebook: Any) -> None:
    fw, model = make(codebook, pool={"workers": 1, "max_batch_size": 1, "queue_size": 500})
    model.sleep_s = 0.01

    async def run() -> list[Any]:
        tasks = [asyncio.create_task(fw.ascreen(benign_text(90_000 + i))) for i in range(200)]
        await asyncio.sleep(0.05)
        await asyncio.get_running_loop().run_in_executor(None, lambda: fw.close(timeout=0.2))
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)

    results = asyncio.run(run())
    done = [r for r in results if isinstance(r, Verdict)]
    assert done, "work in flight should finish"
    # Whatever was still queued got a verdict from fail_mode (closed) — nobody hangs.
    assert all(r.error_code in (None, "firewall_closed") for r in done)
    with pytest.raises(FirewallClosedError):
        fw.screen("hello")


def test_screen_many_return_exceptions_closed_and_worker_init(codebook: Any) -> None:
    # burst_threads = threads_per_worker: no lone-request burst (ADR 0005) on many-core hosts
    fw, model = make(codebook, pool={"threads_per_worker": 3, "burst_threads": 3})
    with fw:
        out = fw.screen_many([benign_text(1), b"bytes"], return_exceptions=True)  # type: ignore[list-item]
        assert isinstance(out[0], Verdict) and isinstance(out[1], BadInputError)
        with pytest.raises(BadInputError):
            fw.screen_many([benign_text(1), b"bytes"])  # type: ignore[list-item]
        assert model.worker_threads == 3  # the pool called the model's init_worker
        assert not fw.closed
    assert fw.closed
    assert not getattr(model, "closed", False)  # a model passed in is the caller's to close


def test_status_is_one_snapshot_of_model_codebook_pool_and_counts(codebook: Any) -> None:
    fw, _ = make(codebook)
    with fw:
        before = fw.status().counts["verdicts"]
        fw.screen(attack_text(30_001))
        status = fw.status()
        assert not status.closed and status.codebook_id == fw.codebook.id
        assert status.model.name == "fake/model" and status.model.backend == "local"
        assert status.pool.workers == 2 and status.pool.queue_depth == 0
        assert status.pool.items >= 1 and status.counts["verdicts"] == before + 1
        assert status.default_policy == "default" and "monitor" in status.policies
        d = status.to_dict()
        json.dumps(d)  # JSON-ready
        assert d["pool"]["workers"] == 2 and d["model"]["name"] == "fake/model"
    assert fw.status().closed


def test_ascreen_recorded_returns_the_record_and_the_text_read(codebook: Any) -> None:
    fw, _ = make(codebook)
    with fw:
        done = asyncio.run(fw.ascreen_recorded(attack_text(30_002)))
        assert done.verdict.action == "block" and done.text is not None
        assert done.record.source == "console" and done.record.text is None
        assert done.record.chars == len(done.text)
        assert fw.recorder.recent(1)[0] == done.record
        fw.screen(benign_text(30_003))
        assert fw.recorder.recent(1)[0].source == "traffic"
