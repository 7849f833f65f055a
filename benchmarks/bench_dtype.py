"""Sections ``dtype`` and ``cores``: the torch backend in float32 and bfloat16 at 1 and 2 threads,
what ``model.dtype: auto`` picks on this machine, and the pool's lone-request burst (all cores
when idle, one core per worker under load) at 1 and 32 clients."""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks.bench_screen import closed_loop
from benchmarks.harness import Context, log, section, summarize, time_loop
from benchmarks.schema import Results, Target

TOKENS = 64


def settings(
    *,
    dtype: str = "auto",
    workers: int = 1,
    threads: int = 1,
    burst: int | None = None,
    onnx: dict[str, Any] | None = None,
    **model: Any,
) -> Any:
    """Settings for one configuration: ``threads`` is the torch threads per worker and, for the
    onnx backend, ``model.onnx.threads`` (its session's pool) unless ``onnx`` sets them;
    ``burst`` 0 means the default."""
    from alknet_firewall.config import load_settings

    pool: dict[str, Any] = {
        "workers": workers,
        "threads_per_worker": threads,
        "cache_size": 0,
        "burst_threads": burst if burst is not None else threads,
    }
    if burst == 0:  # 0: the default (every usable core)
        pool.pop("burst_threads")
    elif model.get("backend") == "onnx":
        onnx = {"threads": threads, **(onnx or {})}
    if onnx:
        model["onnx"] = onnx
    return load_settings(None, model={"dtype": dtype, **model}, pool=pool)


def p50_screen(fw: Any, msgs: list[str], ctx: Context) -> dict[str, Any]:
    def call(i: int) -> None:
        fw.screen(msgs[i % len(msgs)])

    ms = time_loop(
        call,
        warmup=ctx.prof.warmup + 2,
        min_n=ctx.prof.lat_min,
        max_n=ctx.prof.lat_max,
        budget_s=ctx.prof.lat_budget_s / 2,
    )
    return summarize(ms)


def clients(fw: Any, msgs: list[str], n: int, duration_s: float) -> dict[str, Any]:
    async def send(k: int) -> str:
        v = await fw.ascreen(msgs[k % len(msgs)])
        return "error" if v.error else "ok"

    before = fw.pool.stats()
    r = asyncio.run(closed_loop(send, n, duration_s))
    after = fw.pool.stats()
    batches = after.batches - before.batches
    r["mean_batch_size"] = (after.items - before.items) / batches if batches else 0.0
    r["burst_batches"] = after.burst_batches - before.burst_batches
    r["batches"] = batches
    return r


@section("dtype", phase="model", order=64, render=lambda r: _render_dtype(r))
def _dtype(ctx: Context) -> dict[str, Any]:
    from alknet_firewall.firewall import Firewall

    msgs = ctx.msgs_by_len[TOKENS]
    rows = []
    auto: dict[str, Any] = {}
    for dtype in ("float32", "bfloat16"):
        for threads in (1, 2):
            fw = Firewall(settings(dtype=dtype, threads=threads))
            try:
                st = p50_screen(fw, msgs, ctx)
            finally:
                fw.close()
            rows.append({"backend": "torch", "dtype": dtype, "threads": threads, **st})
            log(f"   torch {dtype} x{threads}: p50 {st['p50']:.1f} ms")
    fw = Firewall(settings(dtype="auto"))
    try:
        info = fw.model.describe()
        auto = {k: info.get(k) for k in ("dtype", "dtype_reason", "dtype_float32_ms",
                                         "dtype_bfloat16_ms")}  # fmt: skip
    finally:
        fw.close()
    log(f"   dtype auto -> {auto}")
    return {"tokens": TOKENS, "rows": rows, "auto": auto}


@section(
    "cores",
    phase="model",
    order=65,
    render=lambda r: _render_cores(r),
    targets=lambda r: cores_targets(r),
)
def _cores(ctx: Context) -> dict[str, Any]:
    """Default pool with the lone-request burst on and off: 1 and 32 clients."""
    from alknet_firewall.firewall import Firewall
    from alknet_firewall.hardware import usable_cores

    cores = usable_cores()
    msgs = ctx.msgs64 or ctx.msgs_by_len[TOKENS]
    duration = ctx.prof.duration_s / 2
    out: dict[str, Any] = {"cores": cores, "rows": []}
    base = Firewall(settings(workers=cores, threads=1, burst=0))
    try:
        variants = [("burst on (default)", base)]
        off = Firewall(settings(workers=cores, threads=1, burst=1), model=base.model,
                       codebook=base.codebook)  # fmt: skip
        variants.append(("burst off", off))
        for label, fw in variants:
            lone = p50_screen(fw, ctx.msgs_by_len[TOKENS], ctx)
            row = {"pool": label, "workers": cores, "screen": lone}
            for c in (1, 32):
                row[f"clients_{c}"] = clients(fw, msgs, c, duration)
            log(
                f"   {label}: screen p50 {lone['p50']:.1f} ms, 1 client "
                f"{row['clients_1']['msg_per_s']:.1f} msg/s, 32 clients "
                f"{row['clients_32']['msg_per_s']:.1f} msg/s"
            )
            out["rows"].append(row)
        off.close()
    finally:
        base.close()
    return out


