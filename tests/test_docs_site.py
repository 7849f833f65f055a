"""The documentation cannot drift: the site builds with ``mkdocs build --strict`` (every broken
link, missing anchor, page left out of the nav or API object that no longer resolves is a
warning, and a warning fails), and the codebook id the docs quote is the shipped one.

The settings reference is generated from the code and checked by ``tests/test_config_docs.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alknet_firewall.codebook import load_codebook

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: Ids of earlier codebooks that a page quotes on purpose, as the codebook a past measurement
#: was taken with (the page says so). Anything else must be the shipped codebook's id.
HISTORICAL = {
    "docs/evaluation/evasion.md": {"259b754045c34623", "cce6319dea333803"},
    # latency measured with the v2 codebook (the model path, not the codebook, sets latency)
    "docs/benchmarks.md": {"ec25e6c8b720d7dc"},
}

#: A 16-hex-digit id within 40 characters after the word "codebook" (``codebook `…```,
#: ``"codebook_id": "…"``, ``"codebook": {"id": "…"``).
_QUOTED_ID = re.compile(r"codebook.{0,40}?(?<![0-9a-f])([0-9a-f]{16})(?![0-9a-f])", re.I | re.S)


def quoted_codebook_ids(text: str) -> set[str]:
    return set(_QUOTED_ID.findall(text))


def test_the_reader_finds_the_quoting_styles() -> None:
    text = (
        'codebook `0123456789abcdef`; "codebook_id": "fedcba9876543210",\n'
        '"codebook": {"id": "00112233aabbccdd"}; a trace id 4bf92f3577b34da6a3ce929d0e0e4736'
    )
    assert quoted_codebook_ids(text) == {
        "0123456789abcdef",
        "fedcba9876543210",
        "00112233aabbccdd",
    }


def test_docs_quote_the_shipped_codebook_id() -> None:
    shipped = load_codebook(None).id
    wrong = {}
    for path in DOCS:
        rel = path.relative_to(ROOT).as_posix()
        ids = quoted_codebook_ids(path.read_text(encoding="utf-8"))
        stale = ids - {shipped} - HISTORICAL.get(rel, set())
        if stale:
            wrong[rel] = sorted(stale)
    assert not wrong, (
        f"these pages quote a codebook id that is not the shipped one ({shipped}): {wrong}; "
        "update them, or list a deliberate historical id in HISTORICAL"
    )
    assert any(shipped in p.read_text(encoding="utf-8") for p in DOCS)


@pytest.mark.slow
def test_site_builds_strict_without_warnings(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "NO_MKDOCS_2_WARNING": "1",  # Material's end-of-life banner, not a docs problem
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "WARNING" not in out, out
    assert (tmp_path / "site" / "api" / "firewall" / "index.html").is_file()
    page = (tmp_path / "site" / "api" / "firewall" / "index.html").read_text(encoding="utf-8")
    assert "alknet_firewall.firewall.Firewall.screen" in page  # mkdocstrings rendered the API
