#!/usr/bin/env python
"""alknet-firewall benchmark harness: one command, one results table.

    .venv/bin/python benchmarks/run.py                 # full run (~15-25 min on 2 quiet cores)
    .venv/bin/python benchmarks/run.py --quick         # smoke run (< 3 min); NOT results

Measures, on this machine and in one process tree:

* latency of ``Firewall.screen`` at 16 … 8,192 tokens (real corpus texts cut to exact token
  counts with the model's tokenizer), for the default pool (2 workers × 1 thread) and for
  1 worker × 2 threads, plus where the time goes for a 64-token message;
* throughput of ``ascreen`` with 1/8/32/128 concurrent asyncio clients and one at a time;
* the OpenAI gateway over real HTTP (uvicorn on loopback in front of a fake upstream that
  answers instantly): throughput with 1/8/32/128 httpx clients and its added latency;
* cold start (``alknet-firewall screen``; a fresh process that builds a Firewall) and peak RSS;
* the multi-turn cache (turn 20 of a conversation with and without it);
* baselines on the same inputs and threads: DeBERTa-v3-base/-xsmall architectures (random
  weights: latency only) in fp32 and bf16 with 2 and 1 torch threads, and a TF-IDF + logistic
  regression detector fitted on the corpus (latency, and leave-source-out AUC).

Tables go to ``docs/benchmarks.md`` (the hand-written analysis between ``<!-- analysis -->``
markers and the GPU section between ``<!-- gpu -->`` markers are kept), everything to a JSON
file. Corpus texts are read from ``--corpus`` and never written anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
ANALYSIS_MARK = ("<!-- analysis -->", "<!-- /analysis -->")
GPU_MARK = ("<!-- gpu -->", "<!-- /gpu -->")

LENGTHS = (16, 64, 256, 1024, 8192)
CONCURRENCY = (1, 8, 32, 128)
#: DeBERTa's position embeddings stop at 512: [CLS] + 510 content tokens + [SEP].
DEBERTA_MAX_CONTENT = 510
SECTIONS = (
    "latency",
    "breakdown",
    "throughput",
    "multiturn",
    "gateway",
    "baselines",
    "tfidf",
    "coldstart",
    "rss",
)
#: Characters of each corpus text the TF-IDF baseline is fitted on (bounds fitting time).
TFIDF_TRAIN_CHARS = 4000


@dataclass(frozen=True)
class Profile:
    """Iteration counts and durations of one kind of run."""

    name: str
    warmup: int
    lat_budget_s: float  # per length and pool configuration
    lat_min: int
    lat_max: int
    long_min: int  # timed iterations at 8,192 tokens
    msgs_per_length: int
    base_budget_s: float  # per baseline configuration
    base_min: int
    base_max: int
    breakdown_n: int
    duration_s: float  # per concurrency level (ascreen and HTTP)
    gw_latency_n: int
    cold_repeats: int
    rss_messages: int
    conversations: int
    tfidf_per_source: int | None
    tfidf_folds: int
    #: DeBERTa content lengths (empty: every length, capped at 510).
    base_lengths: tuple[int, ...] = ()


FULL = Profile(
    name="full",
    warmup=2,
    lat_budget_s=8.0,
    lat_min=10,
    lat_max=300,
    long_min=3,
    msgs_per_length=32,
    base_budget_s=3.0,
    base_min=5,
    base_max=100,
    breakdown_n=60,
    duration_s=12.0,
    gw_latency_n=150,
    cold_repeats=3,
    rss_messages=200,
    conversations=6,
    tfidf_per_source=None,
    tfidf_folds=5,
)
QUICK = Profile(
    name="quick",
    warmup=1,
    lat_budget_s=0.4,
    lat_min=2,
    lat_max=10,
    long_min=1,
    msgs_per_length=4,
    base_budget_s=0.2,
    base_min=1,
    base_max=3,
    breakdown_n=3,
    duration_s=1.5,
    gw_latency_n=6,
    cold_repeats=1,
    rss_messages=20,
    conversations=1,
    tfidf_per_source=60,
    tfidf_folds=3,
    base_lengths=(64,),
)

_T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - _T0:7.1f}s] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Statistics and timing
# --------------------------------------------------------------------------------------------
def summarize(ms: Sequence[float]) -> dict[str, Any]:
    """n, p50/p95/p99 (linear interpolation), mean, min, max of millisecond samples."""
    a = np.asarray(list(ms), dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "n": int(a.size),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def time_loop(
    call: Callable[[int], Any], *, warmup: int, min_n: int, max_n: int, budget_s: float
) -> list[float]:
    """Milliseconds of ``call(i)``: ``warmup`` untimed calls, then at least ``min_n`` and at most
    ``max_n`` timed ones, stopping once ``budget_s`` of timed calls have passed."""
    for i in range(warmup):
        call(i)
    out: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < min_n or (i < max_n and time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        call(warmup + i)
        out.append((time.perf_counter() - t) * 1000.0)
        i += 1
    return out


# --------------------------------------------------------------------------------------------
# Machine and background load
# --------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
                return [f for f in wanted if f in flags]
    return []


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _own_cpu_s() -> float:
    """CPU seconds of this process, its finished children and its live descendants."""
    import psutil

    p = psutil.Process()
    t = p.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for c in p.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ct = c.cpu_times()
            total += ct.user + ct.system
    return total


def _system_busy_s() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine incl. steal, steal seconds) since boot."""
    import psutil

    t = psutil.cpu_times()
    fields = [f for f in t._fields if f not in ("guest", "guest_nice")]
    total = sum(getattr(t, f) for f in fields)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, getattr(t, "steal", 0.0)