def _render_dtype(results: Results) -> list[str]:
    r: dict[str, Any] = results.get("dtype")  # type: ignore[assignment]
    if not r:
        return []
    onnx = results.get("onnx", {})  # type: ignore[call-overload]
    rows = r["rows"] + (onnx.get("rows", []) if onnx else [])
    from benchmarks.targets import _deb

    deb2 = _deb(results, "xsmall", "float32", 2, TOKENS)
    deb1 = _deb(results, "xsmall", "float32", 1, TOKENS)
    table = []
    for x in rows:
        deb = deb2 if x["threads"] == 2 else deb1
        ratio = f"{x['p50'] / deb:.2f}×" if deb else "–"
        table.append(
            f"| {x['backend']} | {x['dtype']} | {x['threads']} | {x['n']} | {x['p50']:.1f} "
            f"| {x['p95']:.1f} | {ratio} |"
        )
    a = r.get("auto") or {}
    lines = [
        f"## Backends and dtypes (`screen`, {TOKENS} tokens, one request at a time)",
        "",
        "Pool 1 worker × T threads, cache off; ratio: p50 / DeBERTa-v3-xsmall float32 forward "
        "at the same thread count (baselines). `model.dtype: auto` chose "
        f"**{a.get('dtype')}** here ({a.get('dtype_reason')}; one-layer micro-benchmark "
        f"float32 {a.get('dtype_float32_ms')} ms vs bfloat16 {a.get('dtype_bfloat16_ms')} ms).",
        "",
        "| backend | dtype | threads | n | p50 ms | p95 ms | vs xsmall fp32 |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
    ]
    return lines


def _render_cores(results: Results) -> list[str]:
    r: dict[str, Any] = results.get("cores")  # type: ignore[assignment]
    if not r:
        return []
    rows = []
    for x in r["rows"]:
        c1, c32 = x["clients_1"], x["clients_32"]
        rows.append(
            f"| {x['pool']} | {x['screen']['p50']:.1f} | {c1['msg_per_s']:.1f} | {c1['p50']:.1f} "
            f"| {c1['burst_batches']}/{c1['batches']} | {c32['msg_per_s']:.1f} | {c32['p50']:.0f} "
            f"| {c32['burst_batches']}/{c32['batches']} |"
        )
    return [
        f"## All cores for a lone request (pool {r['cores']}×1, {TOKENS} tokens, `ascreen`)",
        "",
        "Burst on: a batch that finds the queue empty and every other worker idle runs with "
        "all cores (`pool.burst_threads`, default every usable core); under load each worker "
        "keeps one. Burst batches: batches run with all cores / all batches.",
        "",
        "| pool | screen p50 ms | 1 client msg/s | p50 | burst | 32 clients msg/s | p50 | burst |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _t(target: str, measured: str, bound: str, met: bool | None, note: str = "") -> Target:
    return {"target": target, "measured": measured, "bound": bound, "met": met, "note": note}


def cores_targets(results: Results) -> list[Target]:
    """Issue 15's targets that these sections measure (same run, same machine, defaults)."""
    from benchmarks.targets import _deb

    out: list[Target] = []
    r: dict[str, Any] = results.get("cores")  # type: ignore[assignment]
    if not r or len(r.get("rows", [])) < 2:
        return out
    on, off = r["rows"][0], r["rows"][1]
    cores = r["cores"]
    deb = _deb(results, "xsmall", "float32", cores, TOKENS)
    if deb:
        ours = on["screen"]["p50"]
        out.append(
            _t(
                f"screen p50 @{TOKENS} tok (defaults) ≤ 0.5 × DeBERTa-v3-xsmall float32 forward, "
                f"{cores} threads",
                f"{ours:.1f} ms vs {deb:.1f} ms ({ours / deb:.2f}×)",
                "≤ 0.50×",
                ours <= 0.5 * deb,
                "CPU without AMX",
            )
        )
    a, b = on["clients_32"]["msg_per_s"], off["clients_32"]["msg_per_s"]
    out.append(
        _t(
            "ascreen 32 clients ≥ 1.5 × the previous defaults (no burst, same dtype here)",
            f"{a:.1f} vs {b:.1f} msg/s ({a / b:.2f}×)",
            "≥ 1.50×",
            a >= 1.5 * b,
        )
    )
    return out


def onnx_targets(results: Results) -> list[Target]:
    out: list[Target] = []
    rss = results.get("rss")
    if rss:
        out.append(
            _t(
                "peak RSS with torch ≤ 800 MiB",
                f"{rss['peak_rss_mib']:.0f} MiB",
                "≤ 800 MiB",
                rss["peak_rss_mib"] <= 800,
            )
        )
    proc: dict[str, Any] = results.get("onnx_process")  # type: ignore[assignment]
    for precision, d in (proc or {}).items():
        out.append(
            _t(
                f"peak RSS with ONNX Runtime ({precision}) ≤ 500 MiB",
                f"{d['peak_rss_mib']:.0f} MiB",
                "≤ 500 MiB",
                d["peak_rss_mib"] <= 500,
            )
        )
        out.append(
            _t(
                f"cold start to first verdict, ONNX Runtime ({precision}), warm cache ≤ 3 s",
                f"{d['process_to_first_verdict_s']:.2f} s",
                "≤ 3 s",
                d["process_to_first_verdict_s"] <= 3.0,
            )
        )
    cold: dict[str, Any] = results.get("coldstart") or {}  # type: ignore[assignment]
    first = (cold.get("script") or {}).get("to_first_verdict_s")
    if first:
        out.append(
            _t(
                "cold start to first verdict, torch, warm cache ≤ 3 s",
                f"{first:.2f} s",
                "≤ 3 s",
                first <= 3.0,
            )
        )
    return out
