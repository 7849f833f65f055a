"""Section 6: baselines on the same inputs and threads: DeBERTa-v3-base/-xsmall architectures
(random weights: latency only; configs in ``archs.py``) and a TF-IDF + logistic regression
detector fitted on the corpus (latency, and leave-source-out AUC)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.archs import DEBERTA_MAX_CONTENT, deberta_config
from benchmarks.harness import LENGTHS, Context, Profile, log, section, summarize, time_loop
from benchmarks.schema import DebertaRow

#: Characters of each corpus text the TF-IDF baseline is fitted on (bounds fitting time).
TFIDF_TRAIN_CHARS = 4000


def build_deberta(size: str, dtype: str = "float32") -> Any:
    """``DebertaV2ForSequenceClassification`` with random weights (latency only)."""
    import torch
    from transformers import DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(deberta_config(size))
    model.eval().requires_grad_(False)
    return model.to(getattr(torch, dtype))


def deberta_lengths(lengths: Sequence[int]) -> list[int]:
    return sorted({min(n, DEBERTA_MAX_CONTENT) for n in lengths})


def bench_deberta(
    size: str,
    token_ids: dict[int, list[int]],
    prof: Profile,
    *,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    threads: Sequence[int] = (2, 1),
) -> list[dict[str, Any]]:
    """Batch-1 forward latency of one architecture at each (capped) length.

    ``token_ids[n]``: content token ids (at least ``n``) from the same messages the firewall
    screens; DeBERTa gets ``[CLS] + ids[:n] + [SEP]`` (ids < 49,152 are valid in its vocabulary).
    """
    import torch

    rows: list[dict[str, Any]] = []
    model = build_deberta(size)
    prev = torch.get_num_threads()
    try:
        for dtype in dtypes:
            model = model.to(getattr(torch, dtype))
            for th in threads:
                torch.set_num_threads(th)
                for n, ids in sorted(token_ids.items()):
                    x = torch.tensor([[1, *ids[:n], 2]], dtype=torch.long)
                    mask = torch.ones_like(x)

                    def call(_i: int, m: Any = model, x: Any = x, mask: Any = mask) -> None:
                        with torch.inference_mode():
                            m(input_ids=x, attention_mask=mask)

                    ms = time_loop(
                        call,
                        warmup=prof.warmup,
                        min_n=prof.base_min,
                        max_n=prof.base_max,
                        budget_s=prof.base_budget_s,
                    )
                    rows.append(
                        {
                            "model": f"deberta-v3-{size}",
                            "dtype": dtype,
                            "threads": th,
                            "tokens": n,
                            "seq_len": n + 2,
                            **summarize(ms),
                        }
                    )
                    log(f"   deberta-{size} {dtype} {th}t {n:4d} tok: p50 {rows[-1]['p50']:.1f} ms")
    finally:
        torch.set_num_threads(prev)
    return rows


def tfidf_pipeline() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline

    features = FeatureUnion(
        [
            (
                "word",
                TfidfVectorizer(
                    analyzer="word", ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                    max_features=200_000,
                ),
            ),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True,
                    max_features=300_000,
                ),
            ),
        ]
    )  # fmt: skip
    return make_pipeline(
        features, LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced")
    )


def tfidf_group(row: dict[str, Any]) -> str:
    """Source, except that harmful questions and jailbreak templates filled with them share a
    group (the corpus README: keep a template and its question on the same side of a split)."""
    if row["filled"] or row["source"] in ("advbench", "harmbench"):
        return "harmful_questions+filled"
    return row["source"]


def tfidf_sample(rows: list[dict[str, Any]], per_source: int | None, seed: int = 0) -> list[dict]:
    if per_source is None:
        return rows
    rng = random.Random(seed)
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["source"], []).append(r)
    out: list[dict[str, Any]] = []
    for src in sorted(by):
        group = by[src]
        out += rng.sample(group, min(per_source, len(group)))
    return out


def bench_tfidf(
    rows: list[dict[str, Any]], msgs_by_len: dict[int, list[str]], prof: Profile
) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    data = tfidf_sample(rows, prof.tfidf_per_source)
    x = [r["text"][:TFIDF_TRAIN_CHARS] for r in data]
    y = np.array([r["label"] for r in data])
    groups = np.array([tfidf_group(r) for r in data])
    res: dict[str, Any] = {"texts": len(data), "groups": len(set(groups.tolist()))}
    t0 = time.perf_counter()
    pipe = tfidf_pipeline().fit(x, y)
    res["fit_s"] = time.perf_counter() - t0
    lat: dict[str, Any] = {}
    for n, msgs in msgs_by_len.items():
        ms = time_loop(
            lambda i, msgs=msgs: pipe.predict_proba([msgs[i % len(msgs)]]),
            warmup=prof.warmup,
            min_n=prof.lat_min,
            max_n=prof.lat_max,
            budget_s=min(prof.lat_budget_s, 3.0),
        )
        lat[str(n)] = summarize(ms)
        log(f"   tfidf {n:5d} tok: p50 {lat[str(n)]['p50']:.2f} ms")
    res["latency"] = lat
    # Leave-source-out: each group is scored by a model fitted without it.
    t0 = time.perf_counter()
    oof = np.zeros(len(y))
    folds = []
    n_splits = min(prof.tfidf_folds, len(set(groups.tolist())))
    for train, test in GroupKFold(n_splits=n_splits).split(x, y, groups):
        m = tfidf_pipeline().fit([x[i] for i in train], y[train])
        oof[test] = m.predict_proba([x[i] for i in test])[:, 1]
        held = sorted(set(groups[test].tolist()))
        fold_auc = roc_auc_score(y[test], oof[test]) if len(set(y[test].tolist())) > 1 else None
        folds.append({"held_out": held, "auc": fold_auc})
    res["auc_leave_source_out"] = float(roc_auc_score(y, oof))
    fold_aucs = [f["auc"] for f in folds if f["auc"] is not None]
    res["auc_mean_fold"] = float(np.mean(fold_aucs)) if fold_aucs else None
    res["folds"] = folds
    res["cv_s"] = time.perf_counter() - t0
    log(f"   tfidf leave-source-out AUC {res['auc_leave_source_out']:.3f}")
    return res


@section("baselines", phase="model", order=60, meter=None)
def _baselines(ctx: Context) -> dict[str, list[DebertaRow]]:
    # DeBERTa gets the same token ids as the firewall's messages, capped at 510.
    ids = {}
    for n in ctx.prof.base_lengths or deberta_lengths(LENGTHS):
        src = next(m for k, v in ctx.msgs_by_len.items() if k >= n for m in v)
        ids[n] = ctx.model.tokenize([src])[0][:n]
    deb: list[Any] = []
    for size in ("xsmall", "base"):
        with ctx.meter.section(f"baseline deberta-{size}"):
            deb += bench_deberta(size, ids, ctx.prof)
    return {"deberta": deb}


@section("tfidf", phase="model", order=70, meter="baseline tfidf")
def _tfidf(ctx: Context) -> dict[str, Any]:
    return bench_tfidf(ctx.rows, ctx.msgs_by_len, ctx.prof)
