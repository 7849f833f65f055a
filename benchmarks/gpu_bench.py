#!/usr/bin/env python
"""GPU forward-pass benchmark: SmolLM2-135M (first 8 layers, what the firewall runs) against the
DeBERTa-v3-xsmall and -base architectures of Prompt Guard 2 22M / ProtectAI v2 / LLM Guard.

Self-contained: needs only torch and transformers (5.x) and ``archs.py`` beside it (the model
configs, shared with the CPU harness), no network, no weights, no gguf, no alknet_firewall.
Every model is built from its config with random weights, so the numbers are latency and
throughput only (never accuracy).

    python benchmarks/gpu_bench.py              # on a CUDA machine, < 4 minutes
    python benchmarks/gpu_bench.py --quick      # smoke test on the CPU (tiny counts)

Measures, in bf16 under ``torch.inference_mode``: batch-1 latency (CUDA events, per call) and
throughput at batch 1/8/32/128/256, for 64- and 512-token inputs (no padding), plus batch-1
latency replayed from a CUDA graph where capture works. ``--compile`` also tries
``torch.compile`` at batch 1 / 64 tokens if the time budget allows. Prints a markdown table and,
when ``$OUT`` is set, writes ``$OUT/gpu.md`` and ``$OUT/gpu.json``.

Over ~450 lines on purpose: self-contained, so that it runs on a bare GPU machine with only
this file and ``archs.py`` copied there.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:6.1f}s] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Models (random weights)
# --------------------------------------------------------------------------------------------
def _load_archs() -> Any:
    """``archs.py`` beside this file, loaded by path (this script needs no package on the path;
    archs.py imports only transformers)."""
    import importlib.util

    path = Path(__file__).resolve().with_name("archs.py")
    spec = importlib.util.spec_from_file_location("_alknet_bench_archs", path)
    assert spec is not None and spec.loader is not None, f"{path} is missing"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_archs = _load_archs()
#: The architectures, defined once in archs.py (shared with the CPU harness).
smollm2_config = _archs.smollm2_config
deberta_config = _archs.deberta_config


def build(name: str, device: Any, dtype: Any, smollm_layers: int) -> tuple[Any, int]:
    """(model in eval mode on ``device`` in ``dtype``, vocabulary size)."""
    import torch

    torch.manual_seed(0)
    if name.startswith("smollm2"):
        from transformers import LlamaModel

        cfg = smollm2_config(smollm_layers)
        with contextlib.suppress(Exception):
            cfg._attn_implementation = "sdpa"
        with torch.device(device):
            model = LlamaModel(cfg)
        vocab = cfg.vocab_size
    else:
        from transformers import DebertaV2ForSequenceClassification

        cfg = deberta_config(name.rsplit("-", 1)[1])
        with torch.device(device):
            model = DebertaV2ForSequenceClassification(cfg)
        vocab = cfg.vocab_size
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype), vocab


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
class Timer:
    """CUDA events on a GPU, perf_counter on the CPU; milliseconds."""

    def __init__(self, device: Any) -> None:
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def each(self, fn: Callable[[], Any], iters: int) -> list[float]:
        out = []
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            for _ in range(iters):
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end))
        else:
            for _ in range(iters):
                t = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t) * 1000.0)
        return out

    def block(self, fn: Callable[[], Any], iters: int) -> float:
        """Mean ms per call over ``iters`` back-to-back calls."""
        self.sync()
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t) * 1000.0 / iters


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def inputs(vocab: int, batch: int, tokens: int, device: Any, mask: bool = True) -> dict[str, Any]:
    import torch

    g = torch.Generator(device="cpu").manual_seed(batch * 10007 + tokens)
    ids = torch.randint(5, min(vocab, 30000), (batch, tokens), generator=g).to(device)
    out = {"input_ids": ids}
    if mask:
        out["attention_mask"] = torch.ones_like(ids)
    return out


def graph_latency(
    model: Any,
    vocab: int,
    row: dict[str, Any],
    extra: dict[str, Any],
    timer: Timer,
    args: argparse.Namespace,
    device: Any,
) -> None:
    """Batch-1 latency replayed from a CUDA graph (with the mask, else without); on failure
    the reason goes into ``row["graph_error"]``."""
    import torch

    row["graph_p50_ms"] = None
    replay = None
    errors = []
    for mask in (True, False):
        try:
            replay = cuda_graph(model, {**inputs(vocab, 1, row["tokens"], device, mask), **extra})
            row["graph_mask"] = mask
            break
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc)[:100]}")
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
    if replay is None:
        row["graph_error"] = errors[-1]
        log(f"  CUDA graph failed: {row['graph_error']}")
        return
    lat = timer.each(replay, args.latency_iters)
    row["graph_p50_ms"] = statistics.median(lat)
    log(f"  {row['model']} {row['tokens']} tok, CUDA graph: {row['graph_p50_ms']:.2f} ms")


def cuda_graph(model: Any, x: dict[str, Any]) -> Callable[[], Any]:
    """A replay function of one captured forward pass (raises where capture fails)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            model(**x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(**x)
    torch.cuda.synchronize()
    return graph.replay


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    device = torch.device(args.device)
    dtype = torch.bfloat16
    timer = Timer(device)
    deadline = T0 + args.budget_s
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        env["cpu_threads"] = torch.get_num_threads()
    log(f"environment: {env}")
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name in args.models:
        if time.perf_counter() > deadline:
            skipped.append(f"{name} (time budget)")
            continue
        try:
            bench_model(name, args, device, dtype, timer, deadline, rows, skipped)
        except Exception as exc:  # one model failing must not lose the others' numbers
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            skipped.append(f"{name} ({type(exc).__name__}: {str(exc)[:100]})")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "environment": env,
        "rows": rows,
        "skipped": skipped,
        "seconds": time.perf_counter() - T0,
        "quick": args.quick,
        "batches": list(args.batches),
    }


