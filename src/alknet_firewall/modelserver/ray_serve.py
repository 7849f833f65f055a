"""The activation model as a Ray Serve application (extra ``alknet-firewall[ray]``).

It speaks the same wire protocol as ``model serve`` (:mod:`alknet_firewall.model.wire`) over
Serve's HTTP proxy, so screening processes use ``model.backend: remote`` unchanged and need
neither Ray nor its version. Each replica batches concurrent requests with ``@serve.batch``;
the batch is capped by tokens (``batch_size_fn`` sums each request's tokens against
``ray.max_batch_size``), and ``max_ongoing_requests`` is raised so that batches can grow.
Replicas, autoscaling and ``ray_actor_options`` (CPUs, fractional GPUs) come from ``ray.*``.

Start it with ``alknet-firewall model serve --engine ray`` (see ``docs/deploy/ray.md``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..config import Settings
from ..errors import InputTooLargeError
from ..model import wire
from .service import EncodeService, Job, error_reply, serving_model_settings

__all__ = [
    "APP_NAME",
    "DEPLOYMENT_NAME",
    "ModelDeployment",
    "build_app",
    "serve_forever",
    "start",
]


log = logging.getLogger(__name__)

APP_NAME = "alknet-model"
DEPLOYMENT_NAME = "AlknetModel"


def _tokens(jobs: list[Job]) -> int:
    return sum(job.tokens for job in jobs)


@serve.deployment(name=DEPLOYMENT_NAME)
class ModelDeployment:
    """One model replica: the wire protocol's endpoints, one forward pass per batch."""

    def __init__(self, settings_json: str) -> None:
        from ..model import load_model

        self.settings = Settings.model_validate_json(settings_json)
        r = self.settings.ray
        model = load_model(serving_model_settings(self.settings))
        init = getattr(model, "init_worker", None)
        if callable(init):
            init(max(1, int(r.num_cpus)) if r.num_cpus >= 1 else 1)
        self.service = EncodeService(
            model, max_request_windows=self.settings.model_server.max_request_windows
        )
        self.max_tokens = r.max_batch_size
        from .app import server_keys

        self.keys = server_keys(self.settings)
        self.max_body_bytes = self.service.body_limit(self.settings.model_server.max_body_bytes)
        self._encode_batch.set_max_batch_size(r.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(r.batch_wait_timeout_s)
        self.batches = 0
        self.batched_requests = 0
        self.max_batch_requests = 0

    @serve.batch(max_batch_size=4096, batch_wait_timeout_s=0.0005, batch_size_fn=_tokens)
    async def _encode_batch(self, jobs: list[Job]) -> list[Any]:
        self.batches += 1
        self.batched_requests += len(jobs)
        self.max_batch_requests = max(self.max_batch_requests, len(jobs))
        # A failing batch is retried request by request: only a request that fails alone
        # gets its error, never the other clients' requests batched with it.
        out = await asyncio.to_thread(self.service.run_each, jobs)
        return [f if isinstance(f, BaseException) else (f, len(jobs)) for f in out]

    async def _encode(self, job: Job) -> Any:
        if job.tokens > self.max_tokens:
            # Larger than a whole batch: @serve.batch would refuse it; run it on its own.
            try:
                return (await asyncio.to_thread(self.service.run, [job]))[0], 1
            except Exception as exc:
                return exc
        return await self._encode_batch(job)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        if self.keys and not path.endswith("/healthz") and not self.keys.allows(request.scope):
            body = wire.error_body(
                "invalid_api_key",
                "send 'Authorization: Bearer <key>' with one of model_server.keys "
                "(model.remote.key on the screening side)",
            )
            return Response(body, 401, media_type=wire.JSON_TYPE)
        if request.method == "GET":
            if path.endswith(wire.DESCRIBE_PATH):
                return JSONResponse(
                    self.service.describe(
                        max_batch_tokens=self.max_tokens, engine="ray", replica=_replica_id()
                    )
                )
            if path.endswith(wire.TOKENIZER_PATH):
                return Response(self.service.tokenizer, media_type=wire.JSON_TYPE)
            if path.endswith("/healthz"):
                return JSONResponse(
                    {
                        "status": "ok",
                        "replica": _replica_id(),
                        "batches": self.batches,
                        "mean_batch_requests": self.batched_requests / max(1, self.batches),
                        "max_batch_requests": self.max_batch_requests,
                    }
                )
        if request.method == "POST" and path.endswith(wire.ENCODE_PATH):
            t0 = time.perf_counter()
            try:
                raw = await request.body()
                if len(raw) > self.max_body_bytes:
                    raise InputTooLargeError(f"the body is above {self.max_body_bytes} bytes")
                job = self.service.parse(raw)
            except Exception as exc:
                return _error(exc)
            result = await self._encode(job)
            if isinstance(result, BaseException):
                return _error(result)
            feats, batch = result
            body = self.service.body(
                feats,
                job,
                server_ms=round((time.perf_counter() - t0) * 1000, 3),
                batch_requests=batch,
            )
            return Response(body, media_type=wire.CONTENT_TYPE)
        body = wire.error_body("not_found", f"no route {request.method} {path[:200]}")
        return Response(body, 404, media_type=wire.JSON_TYPE)


def _replica_id() -> str | None:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # pragma: no cover - outside a replica
        return None


def _error(exc: BaseException) -> Response:
    status, code, message = error_reply(exc)
    return Response(wire.error_body(code, message), status, media_type=wire.JSON_TYPE)


def build_app(settings: Settings) -> Any:
    """The bound Serve application for these settings."""
    r = settings.ray
    opts: dict[str, Any] = {
        "max_ongoing_requests": r.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus},
    }
    if r.autoscaling:
        opts["autoscaling_config"] = {
            "min_replicas": r.min_replicas,
            "max_replicas": r.max_replicas,
            "target_ongoing_requests": r.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = r.num_replicas
    return ModelDeployment.options(**opts).bind(settings.model_dump_json())


def start(settings: Settings, *, init: bool = True) -> Any:
    """Connect to (or start) Ray, start Serve's HTTP proxy and run the application; returns
    the deployment handle. ``serve.shutdown()`` stops it."""
    import ray

    r = settings.ray
    if init and not ray.is_initialized():
        from .ray_init import init_ray

        init_ray(r)
    serve.start(http_options={"host": r.http_host, "port": r.http_port})
    return serve.run(build_app(settings), name=APP_NAME, route_prefix="/")


def serve_forever(settings: Settings) -> int:
    """``alknet-firewall model serve --engine ray``: run until SIGINT/SIGTERM (also during
    start-up), then stop Serve (and the local Ray it started)."""
    import ray

    started_ray = not ray.is_initialized() and not settings.ray.address
    stop = threading.Event()

    def trap() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    trap()
    try:
        start(settings)
        trap()  # Ray may have installed its own handlers while it started
        r = settings.ray
        replicas = f"{r.min_replicas}..{r.max_replicas}" if r.autoscaling else r.num_replicas
        sys.stderr.write(
            f"alknet-firewall model server (Ray Serve) on http://{r.http_host}:{r.http_port} "
            f"({replicas} replicas, {r.num_cpus} CPU / {r.num_gpus} GPU each)\n"
        )
        sys.stderr.flush()
        while not stop.wait(1.0):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()
    return 0
