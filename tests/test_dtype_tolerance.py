"""One codebook, two dtypes: scores under float32 and bfloat16 stay within SCORE_TOLERANCE.

A codebook is fitted in one dtype (``model.dtype`` in its metadata) and ``model.dtype: auto``
may run the other one on a given machine. Measured on the probe set and a corpus sample
(docs/adr/0005-cpu-defaults.md): max |Δscore| 0.050, p95 0.006 with the span-head codebook. The
test allows 0.06 and demands identical actions on the clear-cut probes (score farther than the
tolerance from every threshold).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TEXTS

SCORE_TOLERANCE = 0.06
ROOT = Path(__file__).resolve().parents[1]
PROBES = ROOT / "tests" / "data" / "probes.jsonl"
CORPUS = ROOT.parent / "shared" / "corpus"


def _texts(per_source: int = 1) -> tuple[list[str], int]:
    probes = [json.loads(line)["text"] for line in PROBES.read_text().split("\n") if line]
    sample: list[str] = []
    rng = random.Random(0)
    for f in sorted(CORPUS.glob("*.jsonl")) if CORPUS.is_dir() else []:
        rows = [json.loads(line) for line in f.read_text().split("\n") if line.strip()]
        sample += [
            str(r.get("text", ""))[:800] for r in rng.sample(rows, min(per_source, len(rows)))
        ]
    return probes + sample + list(TEXTS), len(probes)


def _screen(dtype: str, texts: list[str]) -> tuple[np.ndarray, list[str], dict[str, float]]:
    from alknet_firewall.config import load_settings
    from alknet_firewall.firewall import Firewall

    s = load_settings(
        None, model={"dtype": dtype}, pool={"workers": 1, "cache_size": 0, "warmup": False}
    )
    with Firewall(s) as fw:
        assert fw.model.describe()["dtype"] == dtype
        vs = [fw.screen(t) for t in texts]
    return np.array([v.score for v in vs]), [v.action for v in vs], vs[0].thresholds


@pytest.mark.slow
def test_scores_hold_across_dtypes(embedded_location: Any) -> None:
    texts, n_probes = _texts()
    f32, act32, thresholds = _screen("float32", texts)
    b16, act16, _ = _screen("bfloat16", texts)
    delta = np.abs(f32 - b16)
    assert delta.max() <= SCORE_TOLERANCE, (delta.max(), texts[int(delta.argmax())][:80])
    clear_cut = [
        i
        for i in range(n_probes)
        if all(abs(f32[i] - t) > SCORE_TOLERANCE for t in thresholds.values())
    ]
    assert len(clear_cut) >= n_probes // 2
    assert [act32[i] for i in clear_cut] == [act16[i] for i in clear_cut]
