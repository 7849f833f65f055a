"""OpenTelemetry spans for screening, when the ``otel`` extra (``opentelemetry-api``) is installed.

One span per screening, ``alknet_firewall.screen``, a child of whatever span is current (the
incoming request's, see :func:`continue_trace`), with three children timed from the batch that
served it: ``alknet_firewall.queue_wait`` (submitted until its micro-batch started),
``alknet_firewall.model`` (tokenising and the forward pass) and ``alknet_firewall.scoring``. A
micro-batch serves several requests at once: each request's children carry the batch's times
and ``alknet_firewall.batch_requests``.

Attributes are numbers, ids and names only — never the screened text (see
``docs/observability.md``). Without the API installed, or with ``telemetry.enabled: false``,
nothing is imported and every hook returns at once; without an SDK (no tracer provider set) the
API's spans do not record and the hooks stop after one check.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = [
    "MODEL_SPAN",
    "QUEUE_SPAN",
    "SCORING_SPAN",
    "SCREEN_SPAN",
    "TRACER_NAME",
    "available",
    "batch_spans",
    "continue_trace",
    "pending",
    "record_error",
    "traced",
    "under_span",
]

TRACER_NAME = "alknet_firewall"
SCREEN_SPAN = "alknet_firewall.screen"
QUEUE_SPAN = "alknet_firewall.queue_wait"
MODEL_SPAN = "alknet_firewall.model"
SCORING_SPAN = "alknet_firewall.scoring"
_PREFIX = "alknet_firewall."

F = TypeVar("F", bound=Callable[..., Any])

#: ``opentelemetry.trace`` once imported; False when the API is not installed.
_trace_api: Any = None
_tracer: Any = None


def _api() -> Any | None:
    """The ``opentelemetry.trace`` module, imported on first use; None when not installed."""
    global _trace_api, _tracer
    if _trace_api is None:
        try:
            from opentelemetry import trace
        except ImportError:
            _trace_api = False
        else:
            _tracer = trace.get_tracer(TRACER_NAME)
            _trace_api = trace
    return _trace_api or None


def available() -> bool:
    """Whether the OpenTelemetry API is installed (``pip install 'alknet-firewall[otel]'``)."""
    return _api() is not None


def _enabled(firewall: Any) -> bool:
    telemetry = getattr(getattr(firewall, "settings", None), "telemetry", None)
    return bool(getattr(telemetry, "enabled", True)) and _api() is not None


def _recording() -> Any | None:
    """The current span when it records, else None."""
    trace = _api()
    if trace is None:
        return None
    span = trace.get_current_span()
    return span if span.is_recording() else None


# --------------------------------------------------------------------------------------------
# The screening span
# --------------------------------------------------------------------------------------------
def _start() -> Any:
    return _tracer.start_as_current_span(SCREEN_SPAN)


def _finish(span: Any, result: Any) -> None:
    if not span.is_recording():
        return
    verdict = getattr(result, "verdict", result)  # a Firewall.Screening holds its verdict
    attrs = {
        "action": verdict.action,
        "level": verdict.level,
        "signal": verdict.signal,
        "score": float(verdict.score),
        "codebook_id": verdict.codebook_id,
        "policy": verdict.policy,
        "screened_messages": verdict.screened_messages,
        "cached_messages": verdict.cached_messages,
        "error_code": verdict.error_code,
    }
    span.set_attributes({_PREFIX + k: v for k, v in attrs.items() if v is not None})
    if verdict.error_code:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, verdict.error_code))


def traced(fn: F) -> F:
    """Wrap a :class:`~alknet_firewall.Firewall` screening method (sync or async) that returns a
    verdict (or a ``Screening``, which holds one) in the ``alknet_firewall.screen`` span; an
    exception it raises is recorded on the span and marks it as an error."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not _enabled(self):
                return await fn(self, *args, **kwargs)
            with _start() as span:
                verdict = await fn(self, *args, **kwargs)
                _finish(span, verdict)
                return verdict

        return awrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _enabled(self):
            return fn(self, *args, **kwargs)
        with _start() as span:
            verdict = fn(self, *args, **kwargs)
            _finish(span, verdict)
            return verdict

    return wrapper  # type: ignore[return-value]


def record_error(exc: BaseException) -> None:
    """Record an error that became a fail-mode verdict on the current span."""
    span = _recording()
    if span is not None:
        span.record_exception(exc)


# --------------------------------------------------------------------------------------------
# Batch timings (the pool's worker thread)
# --------------------------------------------------------------------------------------------
def pending() -> tuple[Any, int] | None:
    """What a pool job carries to the worker: (the recording screening span, submission time
    in ns), or None when nothing records."""
    span = _recording()
    return None if span is None else (span, time.time_ns())


def batch_spans(
    jobs: Sequence[Any],
    tokens: Sequence[Sequence[int]],
    *,
    start_ns: int,
    model_end_ns: int | None,
    end_ns: int,
) -> None:
    """Add the queue-wait, model and scoring children to the span of each job of a batch that
    has a ``trace`` from :func:`pending`. ``tokens``: the token ids of every text of the batch,
    in job order; ``model_end_ns`` None: no text reached the model (all rejected)."""
    pos = 0
    for job in jobs:
        n = len(job)
        carried = getattr(job, "trace", None)
        ids = tokens[pos : pos + n]
        pos += n
        if carried is None:
            continue
        span, submitted_ns = carried
        trace = _api()
        ctx = trace.set_span_in_context(span)
        shared = {_PREFIX + "batch_requests": len(jobs)}
        _child(QUEUE_SPAN, ctx, submitted_ns, start_ns, {})
        if model_end_ns is not None:
            _child(MODEL_SPAN, ctx, start_ns, model_end_ns, shared)
            _child(SCORING_SPAN, ctx, model_end_ns, end_ns, shared)
        span.set_attributes({_PREFIX + "n_texts": n, _PREFIX + "tokens": sum(len(t) for t in ids)})


def _child(name: str, ctx: Any, start_ns: int, end_ns: int, attrs: dict[str, Any]) -> None:
    child = _tracer.start_span(name, context=ctx, start_time=start_ns, attributes=attrs or None)
    child.end(end_time=max(start_ns, end_ns))


# --------------------------------------------------------------------------------------------
# Incoming trace context (ASGI middleware, gateway)
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def continue_trace(headers: Iterable[tuple[bytes, bytes]] | None) -> Iterator[None]:
    """Make the request's trace context (W3C ``traceparent``/``tracestate``, or whatever the
    configured propagator reads) current, so the screening span is a child of the caller's
    span. Nothing changes when a span is already current (an OpenTelemetry ASGI
    instrumentation continued the trace already) or the API is not installed."""
    trace = _api()
    if trace is None or trace.get_current_span().get_span_context().is_valid:
        yield
        return
    from opentelemetry import context, propagate

    carrier: dict[str, str] = {}
    for k, v in headers or ():
        carrier[k.decode("latin-1").lower()] = v.decode("latin-1")
    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)


def under_span(span: Any) -> contextlib.AbstractContextManager[Any]:
    """Make ``span`` (an OpenTelemetry span someone passed in, e.g. LiteLLM's
    ``parent_otel_span``) current; a no-op for None or without the API."""
    trace = _api()
    if trace is None or span is None or not hasattr(span, "get_span_context"):
        return contextlib.nullcontext()
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )
