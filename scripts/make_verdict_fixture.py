#!/usr/bin/env python
"""Write ``tests/data/verdict_fixture.json``: the verdicts of the shipped default codebook on
``tests/data/probes.jsonl`` and a fixed 200-text sample of the corpus.

``tests/test_verdict_fixture.py`` re-screens the same texts and asserts identical actions and
levels and scores within bf16 noise, so refactors provably keep detection behaviour. The fixture
stores where each text comes from (file, 1-based line number) and the sha256 of the text, never
the text itself.

The sample is deterministic: from each ``*.jsonl`` file of the corpus, by sorted file name,
``PER_FILE`` evenly spaced lines (``numpy.linspace`` over its non-blank lines; texts over
``MAX_CHARS`` characters are passed over for the next line), taken round-robin over the files
(every file's first pick, then every file's second, ...) until ``SAMPLE`` texts.

Every text is screened on its own (no batching across texts, one worker with one thread, no
cache), in float32, with the default settings otherwise.

When the detection changes on purpose (a rebuilt default codebook), regenerate the fixture:

    .venv/bin/python scripts/make_verdict_fixture.py --corpus ../shared/corpus

The test skips (with the reason) while the fixture's codebook id differs from the shipped one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from alknet_firewall.config import load_settings
from alknet_firewall.firewall import Firewall
from alknet_firewall.training.corpus import iter_jsonl

ROOT = Path(__file__).resolve().parents[1]
PROBES = ROOT / "tests" / "data" / "probes.jsonl"
FIXTURE = ROOT / "tests" / "data" / "verdict_fixture.json"
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
SAMPLE = 200
PER_FILE = 7
MAX_CHARS = 4000
DECIMALS = 4

__all__ = ["SAMPLE", "fixture_settings", "sample_corpus", "screen_one", "sha256_text"]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _lines(path: Path) -> list[tuple[int, str]]:
    return [(n, obj["text"]) for n, obj in iter_jsonl(path)]


def sample_corpus(corpus: Path) -> list[tuple[str, int, str]]:
    """(file name, line number, text) of the fixed corpus sample."""
    picks: list[list[tuple[str, int, str]]] = []
    for f in sorted(corpus.glob("*.jsonl")):
        rows = _lines(f)
        chosen: list[tuple[str, int, str]] = []
        used: set[int] = set()
        for i in np.linspace(0, len(rows) - 1, PER_FILE).round().astype(int):
            j = int(i)
            while j < len(rows) and (j in used or len(rows[j][1]) > MAX_CHARS):
                j += 1
            if j < len(rows):
                used.add(j)
                chosen.append((f.name, rows[j][0], rows[j][1]))
        picks.append(chosen)
    out: list[tuple[str, int, str]] = []
    for r in range(PER_FILE):
        for chosen in picks:
            if r < len(chosen) and len(out) < SAMPLE:
                out.append(chosen[r])
    return out


def probes() -> Iterator[tuple[str, int, str]]:
    for n, text in _lines(PROBES):
        yield PROBES.name, n, text


def fixture_settings() -> Any:
    """One worker, one thread (no burst onto idle cores), no cache, no warm-up batch shared
    with a text; the model runs in float32, whose scores do not depend on the thread count or
    the batch shape (bfloat16's do, by ~1e-3, and a machine-dependent ``dtype: auto`` would move
    them too)."""
    return load_settings(
        None,
        model={"dtype": "float32"},
        pool={
            "workers": 1,
            "threads_per_worker": 1,
            "burst_threads": 1,
            "cache_size": 0,
            "warmup": False,
        },
    )


def screen_one(fw: Firewall, text: str) -> dict[str, Any]:
    v = fw.screen(text)
    return {
        "action": v.action,
        "level": v.level,
        "score": round(v.score, DECIMALS),
        "signals": {k: round(x, DECIMALS) for k, x in sorted(v.signals.items())},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--out", type=Path, default=FIXTURE)
    args = ap.parse_args(argv)
    texts = [*probes(), *sample_corpus(args.corpus)]
    entries = []
    with Firewall(fixture_settings()) as fw:
        for i, (source, line, text) in enumerate(texts):
            entries.append(
                {
                    "source": source,
                    "line": line,
                    "sha256": sha256_text(text),
                    **screen_one(fw, text),
                }
            )
            if (i + 1) % 50 == 0:
                print(f"{i + 1}/{len(texts)}", file=sys.stderr)
        codebook_id = fw.codebook.id
    data = {
        "codebook_id": codebook_id,
        "decimals": DECIMALS,
        "corpus_sample": {"size": SAMPLE, "per_file": PER_FILE, "max_chars": MAX_CHARS},
        "texts": entries,
    }
    args.out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    actions = {a: sum(e["action"] == a for e in entries) for a in ("allow", "flag", "block")}
    print(f"wrote {args.out}: {len(entries)} texts, codebook {codebook_id}, {actions}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