class LoadMeter:
    """Per section: wall time, CPU used by this process tree and by everything else."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        log(f"== {name}")
        la0 = os.getloadavg()[0]
        b0, s0 = _system_busy_s()
        o0 = _own_cpu_s()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            wall = max(time.perf_counter() - t0, 1e-9)
            b1, s1 = _system_busy_s()
            own = _own_cpu_s() - o0
            self.sections[name] = {
                "wall_s": wall,
                "own_cores": own / wall,
                "foreign_cores": max(0.0, (b1 - b0) - own) / wall,
                "steal_cores": (s1 - s0) / wall,
                "loadavg_start": la0,
                "loadavg_end": os.getloadavg()[0],
            }
            log(
                f"   {name}: {wall:.1f}s, others used "
                f"{self.sections[name]['foreign_cores']:.2f} cores"
            )


def background_load(seconds: float = 2.0) -> dict[str, float]:
    """Cores kept busy by other processes while this one sleeps."""
    b0, s0 = _system_busy_s()
    o0 = _own_cpu_s()
    time.sleep(seconds)
    b1, s1 = _system_busy_s()
    own = _own_cpu_s() - o0
    return {
        "busy_cores": max(0.0, (b1 - b0) - own) / seconds,
        "steal_cores": (s1 - s0) / seconds,
        "loadavg_1m": os.getloadavg()[0],
        "loadavg_5m": os.getloadavg()[1],
    }


def environment() -> dict[str, Any]:
    import psutil
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions["transformers"] = transformers.__version__
    for mod in ("numpy", "sklearn", "httpx", "uvicorn", "starlette", "tokenizers"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    try:
        from importlib import metadata

        versions["alknet-firewall"] = metadata.version("alknet-firewall")
    except Exception:
        pass
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "machine": platform.node(),
        "platform": platform.platform(),
        "arch": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cpus": psutil.cpu_count(logical=True),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch_threads_default": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "versions": versions,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": dirty,
    }


# --------------------------------------------------------------------------------------------
# Inputs: real corpus texts cut to exact token counts
# --------------------------------------------------------------------------------------------
def load_corpus(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in sorted(Path(path).glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                d = json.loads(line)
                text = d.get("text")
                if isinstance(text, str) and text.strip():
                    rows.append(
                        {
                            "text": text,
                            "label": int(d.get("label") or 0),
                            "source": str(d.get("source") or f.stem),
                            "filled": bool(d.get("filled")),
                        }
                    )
    if not rows:
        raise SystemExit(f"no corpus texts (*.jsonl with 'text') under {path}")
    return rows


class MessageMaker:
    """Messages of exactly ``n`` content tokens (as the firewall counts them: after
    normalisation, with the model tokenizer), cut from or concatenated of real texts."""

    def __init__(self, model: Any, texts: Sequence[str], seed: int = 0) -> None:
        from alknet_firewall.normalize import normalize

        self.model = model
        self._normalize = normalize
        pool = [normalize(t) for t in texts if t.strip()]
        random.Random(seed).shuffle(pool)
        self.texts = pool
        self.pos = 0
        self._ntok: dict[int, int] = {}

    def count(self, text: str) -> int:
        return len(self.model.tokenize([text])[0])

    def _next(self) -> tuple[int, str]:
        j = self.pos % len(self.texts)
        self.pos += 1
        return j, self.texts[j]

    def make(self, n: int) -> str:
        for _ in range(50):
            parts: list[str] = []
            est = 0
            while est < n + 16:
                j, t = self._next()
                if j not in self._ntok:
                    self._ntok[j] = self.count(t)
                parts.append(t)
                est += self._ntok[j] + 2
            ids = self.model.tokenize(["\n\n".join(parts)])[0]
            if len(ids) < n:
                continue
            text = self._fit(ids, n)
            if text is not None:
                return text
        raise RuntimeError(f"could not build a message of exactly {n} tokens")

    def _fit(self, ids: list[int], n: int) -> str | None:
        tok = self.model.tokenizer
        k = n
        seen: set[int] = set()
        for _ in range(16):
            if k <= 0 or k > len(ids) or k in seen:
                return None
            seen.add(k)
            raw = tok.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text = self._normalize(raw)
            c = self.count(text)
            if c == n and text.strip():
                return text
            k += n - c
        return None

    def many(self, n: int, count: int) -> list[str]:
        return [self.make(n) for _ in range(count)]


# --------------------------------------------------------------------------------------------
# Firewalls
# --------------------------------------------------------------------------------------------
def firewall_settings(
    workers: int,
    threads: int,
    *,
    cache_size: int = 0,
    warmup: bool = True,
    detection: dict[str, Any] | None = None,
) -> Any:
    from alknet_firewall.config import load_settings

    extra: dict[str, Any] = {"detection": detection} if detection else {}
    return load_settings(
        None,
        pool={
            "workers": workers,
            "threads_per_worker": threads,
            "cache_size": cache_size,
            "warmup": warmup,
        },
        **extra,
    )


def make_firewall(
    workers: int,
    threads: int,
    *,
    cache_size: int = 0,
    like: Any = None,
    detection: dict[str, Any] | None = None,
) -> Any:
    """A Firewall; with ``like``, one that shares that firewall's model and codebook."""
    from alknet_firewall.firewall import Firewall

    s = firewall_settings(workers, threads, cache_size=cache_size, detection=detection)
    if like is None:
        return Firewall(s)
    return Firewall(s, model=like.model, codebook=like.codebook)


def has_seams() -> bool:
    """Whether this version screens the seams between messages (``detection.seams``)."""
    from alknet_firewall.config import DetectionSettings

    return "seams" in DetectionSettings.model_fields


def pool_label(workers: int, threads: int) -> str:
    return f"{workers}×{threads}"


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
# 5. Gateway over real HTTP
# --------------------------------------------------------------------------------------------
_FAKE_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "OK."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
_FAKE_MODELS = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model"}]}).encode()


async def fake_upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI OpenAI stand-in: answers every request at once with a fixed body."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        more = bool(msg.get("more_body"))
    body = _FAKE_MODELS if scope["method"] == "GET" else _FAKE_COMPLETION
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve_fake_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        fake_upstream_app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "alknet-firewall"
    if exe.exists():
        return [str(exe)]
    return [
        sys.executable,
        "-c",
        "import sys; from alknet_firewall.cli import main; sys.exit(main())",
    ]


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
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--fake-upstream",
                        str(up_port),
                    ],
                    stdout=up_log,
                    stderr=subprocess.STDOUT,
                )
            )
        upstream = f"http://127.0.0.1:{up_port}/v1"
        _wait_ready(upstream + "/models", procs[0], 60)
        t0 = time.perf_counter()
        cmd = [*_cli(), "serve", "--upstream", upstream, "--port", str(gw_port)]
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


# --------------------------------------------------------------------------------------------
# 6. Baselines: DeBERTa-v3 architectures (random weights) and TF-IDF + LR
# --------------------------------------------------------------------------------------------
DEBERTA_SIZES: dict[str, dict[str, int]] = {
    "base": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    "xsmall": {"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536},
}


def deberta_config(size: str) -> Any:
    """DeBERTa-v3-{base,xsmall} architecture (as in the published configs)."""
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=128100,
        num_hidden_layers=12,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        max_relative_positions=-1,
        type_vocab_size=0,
        hidden_act="gelu",
        layer_norm_eps=1e-7,
        num_labels=2,
        **DEBERTA_SIZES[size],
    )


def build_deberta(size: str, dtype: str = "float32") -> Any:
    """``DebertaV2ForSequenceClassification`` with random weights (latency only)."""
    import torch
    from transformers import DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(deberta_config(size))
    model.eval().requires_grad_(False)
    return model.to(getattr(torch, dtype))


