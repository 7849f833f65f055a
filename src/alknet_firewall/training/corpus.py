"""The labelled corpus (JSONL) and the window features of its texts.

One reader, :func:`read_corpus`, for every labelled file: the corpus a codebook is fitted on
(``../shared/corpus``), evaluation sets (``alknet-firewall eval``) and probes. Each line is a
JSON object: ``text``, ``label`` (0 benign, 1 attack), ``kind`` (optional for benign rows;
an attack must say which kind it is), ``source`` (default: the file's name) and optional
``meta``, ``filled`` and ``near_dup_of``. Blank lines are skipped; every error names the file
and the 1-based line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import BadInputError, CorpusError
from ..features import Window, WindowFeatures
from ..model.base import IDENTITY_KEYS, ActivationModel
from ..normalize import normalize

__all__ = [
    "LabelledText",
    "cached_extract",
    "extract",
    "files_digest",
    "iter_jsonl",
    "read_corpus",
]


@dataclass(frozen=True)
class LabelledText:
    """One line of a labelled JSONL file, as written."""

    text: str
    #: 0 benign, 1 attack.
    label: int
    kind: str
    source: str
    #: The file's name and the 1-based line the text is on.
    file: str
    line: int
    meta: dict[str, Any] = field(default_factory=dict)
    #: A jailbreak template whose question slot was filled (corpus ``filled``).
    filled: bool = False
    #: The file of the text this one nearly duplicates (corpus ``near_dup_of.file``).
    near_dup_of: str | None = None


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


def _jsonl_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files ``paths`` name, a directory standing for its ``*.jsonl`` files (by name)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.glob("*.jsonl")))
        elif p.is_file():
            files.append(p)
        else:
            raise CorpusError(f"{p}: no such file or directory")
    if not files:
        raise CorpusError(
            f"no corpus JSONL files in {', '.join(map(str, paths)) or '(none given)'}"
        )
    return files


def read_corpus(*paths: str | Path) -> list[LabelledText]:
    """Every row of the labelled JSONL files ``paths`` (a directory: its ``*.jsonl`` files,
    sorted by name), in order. A row that does not fit the schema raises
    :class:`~alknet_firewall.errors.CorpusError` naming its file and line."""
    rows: list[LabelledText] = []
    for f in _jsonl_files(paths):
        for n, o in iter_jsonl(f):
            rows.append(_row(o, f, n))
    return rows


def _row(o: Any, f: Path, n: int) -> LabelledText:
    where = f"{f}:{n}"
    if not isinstance(o, dict) or not isinstance(o.get("text"), str):
        raise CorpusError(f"{where}: each line must be an object with a string 'text'")
    label = o.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        raise CorpusError(f"{where}: 'label' must be 0 (benign) or 1 (attack), got {label!r}")
    kind = o.get("kind") or ("benign" if label == 0 else None)
    if kind is None:
        raise CorpusError(
            f"{where}: an attack (label 1) needs its 'kind' (direct_injection, "
            "indirect_injection, prompt_extraction, jailbreak or harmful_request)"
        )
    nd = o.get("near_dup_of")
    return LabelledText(
        text=o["text"],
        label=int(label),
        kind=str(kind),
        source=str(o.get("source") or f.stem),
        file=f.name,
        line=n,
        meta=dict(o.get("meta") or {}),
        filled=bool(o.get("filled")),
        near_dup_of=nd.get("file") if isinstance(nd, dict) else None,
    )


def files_digest(paths: Sequence[str | Path]) -> str:
    """SHA-256 over the names and contents of the JSONL files ``paths`` name."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        for f in sorted(p.glob("*.jsonl")) if p.is_dir() else [p]:
            h.update(f.name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def _select_windows(wins: list[Window], n_texts: int, max_windows: int | None) -> list[Window]:
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

    With :func:`alknet_firewall.training.fitting.calibrate` this fits a codebook to *your* normal:
    ``calibrate(codebook, extract(model, my_benign_texts))``.
    """
    parts: list[WindowFeatures] = []
    bar = tqdm(total=len(texts), desc="activations", unit="text", disable=not progress)
    for start in range(0, len(texts), chunk):
        batch = list(texts[start : start + chunk])
        if normalize_text:
            batch = [normalize(t) for t in batch]
        wins = model.windows(model.tokenize(batch))
        wins = _select_windows(wins, len(batch), max_windows)
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
