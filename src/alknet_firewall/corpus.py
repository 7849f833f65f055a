"""Labelled texts for fitting, calibrating and evaluating codebooks (the corpus JSONL schema).

Each line: ``text``, ``label`` (0 benign, 1 attack), ``kind``, ``source`` and optional fields.
Rule-based augmentation derives indirect-injection examples (an injection inside a benign
document) and benign concatenations from the corpus itself; nothing outside it is used.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .errors import BadInputError
from .features import Window, WindowFeatures
from .model.base import IDENTITY_KEYS, ActivationModel
from .normalize import normalize

__all__ = [
    "DOCUMENT_SOURCES",
    "INJECTION_KINDS",
    "Record",
    "augment",
    "cached_extract",
    "extract",
    "files_digest",
    "iter_jsonl",
    "read_jsonl",
    "select_windows",
]


INJECTION_KINDS = ("direct_injection", "prompt_extraction")
DOCUMENT_SOURCES = ("gsm8k", "self_instruct", "oasst", "fastchat", "truthfulqa", "humaneval")


@dataclass(frozen=True)
class Record:
    text: str
    label: int
    kind: str
    source: str
    #: Group kept together in splits (a source; augmented rows keep their origin's group).
    group: str
    extra: dict[str, Any] = field(default_factory=dict)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line; bad JSON names file and line."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{path}:{n}: invalid JSON: {exc}") from None


def read_jsonl(paths: Iterable[str | Path]) -> list[Record]:
    """Read labelled JSONL files (a directory means every ``*.jsonl`` in it)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(sorted(p.glob("*.jsonl")) if p.is_dir() else [p])
    if not files:
        raise BadInputError("no JSONL files given")
    out: list[Record] = []
    for f in files:
        for n, obj in iter_jsonl(f):
            text = obj.get("text")
            if not isinstance(text, str):
                raise BadInputError(f"{f}:{n}: 'text' must be a string")
            label = int(obj.get("label", 0))
            kind = str(obj.get("kind") or ("benign" if label == 0 else "direct_injection"))
            source = str(obj.get("source") or f.stem)
            out.append(Record(text, label, kind, source, source))
    return out


