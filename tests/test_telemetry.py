"""OpenTelemetry spans per screening (``alknet_firewall.telemetry``), read back with the SDK's
``InMemorySpanExporter``: the span tree, its attributes (never the text), errors, the setting,
and the caller's ``traceparent`` continued through a real uvicorn server with the middleware,
through the real gateway (whose upstream still gets the header) and through the LiteLLM
guardrail (LiteLLM's ``parent_otel_span``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra's SDK is a dev dependency")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from alknet_firewall import telemetry
from alknet_firewall.config import load_settings
from alknet_firewall.errors import BadInputError
from alknet_firewall.firewall import Firewall
from tests.fakes import FakeModel, attack_text
from tests.integration_helpers import (
    ATTACK,
    BENIGN,
    ServerThread,
    firewall_settings,
)

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this process ends, kept in memory (the global provider is set once)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()


def fake_firewall(codebook: Any, **settings: Any) -> tuple[Firewall, FakeModel]:
    model = FakeModel()
    s = load_settings(None, pool={"workers": 1, "warmup": False, "timeout_s": 5}, **settings)
    return Firewall(s, model=model, codebook=codebook), model


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def all_strings(span: ReadableSpan) -> list[str]:
    values: list[Any] = list(span.attributes.values())
    for event in span.events:
        values += list(event.attributes.values())
    return [str(v) for v in values]


def test_one_span_per_screening_with_timed_children(fake_codebook: Any, spans: Any) -> None:
    fw, _ = fake_firewall(fake_codebook)
    text = attack_text(7_001)
    spans.clear()
    with fw:
        verdict = fw.screen([{"role": "user", "content": text}])
    (screen,) = named(spans, telemetry.SCREEN_SPAN)
    attrs = dict(screen.attributes)
    assert verdict.action == "block"
    assert attrs["alknet_firewall.action"] == "block"
    assert attrs["alknet_firewall.level"] == verdict.level == "critical"
    assert attrs["alknet_firewall.signal"] == "injection"
    assert attrs["alknet_firewall.score"] == pytest.approx(verdict.score)
    assert attrs["alknet_firewall.codebook_id"] == fake_codebook.id
    assert attrs["alknet_firewall.policy"] == "default"
    assert attrs["alknet_firewall.n_texts"] == 1
    assert attrs["alknet_firewall.tokens"] == len(text.split())  # the fake model: one per word
    assert screen.status.status_code is StatusCode.UNSET
    children = {
        name: named(spans, name)
        for name in (telemetry.QUEUE_SPAN, telemetry.MODEL_SPAN, telemetry.SCORING_SPAN)
    }
    for name, found in children.items():
        assert len(found) == 1, name
        child = found[0]
        assert child.parent is not None and child.parent.span_id == screen.context.span_id
        assert child.context.trace_id == screen.context.trace_id
        assert screen.start_time <= child.start_time <= child.end_time <= screen.end_time
    queue, model, scoring = (children[n][0] for n in children)
    assert queue.end_time == model.start_time and model.end_time == scoring.start_time
    assert model.attributes["alknet_firewall.batch_requests"] == 1
    # Never the text: no attribute of any span holds it or one of its words.
    words = {w for w in text.split() if len(w) > 3}
    for span in spans.get_finished_spans():
        for value in all_strings(span):
            assert text not in value and not words & set(value.split()), (span.name, value)


def test_errors_are_recorded_on_the_span(fake_codebook: Any, spans: Any) -> None:
    fw, model = fake_firewall(fake_codebook)
    with fw:
        spans.clear()
        model.fail = RuntimeError("the model broke")
        failed = fw.screen("a benign question about the weather")
        model.fail = None
        (span,) = named(spans, telemetry.SCREEN_SPAN)
        assert failed.error_code == "internal_error"
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["alknet_firewall.error_code"] == "internal_error"
        assert [e.attributes["exception.type"] for e in span.events] == ["RuntimeError"]
        # Bad input raises: recorded on the span, which still ends.
        spans.clear()
        with pytest.raises(BadInputError):
            fw.screen([{"role": "user", "content": 42}])
        (span,) = named(spans, telemetry.SCREEN_SPAN)
        assert span.status.status_code is StatusCode.ERROR
        assert str(span.events[0].attributes["exception.type"]).endswith("BadInputError")


def test_async_and_batch_screening_are_traced_per_input(fake_codebook: Any, spans: Any) -> None:
    fw, _ = fake_firewall(fake_codebook)
    with fw:
        spans.clear()
        asyncio.run(fw.ascreen("what is the weather today"))
        assert len(named(spans, telemetry.SCREEN_SPAN)) == 1
        spans.clear()
        verdicts = fw.screen_many([f"please summarise report {i}" for i in range(5)])
    screens = named(spans, telemetry.SCREEN_SPAN)
    assert len(verdicts) == len(screens) == 5
    ids = {s.context.span_id for s in screens}
    queue = named(spans, telemetry.QUEUE_SPAN)
    assert len(queue) == 5 and {q.parent.span_id for q in queue} == ids


def test_disabled_setting_and_missing_api_emit_nothing(
    fake_codebook: Any, spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fw, _ = fake_firewall(fake_codebook, telemetry={"enabled": False})
    with fw:
        spans.clear()
        assert fw.screen(attack_text(7_002)).action == "block"
    assert spans.get_finished_spans() == ()
    fw, _ = fake_firewall(fake_codebook)
    monkeypatch.setattr(telemetry, "_trace_api", False)  # as if the API were not installed
    with fw:
        assert fw.screen(attack_text(7_003)).action == "block"
    assert not telemetry.available() and spans.get_finished_spans() == ()


def test_importing_the_package_does_not_import_opentelemetry(run_py: Any) -> None:
    proc = run_py(
        """
        import sys
        import alknet_firewall, alknet_firewall.firewall, alknet_firewall.integrations.asgi
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_without_the_api_screening_works(run_py: Any) -> None:
    """``opentelemetry`` not importable: no error, no span, the verdict as always."""
    proc = run_py(
        """
        import sys
        sys.modules["opentelemetry"] = None  # import fails as if not installed
        from alknet_firewall import telemetry
        from alknet_firewall.config import load_settings
        from alknet_firewall.firewall import Firewall
        from tests.fakes import FakeModel, attack_text, fit_fake_codebook
        s = load_settings(None, pool={"workers": 1, "warmup": False})
        with Firewall(s, model=FakeModel(), codebook=fit_fake_codebook(FakeModel())) as fw:
            print(fw.screen(attack_text(1)).action, telemetry.available())
        """
    )
    assert proc.stdout.strip().splitlines()[-1] == "block False"


