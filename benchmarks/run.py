#!/usr/bin/env python
"""alknet-firewall benchmark harness: one command, one results table.

    .venv/bin/python benchmarks/run.py                 # full run (~15-25 min on 2 quiet cores)
    .venv/bin/python benchmarks/run.py --quick         # smoke run (< 3 min); NOT results
    .venv/bin/python -m benchmarks.run --only latency  # the same, as a module

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

Layout (this file is the CLI and the orchestration only)::

    harness.py        Profile (FULL, QUICK), summarize, time_loop, LoadMeter, environment,
                      the firewalls under test, and the section registry (Context, section)
    inputs.py         load_corpus, MessageMaker (texts cut to exact token counts)
    schema.py         Results and the other TypedDicts of results.json
    bench_screen.py   latency, breakdown, throughput, multiturn (in process)
    bench_gateway.py  gateway over HTTP, in front of fake_upstream.py (python -m)
    baselines.py      DeBERTa-v3 architectures (archs.py) and TF-IDF + LR
    bench_process.py  coldstart and rss (coldstart_child.py, rss_child.py: fresh processes)
    targets.py        the targets table;  report.py: docs/benchmarks.md
    archs.py          model configs shared with gpu_bench.py (imports no alknet_firewall)

Adding a section: create ``benchmarks/bench_<topic>.py`` (run.py imports every such file; no
other file needs editing) and register one function per section::

    from benchmarks.harness import Context, make_firewall, section, summarize, time_loop

    def _render(results) -> list[str]:          # optional: markdown after the built-in tables
        return ["## My topic", "", ...]

    @section("my_topic", phase="model", order=75, render=_render)
    def _my_topic(ctx: Context) -> dict:
        ...                                     # returns what results.json stores as "my_topic"

``phase`` says when it runs: ``firewall`` (the shared 2×1 firewall ``ctx.firewall`` is open),
``model`` (it is closed; ``ctx.model`` still tokenises) or ``process`` (both released: for
sections that start fresh processes); ``order`` sorts within a phase (built-ins 10–90).
``ctx`` carries the profile (``ctx.prof``, ``ctx.quick``), the corpus rows, the messages by
token count (``ctx.msgs_by_len``, ``ctx.msgs64``) and the load meter. ``--only my_topic``
selects it; ``targets=`` adds rows to the targets table; add the result's key to
``schema.Results``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the harness as the ``benchmarks`` package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.harness import (
    FULL,
    LENGTHS,
    QUICK,
    ROOT,
    Context,
    LoadMeter,
    background_load,
    environment,
    log,
    make_firewall,
    run_section,
    sections,
)
from benchmarks.inputs import MessageMaker, load_corpus
from benchmarks.report import render
from benchmarks.schema import Results
from benchmarks.targets import evaluate_targets

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
#: Section modules, imported in this order; any other ``benchmarks/bench_*.py`` follows.
SECTION_MODULES = ("bench_screen", "bench_gateway", "baselines", "bench_process")


def load_sections() -> list[str]:
    """Import every section module (they register their sections); the section names."""
    found = sorted(p.stem for p in Path(__file__).resolve().parent.glob("bench_*.py"))
    for name in (*SECTION_MODULES, *(n for n in found if n not in SECTION_MODULES)):
        importlib.import_module(f"benchmarks.{name}")
    return [s.name for s in sections()]


def setup(ctx: Context) -> None:
    """The shared firewall (2×1, cache off), the corpus and the messages every section uses."""
    prof, results = ctx.prof, ctx.results
    results["environment"] = environment()
    ctx.rows = rows = load_corpus(ctx.args.corpus)
    ctx.firewall = fw21 = make_firewall(2, 1)
    ctx.model = fw21.model
    d = fw21.model.describe()
    results["meta"]["model"] = {k: d.get(k) for k in ("name", "layers", "dtype", "max_tokens")}
    results["meta"]["codebook"] = fw21.codebook.id
    maker = MessageMaker(fw21.model, [r["text"] for r in rows if r["label"] == 0], seed=0)
    ctx.msgs_by_len = msgs_by_len = {
        n: maker.many(n, max(2, prof.msgs_per_length // (8 if n >= 4096 else 1))) for n in LENGTHS
    }
    ctx.msgs64 = maker.many(64, 256 if prof.name == "full" else 48)
    ctx.replies = maker.many(64, 64 if prof.name == "full" else 8)
    results["meta"]["inputs"] = {
        "corpus": str(ctx.args.corpus),
        "benign_texts": sum(1 for r in rows if r["label"] == 0),
        "messages_per_length": {str(n): len(v) for n, v in msgs_by_len.items()},
        "exact_token_counts": all(
            c == n for n, v in msgs_by_len.items() for c in fw21.model.count_tokens(v)
        ),
    }


def run(args: argparse.Namespace) -> Results:
    prof = QUICK if args.quick else FULL
    names = load_sections()
    only = set(args.only.split(",")) if args.only else set(names)
    unknown = only - set(names)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {', '.join(names)}")
    chosen = [s for s in sections() if s.name in only]
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    log(f"profile {prof.name}; sections {', '.join(s.name for s in chosen)}")
    bg = background_load(2.0)
    log(f"background: {bg['busy_cores']:.2f} cores busy, load average {bg['loadavg_1m']:.2f}")
    meter = LoadMeter()
    results: Results = {
        "meta": {
            "profile": prof.name,
            "profile_settings": asdict(prof),
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "started": started,
        },
        "background": bg,
        "load": meter.sections,
    }
    if only != set(names):
        results["partial"] = [s.name for s in chosen]
    ctx = Context(args=args, prof=prof, meter=meter, results=results)
    with meter.section("setup"):
        setup(ctx)
    try:
        for sec in chosen:
            if sec.phase == "firewall":
                run_section(sec, ctx)
    finally:
        ctx.firewall.close()
    for sec in chosen:
        if sec.phase == "model":
            run_section(sec, ctx)
    ctx.firewall = ctx.model = None
    for sec in chosen:
        if sec.phase == "process":
            run_section(sec, ctx)
    results["meta"]["duration_s"] = time.perf_counter() - t_start
    results["targets"] = evaluate_targets(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    names = load_sections()
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny iteration counts")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown results file")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="JSON results (default benchmarks/results.json, or results_quick.json with --quick)",
    )
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus directory")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(names)}")
    args = p.parse_args(argv)
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