def files_digest(paths: Iterable[str | Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        for f in sorted(p.glob("*.jsonl")) if p.is_dir() else [p]:
            h.update(f.name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def augment(records: Sequence[Record], *, seed: int = 0, indirect: bool = False) -> list[Record]:
    """Rule-based variants: benign concatenations, short benign fragments (the first words of
    benign texts) and, with ``indirect``, injections embedded in benign documents.

    The leave-source-out runs (ADR 0001) kept concatenations and fragments: fragments stop
    "hi" and "ok" from scoring as attacks, concatenations teach that length is not an attack.
    Embedded injections lowered the AUC (0.94 → 0.91): every window of the document is labelled
    an attack, so the heads learnt the documents. They are off by default.
    """
    rng = random.Random(seed)
    docs = [r for r in records if r.label == 0 and r.source in DOCUMENT_SOURCES]
    if not docs:
        return []
    out: list[Record] = []
    injections = [r for r in records if r.kind in INJECTION_KINDS]
    if indirect:
        for r in injections:
            doc = rng.choice(docs)
            sentences = doc.text.split(". ")
            if len(sentences) > 2 and rng.random() < 0.5:
                cut = rng.randrange(1, len(sentences))
                text = ". ".join(sentences[:cut]) + ". " + r.text + " " + ". ".join(sentences[cut:])
            else:
                text = doc.text.rstrip() + "\n\n" + r.text
            out.append(
                Record(
                    text,
                    1,
                    "indirect_injection",
                    f"aug:{r.source}",
                    r.group,
                    {"augmented": True, "doc_source": doc.source},
                )
            )
    # Short benign inputs ("hi", "thanks", a half-typed question) are common in real traffic and
    # rare in the corpus: the first 1-6 words of benign texts stand in for them.
    benign = [r for r in records if r.label == 0]
    for r in rng.sample(benign, min(len(benign), 800)):
        words = r.text.split()
        if len(words) < 2:
            continue
        k = rng.choice((1, 1, 2, 2, 3, 4, 6))
        out.append(
            Record(" ".join(words[:k]), 0, r.kind, f"aug:{r.source}", r.group, {"augmented": True})
        )
    # Two benign documents back to back are still benign.
    for _ in range(max(len(injections), 500)):
        a, b = rng.sample(docs, 2)
        out.append(
            Record(
                a.text.rstrip() + "\n\n" + b.text,
                0,
                "benign",
                f"aug:{a.source}",
                a.group,
                {"augmented": True, "doc_source": b.source},
            )
        )
    return out


def select_windows(wins: list[Window], n_texts: int, max_windows: int | None) -> list[Window]:
    """Keep at most ``max_windows`` evenly spaced windows per text (first and last included)."""
    if not max_windows:
        return wins
    by_text: dict[int, list[Window]] = {}
    for w in wins:
        by_text.setdefault(w.text, []).append(w)
    kept = []
    for t in range(n_texts):
        ws = by_text.get(t, [])
        if len(ws) > max_windows:
            idx = np.unique(np.linspace(0, len(ws) - 1, max_windows).round().astype(int))
            ws = [ws[i] for i in idx]
        kept.extend(ws)
    return kept


def extract(
    model: ActivationModel,
    texts: Sequence[str],
    *,
    max_windows: int | None = None,
    chunk: int = 256,
    progress: bool = True,
    normalize_text: bool = True,
) -> WindowFeatures:
    """Window features of many texts, in chunks, with a progress bar on stderr.

    With :func:`alknet_firewall.fitting.calibrate` this fits a codebook to *your* normal:
    ``calibrate(codebook, extract(model, my_benign_texts))``.
    """
    parts: list[WindowFeatures] = []
    bar = tqdm(total=len(texts), desc="activations", unit="text", disable=not progress)
    for start in range(0, len(texts), chunk):
        batch = list(texts[start : start + chunk])
        if normalize_text:
            batch = [normalize(t) for t in batch]
        wins = model.windows(model.tokenize(batch))
        wins = select_windows(wins, len(batch), max_windows)
        parts.append(model.encode_token_windows(wins, len(batch)))
        bar.update(len(batch))
    bar.close()
    return WindowFeatures.concat(parts)


def cached_extract(
    model: ActivationModel,
    texts: Sequence[str],
    *,
    max_windows: int | None,
    cache: str | Path | None,
    key: dict[str, Any],
    chunk: int = 512,
) -> WindowFeatures:
    """:func:`extract`, reusing ``cache`` (an ``.npz``) text by text.

    The cache is content-addressed: each text's rows are stored under the SHA-256 of its text,
    and the file is valid for one ``key`` (model digest, windowing, dtype, ``max_windows``).
    Texts already in it are not extracted again, so a changed training set pays only for its
    new texts; new rows are written every ``chunk`` texts, so an interrupted extraction resumes
    where it stopped. Duplicated texts are extracted once.
    """
    info = model.describe()
    full_key = json.dumps(
        {
            **{k: v for k, v in key.items() if k not in ("trainset", "seed")},
            "max_windows": max_windows,
            "store": "per-text-v1",
            **{k: info.get(k) for k in IDENTITY_KEYS if k not in ("name", "revision")},
        },
        sort_keys=True,
    )
    if cache is None:
        return extract(model, texts, max_windows=max_windows)
    path = Path(cache)
    store, hashes = None, np.zeros(0, dtype="<U64")
    if path.exists() and WindowFeatures.saved_key(path) == full_key:
        store = WindowFeatures.load(path)
        with np.load(path) as d:
            hashes = d["text_hashes"] if "text_hashes" in d.files else np.zeros(0, dtype="<U64")
        if len(hashes) != store.n_texts:
            store, hashes = None, np.zeros(0, dtype="<U64")
    wanted = [_text_hash(t) for t in texts]
    have = set(hashes.tolist())
    todo = list(dict.fromkeys(h for h in wanted if h not in have))
    if todo:
        by_hash = dict(zip(wanted, texts, strict=True))
        bar = tqdm(total=len(todo), desc="activations (new texts)", unit="text")
        path.parent.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(todo), chunk):
            part_h = todo[start : start + chunk]
            part = extract(
                model, [by_hash[h] for h in part_h], max_windows=max_windows, progress=False
            )
            store = part if store is None else WindowFeatures.concat([store, part])
            hashes = np.concatenate([hashes, np.array(part_h, dtype="<U64")])
            store.save(path, key=full_key, extra={"text_hashes": hashes})
            bar.update(len(part_h))
        bar.close()
    assert store is not None
    index = {h: i for i, h in enumerate(hashes.tolist())}
    return store.select([index[h] for h in wanted])


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
