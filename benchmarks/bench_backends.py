"""Section ``backends``: screening latency and throughput with the model in this process
(``local``), behind ``alknet-firewall model serve`` (``remote``) and behind a Ray Serve
deployment (``ray``), at 1/8/32/128 concurrent clients; the latency each hop adds over ``local``
at one client (target <= 2 ms p50 on loopback) and the batch sizes reached.

Every backend gets the same CPU: a 2×1 local pool; a model server with 2 workers × 1 thread;
one Ray replica with 2 CPUs (one batch at a time, 2 torch threads). Screening clients run in
this process (``Firewall.ascreen``; the remote backends' pools only wait on HTTP). The Ray part
is skipped when the ``ray`` extra is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx

from benchmarks.bench_screen import closed_loop
from benchmarks.harness import Context, cli_command, log, section, summarize, time_loop

CLIENTS = (1, 8, 32, 128)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


@contextlib.contextmanager
def model_server(workers: int, threads: int) -> Iterator[tuple[str, int]]:
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "ALKNET_FIREWALL_MODEL_SERVER__WORKERS": str(workers),
            "ALKNET_FIREWALL_MODEL_SERVER__THREADS_PER_WORKER": str(threads),
            "ALKNET_FIREWALL_MODEL_SERVER__QUEUE_SIZE": "1024",
        }
    )
    cmd = [*cli_command(), "model", "serve", "--port", str(port)]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(url + "/healthz", proc, 300)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def ray_server(cpus: int) -> Iterator[str]:
    import ray
    from ray import serve

    from alknet_firewall.config import load_settings
    from alknet_firewall.modelserver import ray_serve

    port = _free_port()
    ray.init(
        num_cpus=cpus,
        object_store_memory=300 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        settings = load_settings(None, ray={"num_cpus": cpus, "http_port": port})
        ray_serve.start(settings, init=False)
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/healthz", None, 300)
        yield url
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _firewall(url: str | None) -> Any:
    from alknet_firewall.config import load_settings
    from alknet_firewall.firewall import Firewall

    model: dict[str, Any] = {}
    pool: dict[str, Any] = {"workers": 2, "threads_per_worker": 1, "cache_size": 0}
    if url is not None:
        model = {"backend": "remote", "remote": {"url": url, "connections": 64}}
        # Pool workers of a remote backend only wait on HTTP: enough to keep the server fed.
        pool = {"workers": 8, "cache_size": 0}
    return Firewall(load_settings(None, model=model, pool=pool))


def _measure(
    fw: Any, msgs: list[str], ctx: Context, server_pid: int | None = None
) -> dict[str, Any]:
    """Sequential latency, then closed loops at :data:`CLIENTS`; with ``server_pid``, the CPU
    each side spent per message at 32 clients (how many screening cores one model core
    feeds)."""
    import psutil

    prof = ctx.prof
    lat = time_loop(
        lambda i: fw.screen(msgs[i % len(msgs)]),
        warmup=prof.warmup + 2,
        min_n=max(5, prof.lat_min),
        max_n=prof.lat_max,
        budget_s=prof.lat_budget_s,
    )
    res: dict[str, Any] = {"sequential": summarize(lat), "clients": {}}
    for clients in CLIENTS:

        async def send(k: int) -> str:
            return str((await fw.ascreen(msgs[k % len(msgs)])).action)

        me = psutil.Process()
        srv = psutil.Process(server_pid) if server_pid else None
        c0 = sum(me.cpu_times()[:2])
        s0 = sum(srv.cpu_times()[:2]) if srv else 0.0
        r = asyncio.run(closed_loop(send, clients, prof.duration_s))
        if r["completed"]:
            r["client_cpu_ms_per_msg"] = (sum(me.cpu_times()[:2]) - c0) * 1000 / r["completed"]
            if srv is not None:
                r["server_cpu_ms_per_msg"] = (sum(srv.cpu_times()[:2]) - s0) * 1000 / r["completed"]
        res["clients"][str(clients)] = r
    stats = fw.pool.stats()
    res["client_pool_mean_batch"] = stats.mean_batch_size
    res["client_pool_max_batch"] = stats.max_batch_items
    return res


def _server_batches(url: str) -> dict[str, Any]:
    """Batch sizes the server reached (model serve: /metrics histogram; Ray: /healthz)."""
    out: dict[str, Any] = {}
    with contextlib.suppress(httpx.HTTPError, ValueError):
        h = httpx.get(url + "/healthz", timeout=5).json()
        if "mean_batch_requests" in h:
            out = {
                "mean_requests": h["mean_batch_requests"],
                "max_requests": h["max_batch_requests"],
            }
    with contextlib.suppress(httpx.HTTPError):
        text = httpx.get(url + "/metrics", timeout=5).text
        s = re.search(r"^alknet_modelserver_batch_requests_sum (\S+)", text, re.M)
        c = re.search(r"^alknet_modelserver_batch_requests_count (\S+)", text, re.M)
        if s and c and float(c.group(1)):
            out["mean_requests"] = float(s.group(1)) / float(c.group(1))
            out["batches"] = float(c.group(1))
            buckets = re.findall(
                r'^alknet_modelserver_batch_requests_bucket\{le="([^"]+)"\} (\S+)', text, re.M
            )
            total = float(c.group(1))
            out["max_requests_le"] = next((le for le, n in buckets if float(n) >= total), "+Inf")
    return out


def _wire_us() -> dict[str, float]:
    """In-process cost of the protocol for one 64-token window (encode + parse both ways)."""
    import numpy as np

    from alknet_firewall.features import Window, WindowFeatures
    from alknet_firewall.model import wire

    win = [Window(0, 0, 0, list(range(1000, 1064)))]
    feats = WindowFeatures(
        features={8: np.random.default_rng(0).standard_normal((1, 576)).astype(np.float32)},
        text_index=np.zeros(1, np.int64),
        window_index=np.zeros(1, np.int64),
        token_start=np.zeros(1, np.int64),
        n_tokens=np.full(1, 64, np.int64),
        n_texts=1,
        is_sub=np.zeros(1, bool),
    )
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        wire.decode_request(wire.encode_request(win, 1, layers=[8]))
        wire.features_from_body(wire.encode_features(feats, [8]), WindowFeatures)
    return {"roundtrip_us": (time.perf_counter() - t) / n * 1e6}


def _render(results: Any) -> list[str]:
    res = results.get("backends")
    if not res:
        return []
    lines = [
        "### Backends: local, remote (`model serve`), Ray Serve",
        "",
        "Same 2 cores for the model in each case (local pool 2×1; model server 2 workers × 1 "
        "thread; one Ray replica with 2 CPUs); 64-token messages; clients in the benchmark "
        "process. p50 / p95 in ms, msg/s.",
        "",
        "| backend | 1 client p50 | added p50 | "
        + " | ".join(f"{c} clients" for c in CLIENTS)
        + " | server batch (mean requests) |",
        "|---|---|---|" + "---|" * len(CLIENTS) + "---|",
    ]
    base = res.get("local", {}).get("sequential", {}).get("p50")
    for name in ("local", "remote", "ray"):
        r = res.get(name)
        if not r or "sequential" not in r:
            continue
        p50 = r["sequential"]["p50"]
        added = "–" if name == "local" or base is None else f"{p50 - base:+.1f}"
        cells = []
        for c in CLIENTS:
            x = r["clients"][str(c)]
            cells.append(f"{x['msg_per_s']:.1f}/s, {x.get('p50', 0):.0f}/{x.get('p95', 0):.0f}")
        batch = r.get("server_batches", {}).get("mean_requests")
        where = f"{batch:.1f}" if batch else f"client pool {r['client_pool_mean_batch']:.1f}"
        lines.append(f"| {name} | {p50:.1f} | {added} | " + " | ".join(cells) + f" | {where} |")
    at32 = res.get("remote", {}).get("clients", {}).get("32", {})
    if "server_cpu_ms_per_msg" in at32:
        c, m = at32["client_cpu_ms_per_msg"], at32["server_cpu_ms_per_msg"]
        lines += [
            "",
            f"CPU per message at 32 clients: screening process {c:.1f} ms, model server "
            f"{m:.1f} ms, so one screening core keeps about {m / c:.1f} model-server cores busy.",
        ]
    if "wire" in res:
        lines += [
            "",
            f"Protocol cost in-process (one 64-token window, both directions): "
            f"{res['wire']['roundtrip_us']:.0f} µs.",
        ]
    return [*lines, ""]


@section("backends", phase="process", order=95, meter=None, render=_render)
def _backends(ctx: Context) -> dict[str, Any]:
    msgs = ctx.msgs64
    out: dict[str, Any] = {"wire": _wire_us()}
    with ctx.meter.section("backends.local"):
        log("backends: local 2×1")
        fw = _firewall(None)
        try:
            out["local"] = _measure(fw, msgs, ctx)
        finally:
            fw.close()
    with ctx.meter.section("backends.remote"), model_server(2, 1) as (url, pid):
        log(f"backends: remote -> model serve at {url}")
        fw = _firewall(url)
        try:
            out["remote"] = _measure(fw, msgs, ctx, server_pid=pid)
        finally:
            fw.close()
        out["remote"]["server_batches"] = _server_batches(url)
    try:
        import ray
        import ray.serve  # noqa: F401
    except ImportError:
        out["ray"] = {"skipped": "the ray extra is not installed"}
        return out
    with ctx.meter.section("backends.ray"), ray_server(2) as url:
        log(f"backends: ray serve at {url}")
        fw = _firewall(url)
        try:
            out["ray"] = _measure(fw, msgs, ctx)
        finally:
            fw.close()
        out["ray"]["server_batches"] = _server_batches(url)
    for name in ("remote", "ray"):
        if "sequential" in out.get(name, {}):
            out[name]["added_p50_ms"] = (
                out[name]["sequential"]["p50"] - out["local"]["sequential"]["p50"]
            )
    return out
