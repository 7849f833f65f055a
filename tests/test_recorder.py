"""The in-memory verdict recorder: bounded recent list, windows from the Prometheus counters,
latency percentiles, no text unless log_text."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from alknet_firewall import metrics
from alknet_firewall.firewall import Verdict
from alknet_firewall.recorder import WINDOWS, Recorder, _percentile, prometheus_values


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _private_metrics() -> Any:
    """The counters the recorder reads, on a private registry (the process-wide ones stay
    untouched for the other tests)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    reg = CollectorRegistry()
    return SimpleNamespace(
        verdicts=Counter("v_total", "v", ["action", "level", "signal"], registry=reg),
        errors=Counter("e_total", "e", ["code"], registry=reg),
        batch_size=Histogram("b", "b", registry=reg),
        latency=Histogram("l", "l", registry=reg),
    )


def _verdict(action: str = "allow", *, latency_ms: float = 20.0, **kw: Any) -> Verdict:
    level = {"allow": "clear", "flag": "notice", "block": "critical"}[action]
    kw.setdefault("signal", None if action == "allow" else "injection")
    return Verdict(
        action=action,
        level=level,
        score=0.9 if action == "block" else 0.1,
        signals={"injection": 0.1},
        policy="default",
        latency_ms=latency_ms,
        screened_messages=1,
        **kw,
    )


def _feed(rec: Recorder, v: Verdict, text: str | None = "hello") -> None:
    """What Firewall._record does: recorder first, then the Prometheus counters."""
    rec.record(v, text)
    m = rec.metrics
    m.verdicts.labels(action=v.action, level=v.level, signal=v.signal or "none").inc()
    if v.error_code:
        m.errors.labels(code=v.error_code).inc()


def test_recent_is_bounded_newest_first_and_textless() -> None:
    rec = Recorder(capacity=3, clock=Clock(), metrics=_private_metrics())
    for i in range(5):
        _feed(rec, _verdict(latency_ms=float(i)), text=f"secret message {i}")
    got = rec.recent()
    assert [r.latency_ms for r in got] == [4.0, 3.0, 2.0]
    assert len(rec.recent(limit=1)) == 1
    for r in got:
        d = r.to_dict()
        assert "text" not in d and "secret" not in repr(d)
        assert d["chars"] == len("secret message 4") and len(d["digest"]) == 32
    # Equal texts, equal digests; the digest is salted per recorder (not a dictionary oracle).
    other = Recorder(clock=Clock(), metrics=_private_metrics())
    assert rec.digest("x") == rec.digest("x") != other.digest("x")


def test_keep_text_when_log_text() -> None:
    rec = Recorder(keep_text=True, clock=Clock(), metrics=_private_metrics())
    _feed(rec, _verdict(), text="keep me")
    assert rec.recent()[0].to_dict()["text"] == "keep me"


def test_windows_are_counter_differences() -> None:
    clock = Clock()
    rec = Recorder(clock=clock, bucket_s=10.0, metrics=_private_metrics())
    start = prometheus_values(rec.metrics)
    _feed(rec, _verdict("block"))
    clock.t += 600  # ten minutes later: out of the 5-minute window, inside the hour
    _feed(rec, _verdict("allow"))
    _feed(rec, _verdict("flag", error_code="timeout", signal=None))
    five, hour = rec.window(WINDOWS["5m"]), rec.window(WINDOWS["1h"])
    assert five["verdicts"] == 2 and five["by_action"] == {"allow": 1, "flag": 1}
    assert five["errors"] == {"timeout": 1}
    assert hour["verdicts"] == 3 and hour["by_action"] == {"allow": 1, "block": 1, "flag": 1}
    assert hour["by_signal"] == {"injection": 1, "none": 2}
    assert five["latency_ms"]["count"] == 2 and hour["latency_ms"]["count"] == 3
    # Totals are the /metrics counters themselves (process-wide).
    assert start == {"batches": 0.0, "batch_items": 0.0, "screens": 0.0, "screen_seconds": 0.0}
    assert rec.stats()["total"]["verdicts"] == 3
    clock.t += 3 * 3600  # everything has aged out
    assert rec.window(WINDOWS["1h"])["verdicts"] == 0


def test_latency_percentiles() -> None:
    clock = Clock()
    rec = Recorder(clock=clock, metrics=_private_metrics())
    for ms in range(1, 101):  # 1..100 ms
        rec.record(_verdict(latency_ms=float(ms)), "t")
    lat = rec.window(300)["latency_ms"]
    assert lat["count"] == 100
    assert lat["p50"] == pytest.approx(50, rel=0.1)
    assert lat["p99"] == pytest.approx(99, rel=0.1)
    assert _percentile(rec._latency[rec._key(clock.t)] * 0, 0.5) is None


def test_record_marks_its_source() -> None:
    rec = Recorder(clock=Clock(), metrics=_private_metrics())
    record = rec.record(_verdict("block"), "the driving text", source="console")
    assert record.source == "console" and record.text is None  # no text without log_text
    assert record.chars == len("the driving text")
    rec.record(_verdict(), "other")
    assert [r.source for r in rec.recent()] == ["traffic", "console"]


def test_metrics_singleton_used_by_default() -> None:
    assert Recorder().metrics is metrics.get()