def test_parent_span_given_by_the_caller(fake_codebook: Any, spans: Any) -> None:
    """``under_span`` (LiteLLM's ``parent_otel_span``) makes the screening its child."""
    tracer = trace.get_tracer("test")
    fw, _ = fake_firewall(fake_codebook)
    with fw:
        spans.clear()
        parent = tracer.start_span("litellm_request")
        with telemetry.under_span(parent):
            fw.screen("hello there")
        parent.end()
        assert telemetry.under_span(None) is not None  # a no-op context
    (screen,) = named(spans, telemetry.SCREEN_SPAN)
    assert screen.parent is not None and screen.parent.span_id == parent.get_span_context().span_id


# --------------------------------------------------------------------------------------------
# The caller's trace, through real servers (the real model)
# --------------------------------------------------------------------------------------------
def _assert_child_of_traceparent(spans: InMemorySpanExporter, action: str) -> None:
    (screen,) = named(spans, telemetry.SCREEN_SPAN)
    assert screen.context.trace_id == TRACE_ID
    assert screen.parent is not None and screen.parent.span_id == PARENT_ID
    assert screen.attributes["alknet_firewall.action"] == action


def _chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}]}


@pytest.mark.slow
def test_middleware_continues_the_incoming_trace(real_firewall: Any, spans: Any) -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from alknet_firewall.integrations.asgi import FirewallMiddleware

    seen: list[str | None] = []

    async def chat(request: Any) -> JSONResponse:
        seen.append(request.headers.get("traceparent"))
        return JSONResponse({"ok": True})

    app = FirewallMiddleware(
        Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]),
        firewall=real_firewall,
    )
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        spans.clear()
        r = client.post(
            "/v1/chat/completions", json=_chat(BENIGN), headers={"traceparent": TRACEPARENT}
        )
        assert r.status_code == 200 and seen == [TRACEPARENT]
        _assert_child_of_traceparent(spans, "allow")
        # Without a traceparent the screening starts its own trace.
        spans.clear()
        assert client.post("/v1/chat/completions", json=_chat(BENIGN)).status_code == 200
        (own,) = named(spans, telemetry.SCREEN_SPAN)
        assert own.parent is None and own.context.trace_id != TRACE_ID


@pytest.mark.slow
def test_gateway_continues_the_trace_and_forwards_the_header(
    real_firewall: Any, spans: Any
) -> None:
    from alknet_firewall.integrations.gateway import create_app
    from tests.integrations.test_gateway import FakeUpstream

    upstream = FakeUpstream()
    with ServerThread(upstream.app) as up:
        settings = firewall_settings(upstream=up.url + "/v1", upstream_timeout_s=5.0)
        app = create_app(settings, real_firewall)
        with ServerThread(app) as gw, httpx.Client(base_url=gw.url, timeout=60) as client:
            spans.clear()
            r = client.post(
                "/v1/chat/completions", json=_chat(BENIGN), headers={"traceparent": TRACEPARENT}
            )
            assert r.status_code == 200, r.text
            assert upstream.recorded[-1]["headers"]["traceparent"] == TRACEPARENT
            _assert_child_of_traceparent(spans, "allow")
            spans.clear()
            r = client.post(
                "/v1/chat/completions", json=_chat(ATTACK), headers={"traceparent": TRACEPARENT}
            )
            assert r.status_code == 400 and len(upstream.recorded) == 1
            _assert_child_of_traceparent(spans, "block")
            for span in spans.get_finished_spans():
                assert not any(ATTACK in v or "instructions" in v for v in all_strings(span))


@pytest.mark.slow
def test_litellm_guardrail_screens_under_litellms_span(fake_codebook: Any, spans: Any) -> None:
    pytest.importorskip("litellm")
    from litellm.proxy._types import UserAPIKeyAuth
    from litellm.types.guardrails import GuardrailEventHooks

    from alknet_firewall.integrations.litellm.guardrail import AlknetFirewallGuardrail

    fw, _ = fake_firewall(fake_codebook)
    g = AlknetFirewallGuardrail(guardrail_name="fw", event_hook="pre_call", default_on=True)

    async def firewall() -> Firewall:
        return fw

    g.firewall = firewall  # type: ignore[method-assign]
    parent = trace.get_tracer("litellm").start_span("proxy_pre_call")
    key = UserAPIKeyAuth(parent_otel_span=parent)
    data = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": {}}
    with fw:
        spans.clear()
        asyncio.run(
            g.screen(data, "a question about the weather", key, GuardrailEventHooks.pre_call)
        )
        parent.end()
    (screen,) = named(spans, telemetry.SCREEN_SPAN)
    assert screen.parent is not None and screen.parent.span_id == parent.get_span_context().span_id
    assert json.dumps(dict(screen.attributes)).find("weather") == -1
