"""Sections 1–4, in process: ``Firewall.screen`` latency per length, where the time goes,
throughput with concurrent clients, and the multi-turn cache."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.harness import (
    CONCURRENCY,
    Context,
    Profile,
    has_seams,
    log,
    make_firewall,
    pool_label,
    section,
    summarize,
    time_loop,
)


# --------------------------------------------------------------------------------------------
# 1. screen() latency per length
# --------------------------------------------------------------------------------------------
def bench_screen_latency(
    fw: Any, msgs_by_len: dict[int, list[str]], prof: Profile
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for n, msgs in msgs_by_len.items():
        errors: list[str] = []

        def call(i: int, msgs: list[str] = msgs, errors: list[str] = errors) -> None:
            v = fw.screen(msgs[i % len(msgs)])
            if v.error:
                errors.append(v.error)

        long = n >= 4096
        ms = time_loop(
            call,
            warmup=1 if long else prof.warmup,
            min_n=prof.long_min if long else prof.lat_min,
            max_n=prof.lat_max,
            budget_s=prof.lat_budget_s,
        )
        out[str(n)] = {**summarize(ms), "errors": len(errors)}
        log(f"   screen {n:5d} tok: p50 {out[str(n)]['p50']:.1f} ms (n={len(ms)})")
    return out


# --------------------------------------------------------------------------------------------
# 2. Where the time goes (64 tokens)
# --------------------------------------------------------------------------------------------
def bench_breakdown(fw: Any, msgs: list[str], n: int, warmup: int) -> dict[str, Any]:
    """Each stage of screening one message, timed directly on this thread with the pool's
    torch thread count (what one pool worker does, minus the queue), interleaved with a whole
    ``fw.screen()`` of the same message so that ``rest`` compares like with like."""
    import torch

    from alknet_firewall.normalize import normalize

    m = fw.model
    threads = fw.settings.pool.threads_per_worker
    me = threading.get_ident()
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    fwd_start: list[float] = []
    fwd_ms: list[float] = []
    handles = []
    inner = getattr(m, "_model", None)

    def pre(*_: Any) -> None:
        if threading.get_ident() == me:
            fwd_start.append(time.perf_counter())

    def post(*_: Any) -> None:
        if threading.get_ident() == me:
            fwd_ms.append((time.perf_counter() - fwd_start[-1]) * 1000.0)

    if inner is not None:
        handles = [inner.register_forward_pre_hook(pre), inner.register_forward_hook(post)]
    keys = ("normalize", "tokenize", "windows", "encode", "score", "screen")
    stages: dict[str, list[float]] = {k: [] for k in keys}
    try:
        for i in range(warmup + n):
            text = msgs[i % len(msgs)]
            t0 = time.perf_counter()
            x = normalize(text)
            t1 = time.perf_counter()
            ids = m.tokenize([x])
            t2 = time.perf_counter()
            wins = m.windows(ids)
            t3 = time.perf_counter()
            feats = m.encode_token_windows(wins, 1)
            t4 = time.perf_counter()
            fw.scorer.score_features(feats)
            t5 = time.perf_counter()
            fw.screen(text)
            t6 = time.perf_counter()
            if i >= warmup:
                for k, a, b in zip(
                    keys, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6), strict=True
                ):
                    stages[k].append((b - a) * 1000.0)
    finally:
        for h in handles:
            h.remove()
        torch.set_num_threads(prev)
    out = {k: summarize(v) for k, v in stages.items()}
    if fwd_ms:
        out["forward"] = summarize(fwd_ms[-n:])
    out["pool"] = pool_label(fw.settings.pool.workers, threads)
    return out


# --------------------------------------------------------------------------------------------
# 3. Throughput (closed-loop clients)
# --------------------------------------------------------------------------------------------
async def closed_loop(
    send: Callable[[int], Any], clients: int, duration_s: float
) -> dict[str, Any]:
    """``clients`` tasks, each sending one request after another until ``duration_s``."""
    lat: list[float] = []
    outcomes: Counter[str] = Counter()
    t0 = time.perf_counter()
    stop = t0 + duration_s

    async def client(c: int) -> None:
        k = c
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                outcomes[str(await send(k))] += 1
            except Exception as exc:  # recorded, not fatal: overload is a result too
                outcomes[type(exc).__name__] += 1
            lat.append((time.perf_counter() - t) * 1000.0)
            k += clients

    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "completed": len(lat),
        "wall_s": wall,
        "msg_per_s": len(lat) / wall,
        **summarize(lat),
        "outcomes": dict(outcomes),
    }


def bench_throughput(fw: Any, msgs: list[str], prof: Profile) -> dict[str, Any]:
    res: dict[str, Any] = {}
    # One at a time: sequential synchronous screen() calls.
    n_done = 0
    lat: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < prof.duration_s:
        t = time.perf_counter()
        fw.screen(msgs[n_done % len(msgs)])
        lat.append((time.perf_counter() - t) * 1000.0)
        n_done += 1
    wall = time.perf_counter() - t0
    res["sequential"] = {"completed": n_done, "wall_s": wall, "msg_per_s": n_done / wall}
    res["sequential"].update(summarize(lat))
    log(f"   one at a time: {n_done / wall:.1f} msg/s")

    async def send(k: int) -> str:
        v = await fw.ascreen(msgs[k % len(msgs)])
        return "error" if v.error else "ok"

    levels = []
    for c in CONCURRENCY:
        before = fw.pool.stats()
        r = asyncio.run(closed_loop(send, c, prof.duration_s))
        after = fw.pool.stats()
        batches = after.batches - before.batches
        r["mean_batch_size"] = (after.items - before.items) / batches if batches else 0.0
        r["rejected"] = after.rejected - before.rejected
        levels.append(r)
        log(
            f"   ascreen x{c}: {r['msg_per_s']:.1f} msg/s, p50 {r['p50']:.0f} ms, "
            f"p99 {r['p99']:.0f} ms, batch {r['mean_batch_size']:.2f}"
        )
    res["ascreen"] = levels
    return res


# --------------------------------------------------------------------------------------------
# 4. Multi-turn cache
# --------------------------------------------------------------------------------------------
def _conversations(
    fw_cache: Any, fw_nocache: Any, msgs: list[str], replies: list[str], prof: Profile, turns: int
) -> dict[str, Any]:
    rows: dict[str, list[float]] = {
        "turn1_cache": [],
        "turn20_cache": [],
        "turn20_nocache": [],
        "turn1_nocache": [],
    }
    items: dict[str, list[int]] = {"turn20_cache": [], "turn20_nocache": []}
    cached_ok = True
    u = r = 0
    for _ in range(prof.conversations):
        history: list[dict[str, str]] = []
        for t in range(turns):
            history.append({"role": "user", "content": msgs[u % len(msgs)]})
            u += 1
            before = fw_cache.pool.stats().items
            t0 = time.perf_counter()
            v = fw_cache.screen(list(history))
            ms = (time.perf_counter() - t0) * 1000.0
            cached_ok &= v.cached_messages == t and not v.error
            if t == 0:
                rows["turn1_cache"].append(ms)
            if t == turns - 1:
                rows["turn20_cache"].append(ms)
                items["turn20_cache"].append(fw_cache.pool.stats().items - before)
            else:
                history.append({"role": "assistant", "content": replies[r % len(replies)]})
                r += 1
        for key, req in (("turn20_nocache", history), ("turn1_nocache", history[:1])):
            before = fw_nocache.pool.stats().items
            t0 = time.perf_counter()
            fw_nocache.screen(req)
            rows[key].append((time.perf_counter() - t0) * 1000.0)
            if key in items:
                items[key].append(fw_nocache.pool.stats().items - before)
    out: dict[str, Any] = {k: summarize(v) for k, v in rows.items()}
    out["items_screened"] = {k: float(np.mean(v)) for k, v in items.items() if v}
    out["cache_hits_as_expected"] = cached_ok
    return out


def bench_multiturn(
    like: Any, msgs: list[str], replies: list[str], prof: Profile, turns: int = 20
) -> dict[str, Any]:
    """Turn ``turns`` of a conversation with the cache vs without, pool as ``like``'s; with
    seams on (the default) and, where the version has them, off."""
    w, th = like.settings.pool.workers, like.settings.pool.threads_per_worker
    out: dict[str, Any] = {"turns": turns, "conversations": prof.conversations}
    variants = [("default", None)]
    if has_seams():
        out["seams_default"] = bool(like.settings.detection.seams)
        variants.append(("seams_off", {"seams": False}))
    for name, det in variants:
        fw_c = make_firewall(w, th, cache_size=4096, like=like, detection=det)
        fw_n = make_firewall(w, th, cache_size=0, like=like, detection=det)
        try:
            out[name] = _conversations(fw_c, fw_n, msgs, replies, prof, turns)
        finally:
            fw_c.close()
            fw_n.close()
        m = out[name]
        log(
            f"   {name}: turn 1 {m['turn1_cache']['p50']:.0f} ms, turn {turns} cached "
            f"{m['turn20_cache']['p50']:.0f} ms, uncached {m['turn20_nocache']['p50']:.0f} ms"
        )
    return out


# --------------------------------------------------------------------------------------------
# Registered sections (run order: firewall phase, 10–40)
# --------------------------------------------------------------------------------------------
@section("latency", phase="firewall", order=10, meter=None)
def _latency(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with ctx.meter.section("latency 2×1"):
        out["2×1"] = bench_screen_latency(ctx.firewall, ctx.msgs_by_len, ctx.prof)
    fw12 = make_firewall(1, 2, like=ctx.firewall)
    try:
        with ctx.meter.section("latency 1×2"):
            # The smoke run skips 8,192 tokens here: it only checks the code path.
            lens = {n: v for n, v in ctx.msgs_by_len.items() if not ctx.args.quick or n < 4096}
            out["1×2"] = bench_screen_latency(fw12, lens, ctx.prof)
    finally:
        fw12.close()
    return out


@section("breakdown", phase="firewall", order=20)
def _breakdown(ctx: Context) -> dict[str, Any]:
    out = {"1": bench_breakdown(ctx.firewall, ctx.msgs64, ctx.prof.breakdown_n, 2)}
    fw12 = make_firewall(1, 2, like=ctx.firewall)
    try:
        out["2"] = bench_breakdown(fw12, ctx.msgs64, ctx.prof.breakdown_n, 2)
    finally:
        fw12.close()
    return out


@section("throughput", phase="firewall", order=30)
def _throughput(ctx: Context) -> dict[str, Any]:
    out = bench_throughput(ctx.firewall, ctx.msgs64, ctx.prof)
    out["duration_s"] = ctx.prof.duration_s
    return out


@section("multiturn", phase="firewall", order=40)
def _multiturn(ctx: Context) -> dict[str, Any]:
    return bench_multiturn(ctx.firewall, ctx.msgs64, ctx.replies, ctx.prof)
