"""Sections ``onnx`` and ``onnx_process``: the ONNX Runtime backend (float32 and int8 exports)
against torch — latency at 1 and 2 threads, throughput at 1 and 32 clients, what int8 does to
the verdicts (probe set and a corpus sample), and in fresh processes: cold start to the first
verdict, peak RSS, and that torch is never imported."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_dtype import TOKENS, clients, onnx_targets, p50_screen, settings
from benchmarks.harness import Context, log, section
from benchmarks.schema import Results

HERE = Path(__file__).resolve().parent
CHILD = HERE / "onnx_child.py"
PROBES = HERE.parent / "tests" / "data" / "probes.jsonl"
PRECISIONS = ("float32", "int8")


def ensure_exports(layers: tuple[int, ...]) -> dict[str, float]:
    """Export both precisions once (cached); seconds spent per precision (0: already there)."""
    from alknet_firewall.config import load_settings
    from alknet_firewall.model.onnx import export_onnx, find_onnx_dir

    spent = {}
    for precision in PRECISIONS:
        ms = load_settings(
            None, model={"reading": {"layers": layers}, "onnx": {"precision": precision}}
        ).model
        t0 = time.perf_counter()
        try:
            find_onnx_dir(ms)
            spent[precision] = 0.0
        except Exception:
            export_onnx(ms, precision)
            spent[precision] = time.perf_counter() - t0
    return spent


def _detection_texts(ctx: Context, per_source: int = 6) -> tuple[list[str], int]:
    probes = [json.loads(line)["text"] for line in PROBES.read_text().split("\n") if line]
    by_source: dict[str, list[str]] = {}
    for r in ctx.rows:
        by_source.setdefault(str(r.get("source", "")), []).append(str(r.get("text", ""))[:2000])
    rng = random.Random(0)
    sample = [
        t
        for _, texts in sorted(by_source.items())
        for t in rng.sample(texts, min(per_source, len(texts)))
    ]
    return probes + sample, len(probes)


def _verdicts(fw: Any, texts: list[str]) -> tuple[np.ndarray, list[str]]:
    vs = [fw.screen(t) for t in texts]
    return np.array([v.score for v in vs]), [v.action for v in vs]


@section("onnx", phase="model", order=66, render=lambda r: _render(r))
def _onnx(ctx: Context) -> dict[str, Any]:
    from alknet_firewall.codebook import load_codebook
    from alknet_firewall.firewall import Firewall

    layers = tuple(load_codebook(None).layers)
    out: dict[str, Any] = {"export_s": ensure_exports(layers), "rows": [], "throughput": []}
    msgs = ctx.msgs_by_len[TOKENS]
    for precision in PRECISIONS:
        for threads in (1, 2):
            fw = Firewall(settings(backend="onnx", onnx={"precision": precision}, threads=threads,
                                   dtype="float32"))  # fmt: skip
            try:
                st = p50_screen(fw, msgs, ctx)
            finally:
                fw.close()
            out["rows"].append({"backend": "onnx", "dtype": precision, "threads": threads, **st})
            log(f"   onnx {precision} x{threads}: p50 {st['p50']:.1f} ms")
    # Throughput: default pool (one worker per core), one session using every core.
    from alknet_firewall.hardware import usable_cores

    cores = usable_cores()
    for precision in PRECISIONS:
        fw = Firewall(
            settings(backend="onnx", onnx={"precision": precision}, workers=cores, burst=0)
        )
        try:
            row = {"dtype": precision, "workers": cores}
            for c in (1, 32):
                row[f"clients_{c}"] = clients(fw, ctx.msgs64 or msgs, c, ctx.prof.duration_s / 2)
            out["throughput"].append(row)
            log(f"   onnx {precision} 32 clients: {row['clients_32']['msg_per_s']:.1f} msg/s")
        finally:
            fw.close()
    # Detection: the same texts through torch float32 and each ONNX export.
    texts, n_probes = _detection_texts(ctx, per_source=2 if ctx.quick else 6)
    ref_fw = Firewall(settings(dtype="float32"))
    try:
        ref_scores, ref_actions = _verdicts(ref_fw, texts)
    finally:
        ref_fw.close()
    det = {"probes": n_probes, "corpus": len(texts) - n_probes}
    for precision in PRECISIONS:
        fw = Firewall(
            settings(backend="onnx", onnx={"precision": precision, "threads": 1}, dtype="float32")
        )
        try:
            scores, actions = _verdicts(fw, texts)
        finally:
            fw.close()
        d = np.abs(scores - ref_scores)
        changed = [a != b for a, b in zip(actions, ref_actions, strict=True)]
        det[precision] = {
            "probe_max_delta": float(d[:n_probes].max()),
            "corpus_max_delta": float(d[n_probes:].max()),
            "corpus_p95_delta": float(np.percentile(d[n_probes:], 95)),
            "probe_action_changes": sum(changed[:n_probes]),
            "corpus_action_changes": sum(changed[n_probes:]),
            "changed_probes": [texts[i][:80] for i in range(n_probes) if changed[i]],
        }
        log(f"   onnx {precision} vs torch float32: {det[precision]}")
    out["detection"] = det
    return out


@section(
    "onnx_process",
    phase="process",
    order=95,
    render=lambda r: _render_process(r),
    targets=lambda r: onnx_targets(r),
)
def _onnx_process(ctx: Context) -> dict[str, Any]:
    mix = [m for n in (16, 64, 256, 1024) for m in ctx.msgs_by_len[n]]
    msgs = [mix[i % len(mix)] for i in range(ctx.prof.rss_messages)]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="alknet-bench-") as tmp:
        path = Path(tmp) / "msgs.json"
        path.write_text(json.dumps(msgs), encoding="utf-8")
        for precision in PRECISIONS:
            t0 = time.time()
            p = subprocess.run(
                [sys.executable, str(CHILD), str(path), precision],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if p.returncode != 0:
                raise RuntimeError(f"onnx child failed: {p.stderr[-800:]}")
            d = json.loads(p.stdout.strip().splitlines()[-1])
            out[precision] = {
                "process_to_first_verdict_s": d["t_first"] - t0,
                "imports_s": d["t_import"] - d["t_start"],
                "load_s": d["t_load"] - d["t_import"],
                "first_verdict_s": d["t_first"] - d["t_load"],
                "rss_loaded_mib": d["rss_loaded"] / 2**20,
                "peak_rss_mib": d["vm_hwm"] / 2**20,
                "messages": d["n"],
                "errors": d["errors"],
                "torch_imported": d["torch_imported"],
                "transformers_imported": d["transformers_imported"],
            }
            log(f"   onnx {precision} process: {out[precision]}")
    return out


def _render(results: Results) -> list[str]:
    r: dict[str, Any] = results.get("onnx")  # type: ignore[assignment]
    if not r:
        return []
    lines = [
        "## ONNX Runtime backend",
        "",
        "Latency rows are in the backends-and-dtypes table above. Throughput: pool one worker "
        "per core, one ONNX Runtime session whose intra-op pool uses every core.",
        "",
        "| export | 1 client msg/s | p50 ms | 32 clients msg/s | p50 ms | mean batch |",
        "|---|---|---|---|---|---|",
    ]
    for x in r.get("throughput", []):
        c1, c32 = x["clients_1"], x["clients_32"]
        lines.append(
            f"| {x['dtype']} | {c1['msg_per_s']:.1f} | {c1['p50']:.1f} | {c32['msg_per_s']:.1f} "
            f"| {c32['p50']:.0f} | {c32['mean_batch_size']:.2f} |"
        )
    det = r.get("detection") or {}
    if det:
        lines += [
            "",
            f"Verdicts against torch float32 with the shipped codebook ({det['probes']} probes of "
            f"`tests/data/probes.jsonl`, {det['corpus']} corpus texts):",
            "",
            "| export | probe actions changed | probe max Δscore | corpus actions changed "
            "| corpus max Δscore | corpus p95 Δscore |",
            "|---|---|---|---|---|---|",
        ]
        for precision in PRECISIONS:
            d = det.get(precision)
            if d:
                lines.append(
                    f"| {precision} | {d['probe_action_changes']} | {d['probe_max_delta']:.4f} "
                    f"| {d['corpus_action_changes']} | {d['corpus_max_delta']:.4f} "
                    f"| {d['corpus_p95_delta']:.4f} |"
                )
    lines.append("")
    return lines


def _render_process(results: Results) -> list[str]:
    r: dict[str, Any] = results.get("onnx_process")  # type: ignore[assignment]
    if not r:
        return []
    lines = [
        "### ONNX Runtime in a fresh process (warm cache)",
        "",
        "| export | new process → first verdict s | imports s | load s | RSS loaded MiB "
        "| peak RSS MiB (200 msgs) | torch imported |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision, d in r.items():
        lines.append(
            f"| {precision} | {d['process_to_first_verdict_s']:.2f} | {d['imports_s']:.2f} "
            f"| {d['load_s']:.2f} | {d['rss_loaded_mib']:.0f} | {d['peak_rss_mib']:.0f} "
            f"| {d['torch_imported'] or d['transformers_imported']} |"
        )
    lines.append("")
    return lines
