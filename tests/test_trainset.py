"""The fitting set: deterministic, tool templates on both sides, spans that point at the payload."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from alknet_firewall.errors import BadInputError
from alknet_firewall.trainset import BENIGN_STYLES, SOURCE_CAPS, read_corpus, training_set

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="module")
def rows():
    if not CORPUS.is_dir():
        pytest.skip(f"corpus {CORPUS} is not here")
    return read_corpus(CORPUS)


@pytest.fixture(scope="module")
def texts(rows):
    return training_set(rows)


def test_deterministic(rows, texts) -> None:
    again = training_set(rows)
    assert [t.text for t in again] == [t.text for t in texts]
    assert [t.text for t in training_set(rows, seed=1)] != [t.text for t in texts]


def test_every_tool_template_appears_as_attack_and_as_benign(rows, texts) -> None:
    by = collections.defaultdict(set)
    for t in texts:
        if t.source in ("injecagent", "aug_injecagent_benign"):
            by[t.family].add(t.label)
    assert by and all(labels == {0, 1} for labels in by.values()), by
    injected = {r.meta["injected_text"] for r in rows if r.source == "injecagent"}
    fillers = [t for t in texts if t.aug == "filler"]
    assert fillers and not any(i in t.text for t in fillers for i in injected)


def test_spans_point_at_the_payload(texts) -> None:
    spanned = [t for t in texts if t.span is not None]
    assert len(spanned) >= 300
    for t in spanned:
        a, b = t.span
        assert 0 <= a < b <= len(t.text)
        assert t.label == 1
    embedded = [t for t in spanned if t.aug == "embedded"]
    # The payload sits inside a benign document: text before or after it.
    assert embedded and all(t.span[0] > 0 or t.span[1] < len(t.text) for t in embedded)


def test_styles_caps_and_origins(texts) -> None:
    assert all((t.style in BENIGN_STYLES) == (t.label == 0) for t in texts)
    per_source = collections.Counter(t.source for t in texts if t.aug is None)
    for source, n in per_source.items():
        assert n <= SOURCE_CAPS.get(source, 400 if source == "injecagent" else 300), source
    assert all(t.source in t.origins or t.aug for t in texts)


def test_v3_sources_styles_languages_and_pairs(texts) -> None:
    by_source = collections.defaultdict(list)
    for t in texts:
        by_source[t.source].append(t)
    # Short replies are a style of their own, and every one of them is kept.
    assert {t.style for t in by_source["dialogue_turns"]} == {"short_reply"}
    assert len(by_source["dialogue_turns"]) == SOURCE_CAPS["dialogue_turns"]
    # Case and punctuation variants of short replies ("ok" -> "OK", "Ok.").
    variants = [t for t in texts if t.aug == "short_variant"]
    assert variants and all(t.label == 0 and t.style == "short_reply" for t in variants)
    # Texts in other languages never fit a head; benign ones are their own style.
    foreign = [t for t in texts if t.language != "en"]
    assert foreign and not any(t.fits for t in foreign)
    assert {t.style for t in foreign if t.label == 0} == {"non_english"}
    # Translations and AgentDojo carrier pairs share a pair origin; suites are families.
    assert any(o.startswith("pair:mgsm:") for t in by_source["mgsm"] for o in t.origins)
    assert {t.family for t in by_source["agentdojo"]} == {
        "agentdojo:travel",
        "agentdojo:workspace",
    }


def test_bad_corpus_line_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"text": "ok", "label": 0}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"x\.jsonl:2"):
        read_corpus(tmp_path)
    with pytest.raises(BadInputError, match="no corpus"):
        read_corpus(tmp_path / "empty")
