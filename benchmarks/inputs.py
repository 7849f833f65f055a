"""Inputs: the corpus, and real corpus texts cut to exact token counts."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any


# --------------------------------------------------------------------------------------------
# Inputs: real corpus texts cut to exact token counts
# --------------------------------------------------------------------------------------------
def load_corpus(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in sorted(Path(path).glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                d = json.loads(line)
                text = d.get("text")
                if isinstance(text, str) and text.strip():
                    rows.append(
                        {
                            "text": text,
                            "label": int(d.get("label") or 0),
                            "source": str(d.get("source") or f.stem),
                            "filled": bool(d.get("filled")),
                        }
                    )
    if not rows:
        raise SystemExit(f"no corpus texts (*.jsonl with 'text') under {path}")
    return rows


class MessageMaker:
    """Messages of exactly ``n`` content tokens (as the firewall counts them: after
    normalisation, with the model tokenizer), cut from or concatenated of real texts."""

    def __init__(self, model: Any, texts: Sequence[str], seed: int = 0) -> None:
        from alknet_firewall.normalize import normalize

        self.model = model
        self._normalize = normalize
        pool = [normalize(t) for t in texts if t.strip()]
        random.Random(seed).shuffle(pool)
        self.texts = pool
        self.pos = 0
        self._ntok: dict[int, int] = {}

    def count(self, text: str) -> int:
        return len(self.model.tokenize([text])[0])

    def _next(self) -> tuple[int, str]:
        j = self.pos % len(self.texts)
        self.pos += 1
        return j, self.texts[j]

    def make(self, n: int) -> str:
        for _ in range(50):
            parts: list[str] = []
            est = 0
            while est < n + 16:
                j, t = self._next()
                if j not in self._ntok:
                    self._ntok[j] = self.count(t)
                parts.append(t)
                est += self._ntok[j] + 2
            ids = self.model.tokenize(["\n\n".join(parts)])[0]
            if len(ids) < n:
                continue
            text = self._fit(ids, n)
            if text is not None:
                return text
        raise RuntimeError(f"could not build a message of exactly {n} tokens")

    def _fit(self, ids: list[int], n: int) -> str | None:
        tok = self.model.tokenizer
        k = n
        seen: set[int] = set()
        for _ in range(16):
            if k <= 0 or k > len(ids) or k in seen:
                return None
            seen.add(k)
            raw = tok.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text = self._normalize(raw)
            c = self.count(text)
            if c == n and text.strip():
                return text
            k += n - c
        return None

    def many(self, n: int, count: int) -> list[str]:
        return [self.make(n) for _ in range(count)]
