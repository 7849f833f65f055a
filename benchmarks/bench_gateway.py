"""Section 5: ``alknet-firewall serve`` over real HTTP, in front of ``fake_upstream`` (both
subprocesses on loopback): added latency and throughput with concurrent httpx clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.bench_screen import closed_loop
from benchmarks.harness import (
    CONCURRENCY,
    ROOT,
    Context,
    Profile,
    cli_command,
    log,
    pool_label,
    section,
    summarize,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0, trust_env=False).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


@contextlib.contextmanager
def gateway_servers(workers: int, threads: int, logdir: Path) -> Iterator[dict[str, Any]]:
    """Fake upstream and ``alknet-firewall serve`` in front of it, as subprocesses."""
    up_port, gw_port = _free_port(), _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    env.update(
        {
            "ALKNET_FIREWALL_POOL__WORKERS": str(workers),
            "ALKNET_FIREWALL_POOL__THREADS_PER_WORKER": str(threads),
            "ALKNET_FIREWALL_POOL__CACHE_SIZE": "0",
        }
    )
    try:
        with (logdir / "upstream.log").open("wb") as up_log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.fake_upstream", str(up_port)],
                    stdout=up_log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            )
        upstream = f"http://127.0.0.1:{up_port}/v1"
        _wait_ready(upstream + "/models", procs[0], 60)
        t0 = time.perf_counter()
        cmd = [*cli_command(), "serve", "--upstream", upstream, "--port", str(gw_port)]
        cmd += ["--host", "127.0.0.1", "--log-level", "warning"]
        with (logdir / "gateway.log").open("wb") as gw_log:
            procs.append(subprocess.Popen(cmd, stdout=gw_log, stderr=subprocess.STDOUT, env=env))
        base = f"http://127.0.0.1:{gw_port}"
        _wait_ready(base + "/healthz", procs[1], 300)
        yield {
            "upstream": upstream,
            "gateway": base + "/v1",
            "gateway_pid": procs[1].pid,
            "startup_s": time.perf_counter() - t0,
        }
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def _chat(msg: str) -> dict[str, Any]:
    return {"model": "bench", "messages": [{"role": "user", "content": msg}]}


def bench_gateway(fw: Any, msgs: list[str], prof: Profile) -> dict[str, Any]:
    import httpx
    import psutil

    workers = fw.settings.pool.workers
    threads = fw.settings.pool.threads_per_worker
    res: dict[str, Any] = {"pool": pool_label(workers, threads)}
    with (
        tempfile.TemporaryDirectory(prefix="alknet-bench-") as tmp,
        gateway_servers(workers, threads, Path(tmp)) as srv,
    ):
        res["gateway_startup_s"] = srv["startup_s"]
        gw_url = srv["gateway"] + "/chat/completions"
        up_url = srv["upstream"] + "/chat/completions"

        async def run_all() -> None:
            limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
            async with httpx.AsyncClient(timeout=120.0, limits=limits, trust_env=False) as client:
                # Added latency: one request at a time, the three paths interleaved in rounds.
                for i in range(3):  # warm connections and the gateway's workers
                    await client.post(gw_url, json=_chat(msgs[i]))
                    await client.post(up_url, json=_chat(msgs[i]))
                lat: dict[str, list[float]] = {"upstream": [], "ascreen": [], "gateway": []}
                statuses: Counter[str] = Counter()
                rounds = 5
                per = max(1, prof.gw_latency_n // rounds)
                k = 0
                for _ in range(rounds):
                    for _ in range(per):
                        t = time.perf_counter()
                        await client.post(up_url, json=_chat(msgs[k % len(msgs)]))
                        lat["upstream"].append((time.perf_counter() - t) * 1000.0)
                        k += 1
                    for _ in range(per):
                        t = time.perf_counter()
                        await fw.ascreen(_chat(msgs[k % len(msgs)])["messages"])
                        lat["ascreen"].append((time.perf_counter() - t) * 1000.0)
                        k += 1
                    for _ in range(per):
                        t = time.perf_counter()
                        r = await client.post(gw_url, json=_chat(msgs[k % len(msgs)]))
                        lat["gateway"].append((time.perf_counter() - t) * 1000.0)
                        statuses[str(r.status_code)] += 1
                        k += 1
                res["added_latency"] = {key: summarize(v) for key, v in lat.items()}
                res["added_latency"]["gateway_statuses"] = dict(statuses)

                async def send(k: int) -> str:
                    r = await client.post(gw_url, json=_chat(msgs[k % len(msgs)]))
                    return str(r.status_code)

                me = psutil.Process()
                levels = []
                for c in CONCURRENCY:
                    c0 = me.cpu_times()
                    r = await closed_loop(send, c, prof.duration_s)
                    c1 = me.cpu_times()
                    r["client_cpu_cores"] = ((c1.user - c0.user) + (c1.system - c0.system)) / r[
                        "wall_s"
                    ]
                    levels.append(r)
                    log(
                        f"   gateway x{c}: {r['msg_per_s']:.1f} req/s, p50 {r['p50']:.0f} ms, "
                        f"p99 {r['p99']:.0f} ms, {r['outcomes']}"
                    )
                res["http"] = levels

        asyncio.run(run_all())
        with contextlib.suppress(psutil.Error):
            res["gateway_rss_mib"] = psutil.Process(srv["gateway_pid"]).memory_info().rss / 2**20
    a = res["added_latency"]
    log(
        f"   p50 upstream {a['upstream']['p50']:.2f} ms, ascreen {a['ascreen']['p50']:.1f} ms, "
        f"gateway {a['gateway']['p50']:.1f} ms"
    )
    return res


@section("gateway", phase="firewall", order=50)
def _gateway(ctx: Context) -> dict[str, Any]:
    return bench_gateway(ctx.firewall, ctx.msgs64, ctx.prof)