def bench_model(
    name: str,
    args: argparse.Namespace,
    device: Any,
    dtype: Any,
    timer: Timer,
    deadline: float,
    rows: list[dict[str, Any]],
    skipped: list[str],
) -> None:
    import torch

    t = time.perf_counter()
    model, vocab = build(name, device, dtype, args.smollm_layers)
    params = sum(p.numel() for p in model.parameters())
    log(f"built {name}: {params / 1e6:.1f} M parameters in {time.perf_counter() - t:.1f}s")
    extra = {"use_cache": False} if name.startswith("smollm2") else {}
    with torch.inference_mode():
        for tokens in args.lengths:
            label = f"smollm2-{args.smollm_layers}l" if name.startswith("smollm2") else name
            row: dict[str, Any] = {"model": label, "tokens": tokens, "params_m": params / 1e6}
            rows.append(row)
            # Batch-1 latency: per-call events.
            fwd = functools.partial(model, **inputs(vocab, 1, tokens, device), **extra)
            for _ in range(args.warmup):
                fwd()
            timer.sync()
            lat = timer.each(fwd, args.latency_iters)
            row["b1_p50_ms"] = statistics.median(lat)
            row["b1_p90_ms"] = percentile(lat, 0.9)
            row["b1_min_ms"] = min(lat)
            log(f"  {name} {tokens} tok batch 1: p50 {row['b1_p50_ms']:.2f} ms")
            # Throughput per batch size: back-to-back calls.
            row["msg_per_s"] = {}
            for batch in args.batches:
                if time.perf_counter() > deadline:
                    skipped.append(f"{name} {tokens} tok batch {batch} (time budget)")
                    continue
                try:
                    xb = inputs(vocab, batch, tokens, device)
                    fwd_b = functools.partial(model, **xb, **extra)
                    for _ in range(args.warmup):
                        fwd_b()
                    one = timer.block(fwd_b, 1)
                    iters = max(
                        args.min_iters,
                        min(args.max_iters, int(args.block_s * 1000 / max(one, 1e-3))),
                    )
                    ms = timer.block(fwd_b, iters)
                    row["msg_per_s"][str(batch)] = batch * 1000.0 / ms
                    log(f"  {name} {tokens} tok batch {batch}: {batch * 1000 / ms:,.0f} msg/s")
                    del xb, fwd_b
                except torch.cuda.OutOfMemoryError:
                    row["msg_per_s"][str(batch)] = "OOM"
                    torch.cuda.empty_cache()
                    log(f"  {name} {tokens} tok batch {batch}: out of memory")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        # CUDA graphs last: a failed capture must not disturb the eager numbers.
        if device.type == "cuda" and not args.no_graphs:
            for row in (r for r in rows if r["model"] == label):
                graph_latency(model, vocab, row, extra, timer, args, device)
    if args.compile and device.type == "cuda":
        row_c = next(r for r in rows if r["model"] == label and r["tokens"] == args.lengths[0])
        if deadline - time.perf_counter() < 75:
            row_c["compile_error"] = "skipped (time budget)"
        else:
            try:
                t = time.perf_counter()
                cm = torch.compile(model, mode="reduce-overhead")
                x = {**inputs(vocab, 1, args.lengths[0], device), **extra}
                with torch.inference_mode():
                    for _ in range(3):
                        cm(**x)
                    clat = timer.each(functools.partial(cm, **x), args.latency_iters)
                row_c["compile_p50_ms"] = statistics.median(clat)
                row_c["compile_s"] = time.perf_counter() - t
                log(f"  {name} compiled: {row_c['compile_p50_ms']:.2f} ms")
            except Exception as exc:
                row_c["compile_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    del model


def _num(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else "–"


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    where = env.get("gpu") or f"CPU ({env.get('cpu_threads')} threads)"
    head = (
        f"**{where}**, torch {env['torch']}, transformers {env['transformers']}"
        + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
        + f"; bf16, `torch.inference_mode`, random weights (latency/throughput only); "
        f"{res['seconds']:.0f} s in all."
    )
    lines = []
    if res["quick"]:
        lines += ["> SMOKE RUN (`--quick`): tiny iteration counts; not results.", ""]
    lines += [head, ""]
    batches = res["batches"]
    cols = ["model", "tokens", "batch 1 p50 ms", "p90", "CUDA graph p50"]
    cols += [f"b{b} msg/s" for b in batches]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["rows"]:
        g = r.get("graph_p50_ms")
        gcell = f"{g:.2f}" if g is not None else ("failed" if "graph_error" in r else "–")
        if r.get("compile_p50_ms") is not None:
            gcell += f" (compile: {r['compile_p50_ms']:.2f})"
        cells = [
            r["model"],
            str(r["tokens"]),
            _num(r.get("b1_p50_ms")),
            _num(r.get("b1_p90_ms")),
            gcell,
        ]
        for b in batches:
            v = r.get("msg_per_s", {}).get(str(b))
            cells.append(f"{v:,.0f}" if isinstance(v, float) else (v or "–"))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"{r['model']} {r['tokens']}: CUDA graph {r['graph_error']}"
        for r in res["rows"]
        if "graph_error" in r
    ]
    notes += [
        f"{r['model']}: compile {r['compile_error']}" for r in res["rows"] if "compile_error" in r
    ]
    if res["skipped"]:
        notes.append("skipped: " + ", ".join(res["skipped"]))
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    lines.append("")
    lines.append(
        "smollm2-8l: LlamaModel with SmolLM2-135M's config (hidden 576, 9 heads / 3 KV heads, "
        "intermediate 1536, vocab 49152, rope θ 1e5), first 8 of 30 layers, SDPA attention, no "
        "LM head. deberta-v3-*: DebertaV2ForSequenceClassification (relative attention, 256 "
        "position buckets, p2c+c2p). Inputs: random ids, no padding, all-ones mask."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU smoke test with tiny counts")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu with --quick)")
    p.add_argument(
        "--models",
        default="smollm2-8l,deberta-v3-xsmall,deberta-v3-base",
        help="comma-separated: smollm2-8l, deberta-v3-xsmall, deberta-v3-base",
    )
    p.add_argument("--lengths", default="64,512")
    p.add_argument("--batches", default="1,8,32,128,256")
    p.add_argument("--smollm-layers", type=int, default=8)
    p.add_argument("--budget-s", type=float, default=200.0, help="stop starting new work after")
    p.add_argument("--no-graphs", action="store_true", help="skip CUDA graph capture")
    p.add_argument("--compile", action="store_true", help="also try torch.compile at batch 1")
    args = p.parse_args(argv)
    import torch

    if args.device is None:
        args.device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = ("smollm2-8l", "deberta-v3-xsmall", "deberta-v3-base")
    unknown = [m for m in args.models if m not in known]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {', '.join(known)}")
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.batches = [int(x) for x in args.batches.split(",")]
    if args.quick:
        args.lengths = [n for n in args.lengths if n <= 64] or [64]
        args.batches = [b for b in args.batches if b <= 8]
        args.warmup, args.latency_iters, args.min_iters, args.max_iters, args.block_s = (
            1,
            2,
            1,
            1,
            0.0,
        )
    else:
        args.warmup, args.latency_iters, args.min_iters, args.max_iters, args.block_s = (
            5,
            50,
            3,
            500,
            0.4,
        )
    res = run(args)
    md = markdown(res)
    sys.stdout.write(md)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu.md").write_text(md, encoding="utf-8")
        (Path(out) / "gpu.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        log(f"wrote {out}/gpu.md and gpu.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
