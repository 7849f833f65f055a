"""Detection metrics and reports (``alknet-firewall eval``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import LEVELS

__all__ = [
    "FLAGGED_LEVELS",
    "roc_auc",
    "summarise",
    "to_markdown",
    "tpr_at_fpr",
    "write_report",
]


#: Levels that flag or block under the default actions.
FLAGGED_LEVELS = LEVELS[2:]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float | None:
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    # The lowest threshold whose benign false-positive rate stays within ``fpr``. Scores are
    # clipped at 1.0, so ties at the top can make that threshold unreachable (TPR 0).
    neg = np.sort(scores[~labels])[::-1]
    k = int(np.floor(fpr * len(neg)))
    thr = neg[k] if k < len(neg) else -np.inf
    return float((scores[labels] > thr).mean())


def summarise(
    labels: Sequence[int],
    kinds: Sequence[str],
    sources: Sequence[str],
    scores: Sequence[float],
    levels: Sequence[str],
    thresholds: dict[str, float],
) -> dict[str, Any]:
    """ROC AUC, TPR at fixed FPRs, and per-source / per-kind rates at the shipped thresholds."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    lv = np.asarray(levels)
    kinds_a, src = np.asarray(kinds), np.asarray(sources)
    flagged = np.isin(lv, FLAGGED_LEVELS)
    blocked = lv == "critical"
    harmful = kinds_a == "harmful_request"
    attack = (y == 1) & ~harmful
    benign = y == 0
    hard = kinds_a == "benign_hard"

    def group(keys: np.ndarray) -> dict[str, Any]:
        out = {}
        for k in sorted(set(keys.tolist())):
            m = keys == k
            out[k] = {
                "n": int(m.sum()),
                "label": round(float(y[m].mean())) if m.any() else None,
                "flagged_rate": float(flagged[m].mean()),
                "blocked_rate": float(blocked[m].mean()),
                "mean_score": float(s[m].mean()),
            }
        return out

    def pair(pos: np.ndarray, neg: np.ndarray) -> dict[str, Any]:
        m = pos | neg
        return {
            "n_pos": int(pos.sum()),
            "n_neg": int(neg.sum()),
            "roc_auc": roc_auc(pos[m], s[m]),
            "tpr_at_1pct_fpr": tpr_at_fpr(pos[m], s[m], 0.01),
            "tpr_at_0.1pct_fpr": tpr_at_fpr(pos[m], s[m], 0.001),
        }

    return {
        "n": len(y),
        "thresholds": thresholds,
        "all_attacks_vs_benign": pair(y == 1, benign),
        "attacks_vs_benign": pair(attack, benign),
        "harmful_vs_benign_hard": pair(harmful, hard),
        "at_thresholds": {
            "attack_flagged_rate": float(flagged[attack].mean()) if attack.any() else None,
            "harmful_flagged_rate": float(flagged[harmful].mean()) if harmful.any() else None,
            "benign_flagged_rate": float(flagged[benign & ~hard].mean())
            if (benign & ~hard).any()
            else None,
            "benign_hard_flagged_rate": float(flagged[hard].mean()) if hard.any() else None,
        },
        "by_source": group(src),
        "by_kind": group(kinds_a),
    }


def write_report(
    report: dict[str, Any], directory: str | Path, scores: np.ndarray, labels: np.ndarray
) -> Path:
    """Write report.json, report.md, roc.png and histogram.png into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    (d / "report.md").write_text(to_markdown(report))
    _plots(
        d,
        np.asarray(scores, dtype=np.float64),
        np.asarray(labels).astype(bool),
        report["thresholds"],
    )
    return d


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def to_markdown(r: dict[str, Any]) -> str:
    lines = ["# Detection report", ""]
    lines += [
        "| comparison | n+ | n− | ROC AUC | TPR @1 % FPR | TPR @0.1 % FPR |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("all_attacks_vs_benign", "attacks_vs_benign", "harmful_vs_benign_hard"):
        p = r[key]
        lines.append(
            f"| {key} | {p['n_pos']} | {p['n_neg']} | {_fmt(p['roc_auc'])} | "
            f"{_fmt(p['tpr_at_1pct_fpr'])} | {_fmt(p['tpr_at_0.1pct_fpr'])} |"
        )
    lines += ["", "At the shipped thresholds (flagged = warning or critical):", ""]
    for k, v in r["at_thresholds"].items():
        lines.append(f"- {k}: {_fmt(v)}")
    lines += [
        "",
        "Thresholds: " + ", ".join(f"{k} {v:.4f}" for k, v in r["thresholds"].items()),
        "",
    ]
    for title, key in (("By source", "by_source"), ("By kind", "by_kind")):
        lines += [
            f"## {title}",
            "",
            "| name | n | label | flagged | blocked | mean score |",
            "|---|---|---|---|---|---|",
        ]
        for name, g in r[key].items():
            lines.append(
                f"| {name} | {g['n']} | {g['label']} | {g['flagged_rate']:.3f} | "
                f"{g['blocked_rate']:.3f} | {g['mean_score']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _plots(d: Path, s: np.ndarray, y: np.ndarray, thresholds: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    if y.any() and (~y).any():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"AUC {roc_auc(y, s):.3f}")
        ax.set_xscale("log")
        ax.set_xlim(1e-3, 1)
    ax.set_xlabel("false-positive rate (benign flagged)")
    ax.set_ylabel("true-positive rate (attacks caught)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(d / "roc.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 51)
    ax.hist(s[~y], bins=bins, alpha=0.6, label="benign", density=True)
    if y.any():
        ax.hist(s[y], bins=bins, alpha=0.6, label="attack", density=True)
    for name, t in thresholds.items():
        ax.axvline(t, ls="--", lw=1, color="k")
        ax.text(t, ax.get_ylim()[1] * 0.9, name, rotation=90, fontsize=8)
    ax.set_xlabel("score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(d / "histogram.png", dpi=110)
    plt.close(fig)
