#!/usr/bin/env python
"""Interleaved A/B timing for a noisy machine: every configuration is timed in short rounds,
round-robin, so background load hits all of them alike (issue 15's measurements).

    .venv/bin/python benchmarks/interleaved.py [--rounds 8] [--per-round 4] [--seconds 3]

Prints one JSON object: screen p50 at 64 tokens per backend/dtype/threads, the DeBERTa-v3-xsmall
float32 forward at the same threads, 1- and 32-client throughput per pool, the foreign load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baselines import build_deberta
from benchmarks.bench_dtype import settings
from benchmarks.bench_screen import closed_loop
from benchmarks.harness import ROOT
from benchmarks.inputs import MessageMaker, load_corpus


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--per-round", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args()
    import torch

    from alknet_firewall.firewall import Firewall
    from alknet_firewall.hardware import ForeignLoad, usable_cores

    load = ForeignLoad(0.1)
    rows = load_corpus(ROOT.parent / "shared" / "corpus")
    benign = [r["text"] for r in rows if r.get("label") == 0][:400]
    cores = usable_cores()
    threads = [int(t) for t in args.threads.split(",")]
    fws: dict[str, Any] = {}
    for th in threads:
        for dt in ("float32", "bfloat16"):
            fws[f"torch {dt} x{th}"] = Firewall(settings(dtype=dt, threads=th))
        for prec in ("float32", "int8"):
            fws[f"onnx {prec} x{th}"] = Firewall(
                settings(backend="onnx", onnx={"precision": prec}, threads=th, dtype="float32")
            )
    fws["default (auto, burst)"] = Firewall(settings(workers=cores, burst=0))
    maker = MessageMaker(next(iter(fws.values())).model, benign)
    msgs = maker.many(64, 32)
    ids = [fws["torch float32 x1"].model.tokenize([m])[0][:64] for m in msgs]
    deb = build_deberta("xsmall", "float32")
    times: dict[str, list[float]] = {k: [] for k in fws}
    for th in threads:
        times[f"deberta-xsmall float32 x{th}"] = []
    foreign = []
    for fw in fws.values():
        for m in msgs[:3]:
            fw.screen(m)
    k = 0
    for _ in range(args.rounds):
        for name, fw in fws.items():
            for _ in range(args.per_round):
                t = time.perf_counter()
                fw.screen(msgs[k % len(msgs)])
                times[name].append((time.perf_counter() - t) * 1000)
                k += 1
        for th in threads:
            torch.set_num_threads(th)
            for _ in range(args.per_round):
                x = torch.tensor([[1, *ids[k % len(ids)], 2]])
                t = time.perf_counter()
                with torch.inference_mode():
                    deb(input_ids=x, attention_mask=torch.ones_like(x))
                times[f"deberta-xsmall float32 x{th}"].append((time.perf_counter() - t) * 1000)
                k += 1
        foreign.append(load.cores())
    out: dict[str, Any] = {
        "p50_ms": {k: round(float(np.median(v)), 2) for k, v in times.items()},
        "n": {k: len(v) for k, v in times.items()},
        "foreign_cores_mean": round(float(np.mean(foreign)), 2),
        "dtype_auto": fws["default (auto, burst)"].model.describe().get("dtype"),
    }
    print(json.dumps(out), flush=True)
    if not args.skip_throughput:
        pools = {
            "default (auto dtype, burst)": fws["default (auto, burst)"],
            "previous default (bfloat16, no burst)": Firewall(
                settings(dtype="bfloat16", workers=cores, threads=1, burst=1)
            ),
            "onnx float32 (default pool)": Firewall(
                settings(backend="onnx", onnx={"precision": "float32"}, workers=cores, burst=0)
            ),
            "onnx int8 (default pool)": Firewall(
                settings(backend="onnx", onnx={"precision": "int8"}, workers=cores, burst=0)
            ),
        }
        thr: dict[str, dict[str, list[float]]] = {k: {"1": [], "32": []} for k in pools}
        for _ in range(2):
            for name, fw in pools.items():
                for c in (1, 32):

                    async def send(i: int, fw: Any = fw) -> str:
                        v = await fw.ascreen(msgs[i % len(msgs)])
                        return "error" if v.error else "ok"

                    r = asyncio.run(closed_loop(send, c, args.seconds))
                    thr[name][str(c)].append(r["msg_per_s"])
        out["throughput_msg_s"] = {
            k: {c: round(float(np.mean(v)), 1) for c, v in d.items()} for k, d in thr.items()
        }
        out["foreign_cores_after"] = round(load.cores(), 2)
        for fw in pools.values():
            fw.close()
    for fw in fws.values():
        fw.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
