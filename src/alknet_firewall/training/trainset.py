"""The texts a codebook is fitted on: the corpus, rule-based augmentations, styles and families.

Size (~470 lines): one deterministic recipe — selection, six augmentation rules, styles,
families, span labels — whose parts share the corpus rows and one random stream; split apart
they would have to pass both around.

Everything here is derived from ``../shared/corpus`` by fixed rules and fixed seeds, so the
shipped default codebook can be rebuilt text for text (``docs/codebook.md``):

* a stratified selection: every attack family, at most ``benign_cap`` texts per benign source
  (so one large collection does not decide what "normal" means);
* tool-output templates with **benign fillers**: InjecAgent's tool responses with the injected
  instruction replaced by a benign corpus text, so the template format appears on both sides and a
  head cannot learn the format instead of the instruction;
* **embedded injections**: a direct injection or extraction request pasted into a benign
  document at a line break, with the character span of the payload recorded, so span-level
  evidence can be trained on the instruction and not on the document around it;
* short benign fragments (the first words of benign texts) and benign concatenations.

Each text carries its ``family`` (what leave-family-out evaluation holds out together: a
source, an InjecAgent template group, the payload's source for embedded injections) and, for
benign texts, its ``style`` (short chat, code, documents, tool output, role-play, system
prompts, look-alikes), which calibration uses to hold the false-positive rate per style.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import ModelError
from ..features import WindowFeatures
from ..normalize import normalize
from .corpus import LabelledText

__all__ = [
    "BENIGN_STYLES",
    "STYLE_OF_SOURCE",
    "SUSPICIOUS_RATE_FACTOR",
    "SUSPICIOUS_STYLES",
    "TrainingText",
    "span_labels",
    "training_set",
]

#: Benign style of each corpus source (and of the augmentations).
STYLE_OF_SOURCE: dict[str, str] = {
    "hh_helpful": "short_chat",
    "oasst": "short_chat",
    "fastchat": "short_chat",
    "self_instruct": "short_chat",
    "truthfulqa": "short_chat",
    "gsm8k": "short_chat",
    "humaneval": "code",
    "gpteacher_codegen": "code",
    "fetaqa_tables": "documents",
    "emails": "documents",
    "aug_concat": "documents",
    "aug_injecagent_benign": "tool_output",
    "gpteacher_roleplay": "roleplay",
    "awesome_chatgpt_prompts": "roleplay",
    "system_prompts": "system_prompt",
    "wildguard_benign": "lookalike",
    "jbb_behaviors": "lookalike",
    "mitre_atlas": "lookalike",
    "aug_fragment": "short_chat",
    # Third corpus release (2026-12-04).
    "dialogue_turns": "short_reply",
    "aug_short_variant": "short_reply",
    "arena_hard": "long_chat",
    "salesforce_prompt_leakage": "short_chat",
    "bipia": "documents",
    "emails_fixtures": "documents",
    "agentdojo": "tool_output",
    "awesome_copilot": "system_prompt",
    "site_policy": "lookalike",
    "xstest": "lookalike",
    "bastioncorpus": "lookalike",
    "belle_eval": "non_english",
    "mgsm": "non_english",
    "xquad": "documents",
}
BENIGN_STYLES = tuple(sorted(set(STYLE_OF_SOURCE.values())))
#: Benign but superficially suspicious styles: their tolerated false-alarm rate is 3 % where
#: ordinary traffic's is 1 % (the calibration factor the default build uses).
SUSPICIOUS_STYLES = ("lookalike", "roleplay", "system_prompt")
SUSPICIOUS_RATE_FACTOR = 3.0

#: Per-source caps of the stratified selection where the default (``benign_cap``) is wrong:
#: short replies and short real requests are cheap and the style most often hurt; texts in
#: other languages are all kept (they calibrate their language group, never fit a head).
SOURCE_CAPS: dict[str, int] = {
    "dialogue_turns": 900,
    "hh_helpful": 600,
    "belle_eval": 500,
    "mgsm": 125,
    "xquad": 114,
    "multijail": 235,
    "agentdojo": 500,
    "bipia": 400,
    "tensor_trust": 600,  # hijacking and extraction (one source in the corpus)
}

#: Benign texts that stand in for the data a tool returns (short, several styles).
_FILL_SOURCES = ("hh_helpful", "gsm8k", "truthfulqa", "self_instruct", "emails")
_DOC_SOURCES = (
    "fetaqa_tables",
    "emails",
    "gpteacher_codegen",
    "gsm8k",
    "self_instruct",
    "humaneval",
    "mitre_atlas",
    "system_prompts",
    "bipia",
    "arena_hard",
    "site_policy",
    "emails_fixtures",
)
#: InjecAgent's 17 tool-response templates fall into this many families.
TEMPLATE_GROUPS = 3


@dataclass(frozen=True)
class TrainingText:
    """A text to fit on: normalised as the model reads it, with its label and provenance."""

    text: str
    label: int
    kind: str
    source: str
    family: str
    #: Benign style (None for attacks).
    style: str | None
    #: Character span ``(start, end)`` of the attack part inside ``text`` (embedded or injected
    #: instructions), or None when the whole text is the attack (or benign).
    span: tuple[int, int] | None = None
    #: ``None`` for corpus texts, else the augmentation rule.
    aug: str | None = None
    #: Sources this text was derived from (kept on the same side of any split).
    origins: tuple[str, ...] = ()
    #: Language code (the corpus's ``meta.language``, else English): texts in other languages
    #: never fit a head; benign ones calibrate their language group (``scoring.text_group``).
    language: str = "en"

    @property
    def fits(self) -> bool:
        """Whether heads may learn from this text (English texts only)."""
        return self.language == "en"


def _family(row: LabelledText) -> str:
    if row.source == "injecagent" and "template_id" in row.meta:
        return f"injecagent:{int(row.meta['template_id']) % TEMPLATE_GROUPS}"
    if row.source == "agentdojo" and row.meta.get("suite"):
        # One synthetic environment per suite: a suite is held out whole, carriers with and
        # without their injection together.
        return f"agentdojo:{row.meta['suite']}"
    if row.source == "bipia" and row.label == 1 and row.meta.get("attack_type"):
        return f"bipia:{row.meta['attack_type']}"
    return row.source


def _style(row: LabelledText) -> str | None:
    """A benign corpus row's style: its source's, refined where a source mixes styles."""
    if _language(row) != "en":
        return "non_english"
    if row.source == "bipia":
        task, part = row.meta.get("task"), row.meta.get("part")
        return "short_chat" if part == "question" else "code" if task == "code" else "documents"
    if row.source == "bastioncorpus" and row.kind == "benign":
        return "short_chat"
    return STYLE_OF_SOURCE.get(row.source)


def _language(row: LabelledText) -> str:
    lang = row.meta.get("language") or row.meta.get("lang") or "en"
    return str(lang)


def _origins(row: LabelledText) -> tuple[str, ...]:
    out = [row.source]
    injected = row.meta.get("injected_text") if row.source == "injecagent" else None
    if injected:
        # InjecAgent's 60 attacker instructions recur in every tool template: evaluation holds
        # out an instruction group together with a template group.
        group = int(hashlib.sha256(str(injected).encode()).hexdigest()[:8], 16) % TEMPLATE_GROUPS
        out.append(f"injecagent-instructions:{group}")
    if row.filled and row.meta.get("fill_source"):
        out.append(str(row.meta["fill_source"]))
    if row.near_dup_of:
        out.append(row.near_dup_of)
    if row.meta.get("pair_id") is not None:
        # Translations of one item, and a carrier with and without its injection, share a
        # pair id: they stay on one side of a split.
        out.append(f"pair:{row.source}:{row.meta['pair_id']}")
    return tuple(out)


def training_set(
    rows: Sequence[LabelledText],
    *,
    benign_cap: int = 250,
    attack_cap: int = 300,
    injecagent_cap: int = 400,
    augment_caps: dict[str, int] | None = None,
    seed: int = 0,
) -> list[TrainingText]:
    """The selection and augmentations described in the module docstring, deterministically."""
    caps = augment_caps or {
        "filler": 300,
        "embedded": 300,
        "bipia": 250,
        "fragment": 300,
        "concat": 100,
        "short_variant": 300,
    }
    rng = random.Random(seed)
    benign = [r for r in rows if r.label == 0]
    english = [r for r in benign if _language(r) == "en"]
    fill_pool = [r for r in english if r.source in _FILL_SOURCES and 20 < len(r.text) < 400]
    docs = [r for r in english if r.source in _DOC_SOURCES and 200 < len(r.text) < 6000]
    aug: dict[str, list[TrainingText]] = {k: [] for k in caps}
    # 1. Tool-output templates with benign fillers.
    for r in rows:
        injected = r.meta.get("injected_text") if r.source == "injecagent" else None
        if injected and injected in r.text and fill_pool:
            fill = rng.choice(fill_pool)
            t = _benign(
                r.text.replace(injected, fill.text.replace("'", "’")),
                "aug_injecagent_benign",
                _family(r),
                "filler",
                r,
            )
            # The template's and the filler's sources stay on the same side of a split.
            aug["filler"].append(replace(t, origins=(*t.origins, *_origins(fill))))
    # 2. Injections and extraction requests embedded in benign documents, span-labelled.
    payloads = [
        r
        for r in rows
        if r.kind in ("direct_injection", "prompt_extraction")
        and len(r.text) < 600
        and _language(r) == "en"
    ]
    if docs:
        for r in rng.sample(payloads, min(700, len(payloads))):
            d = rng.choice(docs)
            cuts = [i + 1 for i, c in enumerate(d.text) if c == "\n"] or [len(d.text)]
            cut = rng.choice([*cuts, len(d.text)])
            pre, post = d.text[:cut], d.text[cut:]
            text = pre + ("" if pre.endswith("\n") else "\n") + r.text + "\n" + post
            aug["embedded"].append(_attack(text, r.text, r, origins=(*_origins(r), d.source)))
    # 3. Short benign fragments; 4. benign documents back to back.
    for r in rng.sample(english, min(800, len(english))):
        words = r.text.split()
        if len(words) < 2:
            continue
        k = rng.choice((1, 1, 2, 2, 3, 4, 6))
        aug["fragment"].append(
            _benign(" ".join(words[:k]), "aug_fragment", r.source, "fragment", r)
        )
    # 5. Short replies as people type them: the same reply in lower case, capitalised with a
    #    full stop, and without punctuation ("ok", "Ok.", "OK").
    for r in benign:
        if r.source != "dialogue_turns" or len(r.text) > 20:
            continue
        bare = r.text.strip().rstrip(".!?").strip()
        for v in {bare.lower(), bare[:1].upper() + bare[1:].lower() + ".", bare.upper()}:
            if v and v != r.text:
                aug["short_variant"].append(
                    _benign(v, "aug_short_variant", r.source, "short_variant", r)
                )
    if len(docs) >= 2:
        for _ in range(600):
            a, b = rng.sample(docs, 2)
            t = _benign(a.text.rstrip() + "\n\n" + b.text, "aug_concat", a.source, "concat", a)
            aug["concat"].append(replace(t, origins=(a.source, b.source)))
    # 6. BIPIA's attacker instructions are attacks only inside the data they are planted in
    #    ("What is the capital of Brazil?" alone is a benign question): each is planted in a
    #    BIPIA context of its kind (code in code, text in e-mails and tables), span-labelled.
    contexts: dict[str, list[LabelledText]] = {}
    for r in benign:
        if r.source == "bipia" and r.meta.get("part") == "context":
            contexts.setdefault("code" if r.meta.get("task") == "code" else "text", []).append(r)
    for r in rows:
        if r.source != "bipia" or r.label != 1:
            continue
        pool = contexts.get(str(r.meta.get("attack_type")), [])
        if not pool:
            continue
        d = rng.choice(pool)
        cuts = [i + 1 for i, c in enumerate(d.text) if c == "\n"] or [len(d.text)]
        cut = rng.choice([*cuts, len(d.text)])
        pre, post = d.text[:cut], d.text[cut:]
        text = pre + ("" if pre.endswith("\n") or not pre else "\n") + r.text + "\n" + post
        t = _attack(text, r.text, r, origins=(*_origins(r), *_origins(d)))
        aug["bipia"].append(replace(t, source="bipia", family=_family(r), aug="bipia"))
    # Stratified selection of the corpus itself (BIPIA's bare instructions only planted, 6.).
    by_source: dict[str, list[LabelledText]] = {}
    for r in rows:
        if r.source == "bipia" and r.label == 1:
            continue
        by_source.setdefault(r.source, []).append(r)
    carriers = {
        r.meta["pair_id"]: r.text
        for r in rows
        if r.source == "agentdojo" and r.meta.get("subset") == "carrier_default"
    }
    out: list[TrainingText] = []
    for src, rs in sorted(by_source.items()):
        cap = SOURCE_CAPS.get(
            src,
            benign_cap
            if rs[0].label == 0
            else (injecagent_cap if src == "injecagent" else attack_cap),
        )
        if len(rs) > cap:
            rs = random.Random(seed + 1).sample(rs, cap)
        out.extend(_corpus_text(r, carriers) for r in rs)
    for name in caps:
        xs = aug.get(name, [])
        out.extend(random.Random(seed + 2).sample(xs, min(caps.get(name, 0), len(xs))))
    return out


def _corpus_text(r: LabelledText, carriers: dict[Any, str] | None = None) -> TrainingText:
    text = normalize(r.text)
    span = None
    injected = r.meta.get("injected_text") if r.source == "injecagent" else None
    if injected:
        k = normalize(str(injected))
        i = text.find(k)
        if i >= 0:
            span = (i, i + len(k))
    default = (carriers or {}).get(r.meta.get("pair_id")) if r.label == 1 else None
    if default is not None:
        # An AgentDojo carrier with its injection against the same carrier without: the
        # injected instruction is where the two differ.
        span = _difference(normalize(default), text)
    return TrainingText(
        text=text,
        label=r.label,
        kind=r.kind,
        source=r.source,
        family=_family(r),
        style=_style(r) if r.label == 0 else None,
        span=span,
        origins=_origins(r),
        language=_language(r),
    )


def _benign(text: str, source: str, family: str, aug: str, origin: LabelledText) -> TrainingText:
    style = "short_chat" if aug == "fragment" else STYLE_OF_SOURCE[source]
    if aug == "fragment" and origin.source in STYLE_OF_SOURCE:
        style = "short_reply" if origin.source == "dialogue_turns" else "short_chat"
    kind = origin.kind if aug == "fragment" else "benign"
    return TrainingText(
        text=normalize(text),
        label=0,
        kind=kind,
        source=source,
        family=family,
        style=style,
        aug=aug,
        origins=_origins(origin),
        language=_language(origin),
    )


def _attack(
    text: str, payload: str, origin: LabelledText, *, origins: tuple[str, ...]
) -> TrainingText:
    norm, k = normalize(text), normalize(payload)
    i = norm.find(k)
    return TrainingText(
        text=norm,
        label=1,
        kind="indirect_injection",
        source="aug_embedded",
        family=origin.source,
        style=None,
        span=(i, i + len(k)) if i >= 0 else None,
        aug="embedded",
        origins=origins,
    )


def _difference(base: str, changed: str) -> tuple[int, int] | None:
    """The character span of ``changed`` that is not in ``base`` (common prefix and suffix
    removed), or None when the two hardly differ."""
    n = min(len(base), len(changed))
    a = 0
    while a < n and base[a] == changed[a]:
        a += 1
    b = 0
    while b < n - a and base[-1 - b] == changed[-1 - b]:
        b += 1
    return (a, len(changed) - b) if len(changed) - b - a >= 16 else None


#: Kinds whose whole text is an instruction to the assistant (every span of it is evidence).
_INSTRUCTION_KINDS = ("direct_injection", "prompt_extraction")


def span_labels(
    feats: WindowFeatures,
    texts: Sequence[TrainingText],
    offsets: Callable[[str], Sequence[tuple[int, int]]],
    *,
    inside: float = 0.6,
) -> np.ndarray:
    """One label per feature row for the span head: 1 for a span of an attack instruction,
    0 for a benign span (benign texts, and the benign data around an injected instruction), -1
    for rows the span head does not learn from (whole-window rows, jailbreak and harmful texts,
    spans that straddle an instruction's edge).

    ``offsets(text)`` gives each token's character span (``model.token_offsets``); a span of a
    labelled text counts as the instruction when at least ``inside`` of its tokens lie within
    the text's ``span``. When it cannot (it raises
    :class:`~alknet_firewall.errors.ModelError` or returns None), this raises ``ModelError``
    naming the text: dropping those rows would fit another codebook without a word.
    """
    labels = np.full(len(feats.text_index), -1, dtype=np.int8)
    cache: dict[int, Sequence[tuple[int, int]]] = {}
    for j in np.flatnonzero(~feats.full):
        ti = int(feats.text_index[j])
        t = texts[ti]
        if t.label == 0:
            labels[j] = 0
        elif t.span is None:
            labels[j] = 1 if t.kind in _INSTRUCTION_KINDS else -1
        else:
            if ti not in cache:
                cache[ti] = _offsets_of(offsets, t, ti)
            a0, a1 = t.span
            start = int(feats.token_start[j])
            toks = cache[ti][start : start + int(feats.n_tokens[j])]
            if not toks:
                continue
            share = float(np.mean([c0 >= a0 - 1 and c1 <= a1 + 1 for c0, c1 in toks]))
            labels[j] = 1 if share >= inside else (0 if share == 0 else -1)
    return labels


def _offsets_of(
    offsets: Callable[[str], Sequence[tuple[int, int]]], t: TrainingText, index: int
) -> Sequence[tuple[int, int]]:
    """``offsets(t.text)``, or a ModelError that says which text and what to do."""

    def missing(reason: str) -> ModelError:
        return ModelError(
            f"span labels need the token offsets of text {index} (source {t.source!r}), and the "
            f"model cannot give them ({reason}): fit with a backend whose tokenizer gives "
            "offsets (the local transformers backend), or without span rows "
            "(codebook build --span 0)"
        )

    try:
        offs: Sequence[tuple[int, int]] | None = offsets(t.text)
    except ModelError as exc:
        raise missing(str(exc)) from exc
    if offs is None:
        raise missing("none given")
    return offs