def deberta_lengths(lengths: Sequence[int]) -> list[int]:
    return sorted({min(n, DEBERTA_MAX_CONTENT) for n in lengths})


def bench_deberta(
    size: str,
    token_ids: dict[int, list[int]],
    prof: Profile,
    *,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    threads: Sequence[int] = (2, 1),
) -> list[dict[str, Any]]:
    """Batch-1 forward latency of one architecture at each (capped) length.

    ``token_ids[n]``: content token ids (at least ``n``) from the same messages the firewall
    screens; DeBERTa gets ``[CLS] + ids[:n] + [SEP]`` (ids < 49,152 are valid in its vocabulary).
    """
    import torch

    rows: list[dict[str, Any]] = []
    model = build_deberta(size)
    prev = torch.get_num_threads()
    try:
        for dtype in dtypes:
            model = model.to(getattr(torch, dtype))
            for th in threads:
                torch.set_num_threads(th)
                for n, ids in sorted(token_ids.items()):
                    x = torch.tensor([[1, *ids[:n], 2]], dtype=torch.long)
                    mask = torch.ones_like(x)

                    def call(_i: int, m: Any = model, x: Any = x, mask: Any = mask) -> None:
                        with torch.inference_mode():
                            m(input_ids=x, attention_mask=mask)

                    ms = time_loop(
                        call,
                        warmup=prof.warmup,
                        min_n=prof.base_min,
                        max_n=prof.base_max,
                        budget_s=prof.base_budget_s,
                    )
                    rows.append(
                        {
                            "model": f"deberta-v3-{size}",
                            "dtype": dtype,
                            "threads": th,
                            "tokens": n,
                            "seq_len": n + 2,
                            **summarize(ms),
                        }
                    )
                    log(f"   deberta-{size} {dtype} {th}t {n:4d} tok: p50 {rows[-1]['p50']:.1f} ms")
    finally:
        torch.set_num_threads(prev)
    return rows


def tfidf_pipeline() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline

    features = FeatureUnion(
        [
            (
                "word",
                TfidfVectorizer(
                    analyzer="word", ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                    max_features=200_000,
                ),
            ),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True,
                    max_features=300_000,
                ),
            ),
        ]
    )  # fmt: skip
    return make_pipeline(
        features, LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced")
    )


def tfidf_group(row: dict[str, Any]) -> str:
    """Source, except that harmful questions and jailbreak templates filled with them share a
    group (the corpus README: keep a template and its question on the same side of a split)."""
    if row["filled"] or row["source"] in ("advbench", "harmbench"):
        return "harmful_questions+filled"
    return row["source"]


def tfidf_sample(rows: list[dict[str, Any]], per_source: int | None, seed: int = 0) -> list[dict]:
    if per_source is None:
        return rows
    rng = random.Random(seed)
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["source"], []).append(r)
    out: list[dict[str, Any]] = []
    for src in sorted(by):
        group = by[src]
        out += rng.sample(group, min(per_source, len(group)))
    return out


def bench_tfidf(
    rows: list[dict[str, Any]], msgs_by_len: dict[int, list[str]], prof: Profile
) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    data = tfidf_sample(rows, prof.tfidf_per_source)
    x = [r["text"][:TFIDF_TRAIN_CHARS] for r in data]
    y = np.array([r["label"] for r in data])
    groups = np.array([tfidf_group(r) for r in data])
    res: dict[str, Any] = {"texts": len(data), "groups": len(set(groups.tolist()))}
    t0 = time.perf_counter()
    pipe = tfidf_pipeline().fit(x, y)
    res["fit_s"] = time.perf_counter() - t0
    lat: dict[str, Any] = {}
    for n, msgs in msgs_by_len.items():
        ms = time_loop(
            lambda i, msgs=msgs: pipe.predict_proba([msgs[i % len(msgs)]]),
            warmup=prof.warmup,
            min_n=prof.lat_min,
            max_n=prof.lat_max,
            budget_s=min(prof.lat_budget_s, 3.0),
        )
        lat[str(n)] = summarize(ms)
        log(f"   tfidf {n:5d} tok: p50 {lat[str(n)]['p50']:.2f} ms")
    res["latency"] = lat
    # Leave-source-out: each group is scored by a model fitted without it.
    t0 = time.perf_counter()
    oof = np.zeros(len(y))
    folds = []
    n_splits = min(prof.tfidf_folds, len(set(groups.tolist())))
    for train, test in GroupKFold(n_splits=n_splits).split(x, y, groups):
        m = tfidf_pipeline().fit([x[i] for i in train], y[train])
        oof[test] = m.predict_proba([x[i] for i in test])[:, 1]
        held = sorted(set(groups[test].tolist()))
        fold_auc = roc_auc_score(y[test], oof[test]) if len(set(y[test].tolist())) > 1 else None
        folds.append({"held_out": held, "auc": fold_auc})
    res["auc_leave_source_out"] = float(roc_auc_score(y, oof))
    fold_aucs = [f["auc"] for f in folds if f["auc"] is not None]
    res["auc_mean_fold"] = float(np.mean(fold_aucs)) if fold_aucs else None
    res["folds"] = folds
    res["cv_s"] = time.perf_counter() - t0
    log(f"   tfidf leave-source-out AUC {res['auc_leave_source_out']:.3f}")
    return res


# --------------------------------------------------------------------------------------------
# 7. Cold start and peak RSS (fresh processes)
# --------------------------------------------------------------------------------------------
_COLD_CHILD = r"""
import json, sys, time
t_start = time.time()
from alknet_firewall.config import load_settings
from alknet_firewall.firewall import Firewall
import torch, transformers  # what Firewall() would import on first use
t_import = time.time()
fw = Firewall(load_settings(None, pool={"warmup": False, "cache_size": 0}))
t_load = time.time()
v = fw.screen("hello")
t_first = time.time()
fw.screen("hello again, how are you?")
t_second = time.time()
fw.close()
print(json.dumps({"t_start": t_start, "t_import": t_import, "t_load": t_load,
                  "t_first": t_first, "t_second": t_second, "action": v.action,
                  "error": v.error, "workers": fw.settings.pool.workers,
                  "threads": fw.settings.pool.threads_per_worker}))
"""

