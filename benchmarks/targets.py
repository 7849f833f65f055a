"""The targets table: each target, what was measured, the bound, met or not."""

from __future__ import annotations

from benchmarks.archs import DEBERTA_MAX_CONTENT
from benchmarks.harness import sections
from benchmarks.schema import Results, Target


def _deb(results: Results, size: str, dtype: str, threads: int, n: int) -> float | None:
    for r in results.get("baselines", {}).get("deberta", []):
        if (
            r["model"] == f"deberta-v3-{size}"
            and r["dtype"] == dtype
            and r["threads"] == threads
            and r["tokens"] == min(n, DEBERTA_MAX_CONTENT)
        ):
            return float(r["p50"])
    return None


def _screen_p50(results: Results, pool: str, n: int) -> float | None:
    r = results.get("latency", {}).get(pool, {}).get(str(n))
    return float(r["p50"]) if r and r.get("n") else None


def evaluate_targets(results: Results) -> list[Target]:
    """Each target: what was measured, the bound, met or not (None: not measured)."""
    out: list[Target] = []

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
    for sec in sections():  # sections registered with targets of their own
        if sec.targets is not None and sec.name in results:
            out += sec.targets(results)
    return out
