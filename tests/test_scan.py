"""Batch scans never fail an item for time spent queued behind the scan's own work (issue 13,
finding 3); the items whose screening did fail are counted, summarised on stderr and make the
exit code non-zero.

The model double sleeps per micro-batch, the pool timeout is a few batches long, and one worker
takes one text at a time: the last texts of a batch wait many timeouts in the queue.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alknet_firewall import cli
from alknet_firewall.config import load_settings
from alknet_firewall.firewall import Firewall
from tests.fakes import FakeModel, benign_text
from tests.integration_helpers import child_env, codebook_path

N = 24
SLEEP_S = 0.1
TIMEOUT_S = 0.35  # three or four batches: without the batch rule, most of the 24 time out


@pytest.fixture
def slow_firewall(fake_codebook: Any) -> Iterator[Any]:
    model = FakeModel()
    settings = load_settings(
        None,
        pool={
            "workers": 1,
            "max_batch_size": 1,
            "timeout_s": TIMEOUT_S,
            "warmup": False,
            "cache_size": 0,
        },
    )
    fw = Firewall(settings, model=model, codebook=fake_codebook)
    model.sleep_s = SLEEP_S
    try:
        yield fw
    finally:
        fw.close()


def test_screen_many_does_not_time_out_on_its_own_queue(slow_firewall: Any) -> None:
    texts = [benign_text(i) for i in range(N)]
    verdicts = slow_firewall.screen_many(texts)
    errors = [v.error_code for v in verdicts if v.error is not None]
    assert errors == [], f"{len(errors)} of {N} failed: {set(errors)}"
    assert slow_firewall.model.texts_seen >= N


def test_return_exceptions_batch_does_not_time_out_on_its_own_queue(slow_firewall: Any) -> None:
    results = slow_firewall.screen_many([benign_text(i) for i in range(N)], return_exceptions=True)
    assert all(getattr(v, "error", "exception") is None for v in results), results


def test_screen_many_longer_than_the_queue_is_paced_not_refused(fake_codebook: Any) -> None:
    settings = load_settings(None, pool={"workers": 1, "queue_size": 8, "warmup": False})
    with Firewall(settings, model=FakeModel(), codebook=fake_codebook) as fw:
        verdicts = fw.screen_many([benign_text(i) for i in range(5 * 8)])  # OverloadError before
    assert len(verdicts) == 40 and all(v.error is None for v in verdicts)


def test_model_work_beyond_the_timeout_still_fails_in_batch_mode(slow_firewall: Any) -> None:
    slow_firewall.model.sleep_s = 3 * TIMEOUT_S
    verdicts = slow_firewall.screen_many([benign_text(i) for i in range(3)])
    assert [v.error_code for v in verdicts] == ["screen_timeout"] * 3
    assert all(v.action == "block" for v in verdicts)  # the default policy fails closed


def test_interactive_screening_still_counts_the_queue(slow_firewall: Any) -> None:
    """The gateway's rule is unchanged: a request waiting longer than the timeout fails."""
    import asyncio

    async def burst() -> list[Any]:
        texts = [benign_text(i) for i in range(N)]
        return list(await asyncio.gather(*(slow_firewall.ascreen(t) for t in texts)))

    verdicts = asyncio.run(burst())
    assert any(v.error_code == "screen_timeout" for v in verdicts)


def _write_input(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"id": i, "text": benign_text(i)}) + "\n" for i in range(n)))


def test_cli_scan_exit_code_and_summary(
    slow_firewall: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "_firewall", lambda args, single=False: slow_firewall)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(src, N)
    with src.open("a") as f:
        f.write("not json\n")  # invalid input is reported, but does not fail the scan
    assert cli.main(["scan", str(src), "-o", str(out), "--batch", str(N + 1)]) == 0
    err = capsys.readouterr().err
    summary = json.loads(next(line for line in err.splitlines() if line.startswith("{")))
    assert summary == {"scanned": N + 1, "allow": N, "error": 1, "failed": 0}, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("verdict", {}).get("error") for r in rows[:N]] == [None] * N


def test_cli_scan_with_failed_items_exits_1(
    fake_codebook: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = FakeModel()
    settings = load_settings(None, pool={"workers": 1, "timeout_s": 0.2, "warmup": False})
    fw = Firewall(settings, model=model, codebook=fake_codebook)
    model.sleep_s = 0.5  # every batch's own model work exceeds the timeout
    monkeypatch.setattr(cli, "_firewall", lambda args, single=False: fw)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(src, 4)
    assert cli.main(["scan", str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "screening failed for 4 of 4 lines (screen_timeout 4)" in err, err
    summary = json.loads(next(line for line in err.splitlines() if line.startswith("{")))
    assert summary["failed"] == 4 and summary["failed:screen_timeout"] == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["verdict"]["error_code"] == "screen_timeout" for r in rows)


@pytest.mark.slow
def test_cli_scan_real_model_many_texts_tiny_timeout(run_cli: Any, tmp_path: Path) -> None:
    """The real command and model: 200 texts in one batch, one worker taking one text at a
    time, a 3 s timeout (one text's model work is far below it; the up to 128 texts the scan
    keeps in flight wait far longer than it in the queue). No text may fail for waiting its
    turn."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(src, 200)
    env = child_env(
        ALKNET_FIREWALL_POOL__WORKERS="1",
        ALKNET_FIREWALL_POOL__MAX_BATCH_SIZE="1",
        ALKNET_FIREWALL_POOL__TIMEOUT_S="3",
    )
    proc = run_cli(
        "scan",
        str(src),
        "-o",
        str(out),
        "--batch",
        "200",
        "--codebook",
        str(codebook_path()),
        env={k: v for k, v in env.items() if k.startswith("ALKNET_FIREWALL_")},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 200
    failed = [r for r in rows if r["verdict"].get("error")]
    assert failed == [], f"{len(failed)} texts failed: {failed[0]['verdict']['error']}"
    assert '"failed": 0' in proc.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
