"""Section 7: cold start and peak RSS, measured in fresh processes (``coldstart_child.py``
and ``rss_child.py`` beside this file)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Context, Profile, cli_command, log, pool_label, section
from benchmarks.schema import RSS

HERE = Path(__file__).resolve().parent
COLD_CHILD = HERE / "coldstart_child.py"
RSS_CHILD = HERE / "rss_child.py"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def bench_coldstart(prof: Profile) -> dict[str, Any]:
    cli: list[dict[str, Any]] = []
    for _ in range(prof.cold_repeats):
        t0 = time.perf_counter()
        p = subprocess.run(
            [*cli_command(), "screen", "hello"], capture_output=True, text=True, env=_child_env(),
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
            [sys.executable, str(COLD_CHILD)], capture_output=True, text=True,
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


def bench_rss(msgs: list[str], workers: int = 2, threads: int = 1) -> RSS:
    import psutil

    with tempfile.TemporaryDirectory(prefix="alknet-bench-") as tmp:
        path = Path(tmp) / "msgs.json"
        path.write_text(json.dumps(msgs), encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, str(RSS_CHILD), str(path), str(workers), str(threads)],
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


@section("coldstart", phase="process", order=80)
def _coldstart(ctx: Context) -> dict[str, Any]:
    return bench_coldstart(ctx.prof)


@section("rss", phase="process", order=90)
def _rss(ctx: Context) -> RSS:
    mix = [m for n in (16, 64, 256, 1024) for m in ctx.msgs_by_len[n]]
    msgs = [mix[i % len(mix)] for i in range(ctx.prof.rss_messages)]
    if ctx.prof.name == "full":
        msgs[:2] = ctx.msgs_by_len[8192][:2]
    return bench_rss(msgs)