_RSS_CHILD = r"""
import json, sys
import psutil

def vm_hwm():
    # Peak RSS of this process image (unlike ru_maxrss, not inherited from the forking parent).
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0

from alknet_firewall.config import load_settings
from alknet_firewall.firewall import Firewall
with open(sys.argv[1], encoding="utf-8") as fh:
    msgs = json.load(fh)
p = psutil.Process()
fw = Firewall(load_settings(None, pool={"workers": int(sys.argv[2]),
                                        "threads_per_worker": int(sys.argv[3]),
                                        "cache_size": 0}))
rss_loaded = p.memory_info().rss
res = fw.screen_many_safe(msgs)
errors = sum(1 for r in res if isinstance(r, BaseException) or r.error)
rss_end = p.memory_info().rss
fw.close()
print(json.dumps({"rss_loaded": rss_loaded, "rss_end": rss_end, "errors": errors,
                  "vm_hwm": vm_hwm(),
                  "n": len(msgs)}))
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def bench_coldstart(prof: Profile) -> dict[str, Any]:
    cli: list[dict[str, Any]] = []
    for _ in range(prof.cold_repeats):
        t0 = time.perf_counter()
        p = subprocess.run(
            [*_cli(), "screen", "hello"], capture_output=True, text=True, env=_child_env(),
            timeout=300,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        ok = p.returncode == 0 and '"action"' in p.stdout
        cli.append({"wall_s": wall, "ok": ok, "rc": p.returncode})
        log(f"   alknet-firewall screen hello: {wall:.2f} s (rc {p.returncode})")
        if not ok:
            log("   stderr: " + p.stderr[-500:])
    script: list[dict[str, Any]] = []
    for _ in range(prof.cold_repeats):
        t0 = time.time()
        p = subprocess.run(
            [sys.executable, "-c", _COLD_CHILD], capture_output=True, text=True,
            env=_child_env(), timeout=300,
        )  # fmt: skip
        t_end = time.time()
        if p.returncode != 0:
            log("   cold-start child failed: " + p.stderr[-800:])
            script.append({"ok": False, "rc": p.returncode})
            continue
        d = json.loads(p.stdout.strip().splitlines()[-1])
        row = {
            "ok": d["error"] is None,
            "interpreter_s": d["t_start"] - t0,
            "import_s": d["t_import"] - d["t_start"],
            "load_s": d["t_load"] - d["t_import"],
            "first_verdict_s": d["t_first"] - d["t_load"],
            "second_verdict_s": d["t_second"] - d["t_first"],
            "to_first_verdict_s": d["t_first"] - t0,
            "process_wall_s": t_end - t0,
            "pool": pool_label(d["workers"], d["threads"]),
        }
        script.append(row)
        log(f"   fresh process -> first verdict: {row['to_first_verdict_s']:.2f} s")

    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rows if key in r]
        return float(np.median(vals)) if vals else None

    keys = (
        "interpreter_s",
        "import_s",
        "load_s",
        "first_verdict_s",
        "second_verdict_s",
        "to_first_verdict_s",
        "process_wall_s",
    )
    return {
        "cli_screen_hello_s": med(cli, "wall_s"),
        "cli_runs": cli,
        "script": {k: med(script, k) for k in keys},
        "script_runs": script,
    }


def bench_rss(msgs: list[str], workers: int = 2, threads: int = 1) -> dict[str, Any]:
    import psutil

    with tempfile.TemporaryDirectory(prefix="alknet-bench-") as tmp:
        path = Path(tmp) / "msgs.json"
        path.write_text(json.dumps(msgs), encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-c", _RSS_CHILD, str(path), str(workers), str(threads)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        peak = 0
        ps = psutil.Process(proc.pid)
        t0 = time.perf_counter()
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, ps.memory_info().rss)
            time.sleep(0.02)
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child failed: {err[-800:]}")
    d = json.loads(out.strip().splitlines()[-1])
    res = {
        "messages": d["n"],
        "errors": d["errors"],
        "pool": pool_label(workers, threads),
        "peak_rss_polled_mib": peak / 2**20,
        "vm_hwm_mib": d["vm_hwm"] / 2**20,
        "rss_after_load_mib": d["rss_loaded"] / 2**20,
        "rss_end_mib": d["rss_end"] / 2**20,
        "wall_s": wall,
    }
    res["peak_rss_mib"] = max(res["vm_hwm_mib"], res["peak_rss_polled_mib"])
    log(f"   peak RSS {res['peak_rss_mib']:.0f} MiB over {d['n']} messages")
    return res


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------
def _deb(results: dict[str, Any], size: str, dtype: str, threads: int, n: int) -> float | None:
    for r in results.get("baselines", {}).get("deberta", []):
        if (
            r["model"] == f"deberta-v3-{size}"
            and r["dtype"] == dtype
            and r["threads"] == threads
            and r["tokens"] == min(n, DEBERTA_MAX_CONTENT)
        ):
            return float(r["p50"])
    return None


def _screen_p50(results: dict[str, Any], pool: str, n: int) -> float | None:
    r = results.get("latency", {}).get(pool, {}).get(str(n))
    return float(r["p50"]) if r and r.get("n") else None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what was measured, the bound, met or not (None: not measured)."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: str, bound: str, met: bool | None, note: str = "") -> None:
        out.append({"target": name, "measured": measured, "bound": bound, "met": met, "note": note})

    # 1. 64-token screen vs DeBERTa-v3-xsmall forward, same threads.
    for pool, th in (("2×1", 1), ("1×2", 2)):
        ours = _screen_p50(results, pool, 64)
        for dtype in ("bfloat16", "float32"):
            xs = _deb(results, "xsmall", dtype, th, 64)
            if ours is None or xs is None:
                continue
            add(
                f"screen p50 @64 tok ({pool} pool) ≤ DeBERTa-v3-xsmall {dtype} forward, {th} thread"
                + ("s" if th > 1 else ""),
                f"{ours:.1f} ms vs {xs:.1f} ms ({ours / xs:.2f}×)",
                "≤ 1.00×",
                ours <= xs,
            )
    tp = results.get("throughput")
    if tp:
        seq = tp["sequential"]
        lv = {r["clients"]: r for r in tp["ascreen"]}
        if 32 in lv:
            r32 = lv[32]
            ratio = r32["msg_per_s"] / seq["msg_per_s"]
            add(
                "ascreen throughput, 32 clients ≥ 1.3 × one at a time",
                f"{r32['msg_per_s']:.1f} vs {seq['msg_per_s']:.1f} msg/s ({ratio:.2f}×)",
                "≥ 1.30×",
                ratio >= 1.3,
            )
            single_p50 = lv[1]["p50"] if 1 in lv else seq["p50"]
            queueing = 32.0 / (r32["msg_per_s"] * single_p50 / 1000.0)
            bound = 3.0 * single_p50 * queueing
            add(
                "p99 at 32 clients ≤ 3 × single-client p50 × expected queueing",
                f"p99 {r32['p99']:.0f} ms; single p50 {single_p50:.1f} ms × queueing "
                f"{queueing:.1f} (Little: 32 / throughput / p50)",
                f"≤ {bound:.0f} ms",
                r32["p99"] <= bound,
            )
    gw = results.get("gateway")
    if gw and "added_latency" in gw:
        a = gw["added_latency"]
        ratio = a["gateway"]["p50"] / a["ascreen"]["p50"]
        add(
            "gateway p50 ≤ 1.10 × bare ascreen p50",
            f"{a['gateway']['p50']:.1f} vs {a['ascreen']['p50']:.1f} ms "
            f"(+{(ratio - 1) * 100:.1f} %; upstream alone {a['upstream']['p50']:.2f} ms)",
            "≤ +10 %",
            ratio <= 1.10,
        )
    cs = results.get("coldstart")
    if cs and cs.get("cli_screen_hello_s") is not None:
        add(
            "cold start ≤ 5 s (warm model cache): `alknet-firewall screen hello`",
            f"{cs['cli_screen_hello_s']:.2f} s (fresh process → first verdict in a script: "
            f"{(cs['script'].get('to_first_verdict_s') or float('nan')):.2f} s)",
            "≤ 5 s",
            cs["cli_screen_hello_s"] <= 5.0,
        )
    rss = results.get("rss")
    if rss:
        peak = rss["peak_rss_mib"]
        add(
            f"peak RSS ≤ 1.5 GB ({rss['messages']} messages)",
            f"{peak:.0f} MiB ({peak * 2**20 / 1e9:.2f} GB)",
            "≤ 1.5 GB",
            peak * 2**20 <= 1.5e9,
        )
    mt = results.get("multiturn")
    if mt and mt.get("default", {}).get("turn20_cache", {}).get("n"):
        d = mt["default"]
        ratio = d["turn20_cache"]["p50"] / d["turn1_cache"]["p50"]
        note = ""
        if "seams_off" in mt:
            o = mt["seams_off"]
            note = (
                f"with detection.seams off: {o['turn20_cache']['p50']:.1f} vs "
                f"{o['turn1_cache']['p50']:.1f} ms "
                f"({o['turn20_cache']['p50'] / o['turn1_cache']['p50']:.2f}×)"
            )
        add(
            f"multi-turn: turn {mt['turns']} with the cache ≈ one message",
            f"{d['turn20_cache']['p50']:.1f} ms vs one message {d['turn1_cache']['p50']:.1f} ms "
            f"({ratio:.2f}×); without cache {d['turn20_nocache']['p50']:.1f} ms",
            "≤ 1.5 × one message",
            ratio <= 1.5,
            note,
        )
    return out


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def _ms(x: float | None) -> str:
    if x is None:
        return "–"
    return _f(x, 2 if x < 10 else 1 if x < 1000 else 0)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _keep(old: str, marks: tuple[str, str], default: str) -> str:
    a, b = marks
    if a in old and b in old:
        inner = old.split(a, 1)[1].split(b, 1)[0]
        return a + inner + b
    return f"{a}\n{default}\n{b}"


_DEFAULT_ANALYSIS = "\n_No analysis yet: write it here; run.py keeps this section._\n"
_DEFAULT_GPU = (
    "\n_Not run yet. On a GPU machine: `python benchmarks/gpu_bench.py` (writes `$OUT/gpu.md`);"
    " paste its table here — run.py keeps this section._\n"
)


def render(results: dict[str, Any], old: str = "") -> str:
    env = results["environment"]
    meta = results["meta"]
    quick = meta["profile"] == "quick"
    L: list[str] = ["# Benchmarks", ""]
    if quick:
        L += [
            "> **SMOKE RUN (`--quick`)**: tiny iteration counts, for checking the harness only. "
            "These numbers are not benchmark results.",
            "",
        ]
    if results.get("partial"):
        L += [f"> Partial run: only {', '.join(results['partial'])}.", ""]
    bg = results["background"]
    if bg["busy_cores"] > 0.25 or bg["loadavg_1m"] > 1.5:
        L += [
            f"> **Measured under load**: before the run other processes kept "
            f"{bg['busy_cores']:.2f} of {env['logical_cpus']} cores busy (load average "
            f"{bg['loadavg_1m']:.2f}); see the per-section load table. Treat the numbers as "
            "pessimistic.",
            "",
        ]
    L += [
        "Generated by `benchmarks/run.py`; tables are rewritten on every run, the analysis and "
        "GPU sections are kept.",
        "",
        f"Command: `{meta['command']}` — started {meta['started']}, took "
        f"{meta['duration_s'] / 60:.1f} min.",
        "",
        "## Machine",
        "",
        _table(
            ["", ""],
            [
                ["machine", f"{env['machine']} ({env['arch']}, {env['platform']})"],
                ["CPU", f"{env['cpu_model']} — flags: {', '.join(env['cpu_flags']) or '–'}"],
                [
                    "cores",
                    f"{env['physical_cores']} physical, {env['logical_cpus']} logical, "
                    f"{env['usable_cpus']} usable; {env['memory_gib']} GiB RAM",
                ],
                [
                    "threads",
                    f"torch default {env['torch_threads_default']} intra-op, "
                    f"{env['torch_interop_threads']} inter-op",
                ],
                [
                    "versions",
                    ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
                ],
                [
                    "code",
                    f"git {env['git_commit']}"
                    + (" + uncommitted changes" if env["git_dirty"] else ""),
                ],
                [
                    "model",
                    f"{meta.get('model', {}).get('name', '?')}, layers "
                    f"{meta.get('model', {}).get('layers', '?')}, "
                    f"{meta.get('model', {}).get('dtype', '?')}, windows of "
                    f"{meta.get('model', {}).get('max_tokens', '?')} tokens",
                ],
                [
                    "background",
                    f"{bg['busy_cores']:.2f} cores busy, steal {bg['steal_cores']:.2f}, "
                    f"load average {bg['loadavg_1m']:.2f} / {bg['loadavg_5m']:.2f} (1/5 min) "
                    "before starting",
                ],
            ],
        ),
        "",
    ]
    L += _render_targets(results)
    L += _render_latency(results)
    L += _render_baselines(results)
    L += _render_breakdown(results)
    L += _render_throughput(results)
    L += _render_gateway(results)
    L += _render_cold(results)
    L += _render_load(results)
    L += [
        "## GPU (optional, `benchmarks/gpu_bench.py`)",
        "",
        _keep(old, GPU_MARK, _DEFAULT_GPU),
        "",
        "## Analysis",
        "",
        _keep(old, ANALYSIS_MARK, _DEFAULT_ANALYSIS),
        "",
    ]
    return "\n".join(L)


def _render_targets(results: dict[str, Any]) -> list[str]:
    targets = results.get("targets") or []
    if not targets:
        return []
    rows = [[t["target"], t["measured"], t["bound"], "✅" if t["met"] else "❌"] for t in targets]
    return ["## Targets (2 cores)", "", _table(["target", "measured", "bound", "met"], rows), ""]


def _render_latency(results: dict[str, Any]) -> list[str]:
    lat = results.get("latency")
    if not lat:
        return []
    rows = []
    for pool, per in lat.items():
        for n, r in per.items():
            if not r.get("n"):
                continue
            rows.append(
                [pool, f"{int(n):,}", r["n"], _ms(r["p50"]), _ms(r["p95"]), _ms(r["p99"]),
                 _ms(r["mean"]), r.get("errors", 0)]
            )  # fmt: skip
    return [
        "## `Firewall.screen` latency (one request at a time)",
        "",
        "Pool `W×T`: W worker threads × T torch threads each. `2×1` is the default on 2 cores "
        "(a single request runs on one worker, i.e. one thread); `1×2` gives one request both "
        "cores. Cache off (`cache_size=0`), messages cut from real corpus texts to exactly the "
        "token count (content tokens; the chat template adds 8). Milliseconds, wall clock "
        "around `screen()`; p99 of few samples is close to the maximum.",
        "",
        _table(["pool", "tokens", "n", "p50", "p95", "p99", "mean", "errors"], rows),
        "",
    ]


def _render_baselines(results: dict[str, Any]) -> list[str]:
    b = results.get("baselines", {})
    deb = b.get("deberta") or []
    tf = results.get("tfidf")
    L: list[str] = []
    if deb:
        rows = [
            [r["model"], r["dtype"], r["threads"],
             f"{r['tokens']}" + (" (cap)" if r["tokens"] == DEBERTA_MAX_CONTENT else ""),
             r["n"], _ms(r["p50"]), _ms(r["p95"]), _ms(r["p99"])]
            for r in deb
        ]  # fmt: skip
        L += [
            "## Baselines",
            "",
            "### DeBERTa-v3 architectures — **latency only** (random weights)",
            "",
            "`DebertaV2ForSequenceClassification` built from the published v3 configs with random "
            "weights, batch 1, `torch.inference_mode`, same token ids as the firewall's messages "
            "(`[CLS] + ids + [SEP]`), capped at 512 positions (510 content tokens). base: hidden "
            "768, 12 layers, 12 heads; xsmall: hidden 384, 12 layers, 6 heads.",
            "",
            _table(["model", "dtype", "threads", "content tokens", "n", "p50", "p95", "p99"], rows),
            "",
        ]
    if tf:
        rows = [
            [f"{int(n):,}", r["n"], _ms(r["p50"]), _ms(r["p95"]), _ms(r["p99"])]
            for n, r in tf["latency"].items()
        ]
        L += [
            "### TF-IDF + logistic regression (scikit-learn)",
            "",
            f"Word 1–2-grams + char_wb 3–5-grams, sublinear TF, balanced LR; fitted on "
            f"{tf['texts']:,} corpus texts (first {TFIDF_TRAIN_CHARS:,} characters each) in "
            f"{tf['fit_s']:.1f} s. Latency of `predict_proba` on one message (single thread). "
            f"**Leave-source-out ROC AUC {tf['auc_leave_source_out']:.3f}** (pooled out-of-fold "
            f"scores of {len(tf['folds'])} group folds over {tf['groups']} source groups; harmful "
            "questions and templates filled with them form one group; mean of the per-fold AUCs "
            f"{_f(tf.get('auc_mean_fold'), 3)}, folds with both labels only).",
            "",
            _table(["tokens", "n", "p50", "p95", "p99"], rows),
            "",
        ]
    L += _render_ratios(results)
    return L


def _render_ratios(results: dict[str, Any]) -> list[str]:
    lat = results.get("latency", {})
    deb = results.get("baselines", {}).get("deberta") or []
    tf = results.get("tfidf")
    if not lat or not (deb or tf):
        return []
    rows = []
    for pool, th in (("2×1", 1), ("1×2", 2)):
        if pool not in lat:
            continue
        for n_s, r in lat[pool].items():
            n = int(n_s)
            if not r.get("n"):
                continue
            ours = r["p50"]
            row: list[Any] = [f"{pool} vs {th} thread" + ("s" if th > 1 else ""), f"{n:,}"]
            row.append(_ms(ours))
            for size in ("base", "xsmall"):
                for dtype in ("float32", "bfloat16"):
                    d = _deb(results, size, dtype, th, n)
                    if d is None:
                        row.append("–")
                        continue
                    cell = f"{ours / d:.2f}×"
                    if n > DEBERTA_MAX_CONTENT:
                        windows = math.ceil(n / DEBERTA_MAX_CONTENT)
                        cell += f" (cap) / {ours / (d * windows):.2f}× (×{windows} windows)"
                    row.append(cell)
            t = tf["latency"].get(n_s) if tf else None
            row.append(f"{ours / t['p50']:.0f}×" if t and t.get("n") else "–")
            rows.append(row)
    return [
        "### Our latency as a ratio to each baseline (p50 / p50; below 1 means we are faster)",
        "",
        "Same messages, same thread count: the `2×1` pool serves a single request on one thread "
        "and is compared with 1-thread baselines, the `1×2` pool with 2-thread baselines. Ours "
        "runs bf16. Above 510 tokens DeBERTa is truncated (cap); the second figure compares "
        "with ⌈n/510⌉ capped forwards, a lower bound on windowing DeBERTa over the whole text. "
        "TF-IDF runs on one thread in both rows.",
        "",
        _table(
            [
                "ours",
                "tokens",
                "ours p50 ms",
                "base fp32",
                "base bf16",
                "xsmall fp32",
                "xsmall bf16",
                "TF-IDF",
            ],
            rows,
        ),
        "",
    ]


def _render_breakdown(results: dict[str, Any]) -> list[str]:
    bd = results.get("breakdown")
    if not bd:
        return []
    gw = results.get("gateway", {}).get("added_latency")
    rows = []
    for th in ("1", "2"):
        st = bd.get(th)
        if not st:
            continue
        enc = st["encode"]["mean"]
        fwd = st.get("forward", {}).get("mean")
        total = st["screen"]["mean"]
        label = f"{st['pool']} ({th} thread{'s' if th != '1' else ''})"
        stages = [
            ("normalise", st["normalize"]["mean"]),
            ("tokenise (tokenizer call)", st["tokenize"]["mean"]),
            ("windows", st["windows"]["mean"]),
            ("`encode_token_windows` (forward + pooling)", enc),
            ("  of which transformer forward (8 layers)", fwd),
            ("  of which pooling + span features", enc - fwd if fwd is not None else None),
            ("score (`score_features`)", st["score"]["mean"]),
        ]
        direct = sum(st[k]["mean"] for k in ("normalize", "tokenize", "windows", "encode", "score"))
        stages.append(("rest: queue hand-off, worker wake-up, cache key, verdict", total - direct))
        for k, v in stages:
            share = f"{v / total * 100:.0f} %" if (v is not None and total) else "–"
            rows.append([label, k, _ms(v), share])
        rows.append([label, "**`screen()` of the same messages**", _ms(total), "100 %"])
    if gw:
        http = gw["gateway"]["mean"] - gw["ascreen"]["mean"]
        rows.append(
            ["gateway", "HTTP: gateway mean − bare ascreen mean (incl. upstream)", _ms(http), "–"]
        )
        rows.append(
            ["gateway", "of which the fake upstream alone", _ms(gw["upstream"]["mean"]), "–"]
        )
    first = bd[next(iter(bd))]
    return [
        "## Where the time goes (64-token message)",
        "",
        "Each stage timed directly on the benchmark's thread with the pool's torch thread count "
        f"(means over {first['encode']['n']} messages), interleaved with a whole `screen()` of "
        "the same message through the pool; the transformer forward is timed by hooks. `rest` "
        "= `screen()` − the stages. HTTP rows: from the gateway section.",
        "",
        _table(["pool", "stage", "ms", "share"], rows),
        "",
    ]


def _render_throughput(results: dict[str, Any]) -> list[str]:
    tp = results.get("throughput")
    L: list[str] = []
    if tp:
        seq = tp["sequential"]
        rows = [["one at a time (`screen`)", 1, _f(seq["msg_per_s"]), _ms(seq["p50"]),
                 _ms(seq["p99"]), "–", "–"]]  # fmt: skip
        for r in tp["ascreen"]:
            rows.append(
                [
                    "`ascreen` clients",
                    r["clients"],
                    _f(r["msg_per_s"]),
                    _ms(r["p50"]),
                    _ms(r["p99"]),
                    _f(r.get("mean_batch_size"), 2),
                    ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items()),
                ]
            )
        L += [
            "## Throughput (64-token messages, pool 2×1, cache off)",
            "",
            f"Closed loop: each client (an asyncio task) sends its next message as soon as the "
            f"previous verdict arrives, for {tp['duration_s']:.0f} s per level; msg/s = verdicts "
            "/ wall time. Latency per request in ms.",
            "",
            _table(["mode", "clients", "msg/s", "p50", "p99", "mean batch", "outcomes"], rows),
            "",
        ]
    mt = results.get("multiturn")
    if mt:
        variants = [v for v in ("default", "seams_off") if v in mt]
        n = mt["turns"]

        def cell(key: str, v: str) -> str:
            items = mt[v].get("items_screened", {}).get(key)
            if not items:
                return _ms(mt[v][key].get("p50"))
            return _ms(mt[v][key].get("p50")) + f" ({items:.0f} item{'s' if items > 1 else ''})"

        rows = [
            [label] + [cell(key, v) for v in variants]
            for key, label in (
                ("turn1_cache", "turn 1 (one message), cache on"),
                ("turn20_cache", f"turn {n}, cache on"),
                ("turn20_nocache", f"turn {n}, cache off (`cache_size=0`)"),
                ("turn1_nocache", "one message, cache off"),
            )
        ]
        names = {"default": "default settings", "seams_off": "`detection.seams` off"}
        seams = mt.get("seams_default")
        L += [
            "## Multi-turn cache",
            "",
            f"{mt['conversations']} conversation(s) of {n} user turns (64-token messages; the "
            "assistant replies in between are not screened). Each request carries the whole "
            "conversation so far; p50 ms of the request, and pool items screened for it (a "
            "message, or a seam: the end of one message joined to the start of the next"
            + (", screened by default" if seams else "")
            + "). Cache hits as expected: "
            + ", ".join(f"{names[v]} {mt[v]['cache_hits_as_expected']}" for v in variants)
            + ".",
            "",
            _table(["request", *(names[v] for v in variants)], rows),
            "",
        ]
    return L


def _render_gateway(results: dict[str, Any]) -> list[str]:
    gw = results.get("gateway")
    if not gw:
        return []
    a = gw["added_latency"]
    rows = [
        [name, a[key]["n"], _ms(a[key]["p50"]), _ms(a[key]["p95"]), _ms(a[key]["p99"])]
        for key, name in (
            ("upstream", "fake upstream alone (httpx → uvicorn)"),
            ("ascreen", "bare `ascreen` (in process)"),
            ("gateway", "gateway (httpx → gateway → fake upstream)"),
        )
    ]
    http_rows = [
        [r["clients"], _f(r["msg_per_s"]), _ms(r["p50"]), _ms(r["p99"]),
         _f(r.get("client_cpu_cores"), 2),
         ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items())]
        for r in gw["http"]
    ]  # fmt: skip
    return [
        f"## Gateway over HTTP (`alknet-firewall serve`, pool {gw['pool']}, cache off)",
        "",
        "uvicorn on 127.0.0.1 in a subprocess, in front of a fake upstream (raw ASGI on uvicorn, "
        "another subprocess) that answers a fixed completion at once; clients are httpx in this "
        "process (their CPU use competes with the gateway on 2 cores: see `client cores`). "
        f"Gateway start-up {gw['gateway_startup_s']:.1f} s; RSS after the run "
        f"{_f(gw.get('gateway_rss_mib'), 0)} MiB. Statuses of the added-latency run: "
        f"{a.get('gateway_statuses')} (400 = blocked, the upstream is skipped).",
        "",
        "### Added latency (one request at a time, 64-token user message, ms)",
        "",
        _table(["path", "n", "p50", "p95", "p99"], rows),
        "",
        "### Throughput over HTTP",
        "",
        _table(["clients", "req/s", "p50", "p99", "client cores", "statuses"], http_rows),
        "",
    ]


def _render_cold(results: dict[str, Any]) -> list[str]:
    cs = results.get("coldstart")
    rss = results.get("rss")
    L: list[str] = []
    if cs:
        s = cs["script"]
        rows = [
            ["`alknet-firewall screen hello` (whole command)", _f(cs["cli_screen_hello_s"], 2)],
            ["script: interpreter start", _f(s.get("interpreter_s"), 2)],
            ["script: imports (alknet_firewall, torch, transformers)", _f(s.get("import_s"), 2)],
            ["script: `Firewall(settings)` (model + codebook load, no warm-up)",
             _f(s.get("load_s"), 2)],
            ["script: first verdict", _f(s.get("first_verdict_s"), 3)],
            ["script: second verdict", _f(s.get("second_verdict_s"), 3)],
            ["script: new process → first verdict", _f(s.get("to_first_verdict_s"), 2)],
        ]  # fmt: skip
        L += [
            "## Cold start (model cache warm) and memory",
            "",
            f"Medians of {len(cs['cli_runs'])} run(s), seconds. The script builds a default "
            "Firewall (pool 2×1, warm-up off) and screens once.",
            "",
            _table(["step", "s"], rows),
            "",
        ]
    if rss:
        L += [
            f"Peak RSS of a fresh process that builds a Firewall (pool {rss['pool']}) and "
            f"screens {rss['messages']} messages (16–1,024 tokens, a few of 8,192) concurrently: "
            f"**{_f(rss['peak_rss_mib'], 0)} MiB** "
            f"(`VmHWM` {_f(rss['vm_hwm_mib'], 0)} MiB, psutil polling every 20 ms "
            f"{_f(rss['peak_rss_polled_mib'], 0)} MiB); after loading "
            f"{_f(rss['rss_after_load_mib'], 0)} MiB, at the end {_f(rss['rss_end_mib'], 0)} MiB.",
            "",
        ]
    return L


def _render_load(results: dict[str, Any]) -> list[str]:
    sections = results.get("load") or {}
    if not sections:
        return []
    rows = [
        [name, _f(s["wall_s"], 0), _f(s["own_cores"], 2), _f(s["foreign_cores"], 2),
         _f(s["steal_cores"], 2), f"{s['loadavg_start']:.2f} → {s['loadavg_end']:.2f}"]
        for name, s in sections.items()
    ]  # fmt: skip
    return [
        "## CPU use per section",
        "",
        "Cores used by this benchmark's process tree and by everything else (other processes, "
        "hypervisor steal) while each section ran. Anything above ~0.1 foreign cores means the "
        "numbers of that section are pessimistic.",
        "",
        _table(["section", "wall s", "own cores", "other cores", "steal", "load avg"], rows),
        "",
    ]


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    prof = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    log(f"profile {prof.name}; sections {', '.join(s for s in SECTIONS if s in only)}")
    bg = background_load(2.0)
    log(f"background: {bg['busy_cores']:.2f} cores busy, load average {bg['loadavg_1m']:.2f}")
    meter = LoadMeter()
    results: dict[str, Any] = {
        "meta": {
            "profile": prof.name,
            "profile_settings": asdict(prof),
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "started": started,
        },
        "background": bg,
        "load": meter.sections,
    }
    if only != set(SECTIONS):
        results["partial"] = [s for s in SECTIONS if s in only]
    with meter.section("setup"):
        results["environment"] = environment()
        rows = load_corpus(args.corpus)
        fw21 = make_firewall(2, 1)
        d = fw21.model.describe()
        results["meta"]["model"] = {k: d.get(k) for k in ("name", "layers", "dtype", "max_tokens")}
        results["meta"]["codebook"] = fw21.codebook.id
        maker = MessageMaker(fw21.model, [r["text"] for r in rows if r["label"] == 0], seed=0)
        msgs_by_len = {
            n: maker.many(n, max(2, prof.msgs_per_length // (8 if n >= 4096 else 1)))
            for n in LENGTHS
        }
        msgs64 = maker.many(64, 256 if prof.name == "full" else 48)
        replies = maker.many(64, 64 if prof.name == "full" else 8)
        results["meta"]["inputs"] = {
            "corpus": str(args.corpus),
            "benign_texts": sum(1 for r in rows if r["label"] == 0),
            "messages_per_length": {str(n): len(v) for n, v in msgs_by_len.items()},
            "exact_token_counts": all(
                c == n for n, v in msgs_by_len.items() for c in fw21.model.count_tokens(v)
            ),
        }
    try:
        if "latency" in only:
            with meter.section("latency 2×1"):
                results.setdefault("latency", {})["2×1"] = bench_screen_latency(
                    fw21, msgs_by_len, prof
                )
            fw12 = make_firewall(1, 2, like=fw21)
            try:
                with meter.section("latency 1×2"):
                    # The smoke run skips 8,192 tokens here: it only checks the code path.
                    lens = {n: v for n, v in msgs_by_len.items() if not args.quick or n < 4096}
                    results["latency"]["1×2"] = bench_screen_latency(fw12, lens, prof)
            finally:
                fw12.close()
        if "breakdown" in only:
            with meter.section("breakdown"):
                results["breakdown"] = {"1": bench_breakdown(fw21, msgs64, prof.breakdown_n, 2)}
                fw12 = make_firewall(1, 2, like=fw21)
                try:
                    results["breakdown"]["2"] = bench_breakdown(fw12, msgs64, prof.breakdown_n, 2)
                finally:
                    fw12.close()
        if "throughput" in only:
            with meter.section("throughput"):
                results["throughput"] = bench_throughput(fw21, msgs64, prof)
                results["throughput"]["duration_s"] = prof.duration_s
        if "multiturn" in only:
            with meter.section("multiturn"):
                results["multiturn"] = bench_multiturn(fw21, msgs64, replies, prof)
        if "gateway" in only:
            with meter.section("gateway"):
                results["gateway"] = bench_gateway(fw21, msgs64, prof)
    finally:
        fw21.close()
    if "baselines" in only:
        # DeBERTa gets the same token ids as the firewall's messages, capped at 510.
        ids = {}
        for n in prof.base_lengths or deberta_lengths(LENGTHS):
            src = next(m for k, v in msgs_by_len.items() if k >= n for m in v)
            ids[n] = fw21.model.tokenize([src])[0][:n]
        deb: list[dict[str, Any]] = []
        for size in ("xsmall", "base"):
            with meter.section(f"baseline deberta-{size}"):
                deb += bench_deberta(size, ids, prof)
        results["baselines"] = {"deberta": deb}
    if "tfidf" in only:
        with meter.section("baseline tfidf"):
            results["tfidf"] = bench_tfidf(rows, msgs_by_len, prof)
    del fw21
    if "coldstart" in only:
        with meter.section("coldstart"):
            results["coldstart"] = bench_coldstart(prof)
    if "rss" in only:
        with meter.section("rss"):
            mix = [m for n in (16, 64, 256, 1024) for m in msgs_by_len[n]]
            msgs = [mix[i % len(mix)] for i in range(prof.rss_messages)]
            if prof.name == "full":
                msgs[:2] = msgs_by_len[8192][:2]
            results["rss"] = bench_rss(msgs)
    results["meta"]["duration_s"] = time.perf_counter() - t_start
    results["targets"] = evaluate_targets(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny iteration counts")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown results file")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="JSON results (default benchmarks/results.json, or results_quick.json with --quick)",
    )
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus directory")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(SECTIONS)}")
    p.add_argument("--fake-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fake_upstream is not None:
        serve_fake_upstream(args.fake_upstream)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = run(args)
    json_path = args.json or (
        ROOT / "benchmarks" / ("results_quick.json" if args.quick else "results.json")
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, old), encoding="utf-8")
    log(f"wrote {args.out} and {json_path}")
    for t in results["targets"]:
        log(f"   {'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
