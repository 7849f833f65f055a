"""``alknet-firewall model serve``: one activation model shared by many screening processes.

Starlette + uvicorn. Requests from every client go into one :class:`~alknet_firewall.pool.
BatchPool` whose micro-batches are capped by tokens (``model_server.max_batch_tokens``); a full
queue answers 429 with ``Retry-After`` at once, so back-pressure reaches the screening side as
:class:`~alknet_firewall.errors.OverloadError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..config import Settings, coerce_settings
from ..errors import FirewallClosedError, OverloadError
from ..model import wire
from .service import EncodeService, Job, error_reply, serving_model_settings

if TYPE_CHECKING:  # pragma: no cover
    from ..integrations.auth import KeySet

__all__ = [
    "ModelServer",
    "create_model_app",
    "server_keys",
]


log = logging.getLogger(__name__)

_METRICS: dict[str, Any] = {}
_METRICS_LOCK = threading.Lock()


def _metrics() -> dict[str, Any]:
    with _METRICS_LOCK:
        if not _METRICS:
            from prometheus_client import Counter, Gauge, Histogram

            _METRICS.update(
                requests=Counter(
                    "alknet_modelserver_requests_total", "Encode requests by status", ["status"]
                ),
                seconds=Histogram(
                    "alknet_modelserver_request_seconds",
                    "Encode request time (queueing included)",
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                ),
                batch_requests=Histogram(
                    "alknet_modelserver_batch_requests",
                    "Client requests per forward batch",
                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                ),
                batch_tokens=Histogram(
                    "alknet_modelserver_batch_tokens",
                    "Tokens per forward batch",
                    buckets=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
                ),
                queue=Gauge("alknet_modelserver_queue_depth", "Requests waiting for a worker"),
            )
        return _METRICS


class ModelServer:
    """The pool around an :class:`EncodeService`; framework-free so tests can drive it."""

    def __init__(self, settings: Settings, model: Any | None = None) -> None:
        from ..model import load_model
        from ..pool import BatchPool

        self.settings = settings
        ms = settings.model_server
        self._own_model = model is None
        if model is None:
            model = load_model(serving_model_settings(settings))
        self.service = EncodeService(model, max_request_windows=ms.max_request_windows)
        self.metrics = _metrics()
        from ..hardware import usable_cores

        threads = ms.threads_per_worker
        init = getattr(model, "init_worker", None)
        self.pool: BatchPool[Job, Any] = BatchPool(
            self._run,
            workers=ms.workers,
            max_batch_cost=ms.max_batch_tokens,
            max_wait_ms=ms.max_wait_ms,
            queue_size=ms.queue_size,
            cost=lambda job: job.tokens,
            worker_init=(lambda: init(threads)) if callable(init) else None,
            stall_after_s=max(2 * ms.timeout_s, 5.0),
            name="alknet-modelserver",
            on_batch=self._on_batch,
            # A lone request may use every core; under load each worker keeps its own.
            threads=threads,
            burst_threads=ms.burst_threads or usable_cores(),
            set_threads=init if callable(init) else None,
        )
        self.pool.start()
        self.started = time.time()

    def _run(self, jobs: list[Job]) -> list[Any]:
        """The pool's batch function: one forward pass, timings noted on each job. A failing
        batch is retried request by request: only a request that fails alone gets its error."""
        t0 = time.perf_counter()
        out = self.service.run_each(jobs)
        t1 = time.perf_counter()
        for job in jobs:
            job.extra.update(started=t0, finished=t1, batch=len(jobs))
        return out

    def _on_batch(self, items: int, cost: int, seconds: float) -> None:
        self.metrics["batch_requests"].observe(items)
        self.metrics["batch_tokens"].observe(cost)

    @property
    def max_body_bytes(self) -> int:
        """``model_server.max_body_bytes``, or what the largest valid request takes."""
        return self.service.body_limit(self.settings.model_server.max_body_bytes)

    def describe(self) -> dict[str, Any]:
        ms = self.settings.model_server
        return self.service.describe(
            max_batch_tokens=ms.max_batch_tokens,
            queue_size=ms.queue_size,
            max_body_bytes=self.max_body_bytes,
        )

    def close(self, timeout: float = 10.0) -> None:
        self.pool.close(timeout)
        if self._own_model:
            close = getattr(self.service.model, "close", None)
            if callable(close):
                close()


def create_model_app(
    settings: Settings | dict[str, Any] | None = None, *, server: ModelServer | None = None
) -> Any:
    """The Starlette app: ``GET /v1/describe``, ``GET /v1/tokenizer``, ``POST /v1/encode``,
    ``/healthz``, ``/metrics``. Without ``server`` the lifespan loads the model."""
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ..integrations.bodies import receive_body

    settings = coerce_settings(settings)
    ms = settings.model_server
    timeout_s = ms.timeout_s
    state: dict[str, ModelServer] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        srv = server or await anyio.to_thread.run_sync(ModelServer, settings)
        state["server"] = srv
        try:
            yield
        finally:
            if server is None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(srv.close)

    def _error(
        status: int, code: str, message: str, retry_after: float | None = None, close: bool = False
    ) -> Response:
        headers = {"retry-after": str(max(1, round(retry_after)))} if retry_after else {}
        if close:  # the body was not read whole: end the connection after the answer
            headers["connection"] = "close"
        return Response(wire.error_body(code, message), status, headers, wire.JSON_TYPE)

    async def read_body(request: Request, srv: ModelServer) -> bytes | Response:
        """The body, or a 413/408 answer: a body above the limit is never read whole (a
        declared Content-Length above it is refused before reading any of it)."""
        limit = srv.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _error(413, "input_too_large", f"the body is above {limit} bytes", close=True)
        got = await receive_body(request.receive, max_bytes=limit, timeout_s=ms.body_timeout_s)
        if got.outcome == "ok":
            return got.data
        if got.outcome == "too_large":
            return _error(413, "input_too_large", f"the body is above {limit} bytes", close=True)
        if got.outcome == "timeout":
            return _error(
                408,
                "request_timeout",
                f"the body did not arrive within {ms.body_timeout_s:g} s",
                close=True,
            )
        return Response(status_code=400)  # the client is gone: nobody reads this

    async def describe(request: Request) -> Response:
        return JSONResponse(state["server"].describe())

    async def tokenizer(request: Request) -> Response:
        return Response(state["server"].service.tokenizer, media_type=wire.JSON_TYPE)

    async def encode(request: Request) -> Response:
        srv = state["server"]
        m = srv.metrics
        t0 = time.perf_counter()
        body = await read_body(request, srv)
        if isinstance(body, Response):
            m["requests"].labels(status=str(body.status_code)).inc()
            return body
        try:
            job = (
                srv.service.parse(body)
                if len(body) < 65536
                else await asyncio.to_thread(srv.service.parse, body)
            )
            if not job.windows:
                out = srv.service.body(_empty(job, srv.service.identity["feature_size"]), job)
            else:
                future = srv.pool.submit(job)
                try:
                    feats = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
                except asyncio.TimeoutError:
                    future.cancel()
                    m["requests"].labels(status="504").inc()
                    return _error(504, "screen_timeout", f"encode took over {timeout_s:.1f}s")
                t3 = time.perf_counter()
                x = job.extra
                out = srv.service.body(
                    feats,
                    job,
                    server_ms=round((t3 - t0) * 1000, 3),
                    # where the time went: waiting for a worker, the forward pass, waking up
                    queue_ms=round((x["started"] - t0) * 1000, 3),
                    compute_ms=round((x["finished"] - x["started"]) * 1000, 3),
                    resume_ms=round((t3 - x["finished"]) * 1000, 3),
                    batch_requests=x["batch"],
                )
        except OverloadError as exc:
            m["requests"].labels(status="429").inc()
            return _error(429, exc.code, str(exc), retry_after=exc.retry_after)
        except FirewallClosedError as exc:
            m["requests"].labels(status="503").inc()
            return _error(503, exc.code, str(exc), retry_after=1.0)
        except Exception as exc:
            status, code, message = error_reply(exc)
            m["requests"].labels(status=str(status)).inc()
            return _error(status, code, message)
        finally:
            m["queue"].set(srv.pool.queue_depth())
        m["requests"].labels(status="200").inc()
        m["seconds"].observe(time.perf_counter() - t0)
        return Response(out, media_type=wire.CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        srv = state.get("server")
        if srv is None or srv.pool.closed:
            return JSONResponse({"status": "closed"}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "model": srv.service.identity["name"],
                "weights_digest": srv.service.identity["weights_digest"],
                "queue_depth": srv.pool.queue_depth(),
            }
        )

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        srv = state.get("server")
        if srv is not None:
            srv.metrics["queue"].set(srv.pool.queue_depth())
        return Response(generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

    routes = [
        Route(wire.DESCRIBE_PATH, describe, methods=["GET"]),
        Route(wire.TOKENIZER_PATH, tokenizer, methods=["GET"]),
        Route(wire.ENCODE_PATH, encode, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    keys = server_keys(settings)
    if not keys:
        return app
    from ..integrations.auth import RequireKey

    # /healthz stays open for load balancers (it says no more than the model's name).
    return RequireKey(
        app,
        keys,
        protect=lambda scope: scope.get("path") != "/healthz",
        body_timeout_s=ms.body_timeout_s,
        discard_bytes=64 * 1024,
    )


def server_keys(settings: Settings) -> KeySet:
    """The :class:`~alknet_firewall.integrations.auth.KeySet` of ``model_server.keys`` plus
    ``model_server.keys_file`` (empty: no key needed)."""
    from ..integrations.auth import key_set

    ms = settings.model_server
    return key_set(ms.keys, ms.keys_file, "model_server.keys")


def _empty(job: Job, feature_size: int) -> Any:
    import numpy as np

    from ..features import WindowFeatures

    z = np.zeros(0, dtype=np.int64)
    return WindowFeatures(
        features={k: np.zeros((0, feature_size), np.float32) for k in job.layers},
        text_index=z,
        window_index=z,
        token_start=z,
        n_tokens=z,
        n_texts=job.n_texts,
        is_sub=np.zeros(0, bool),
    )
