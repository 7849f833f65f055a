"""What this machine is good at: usable cores, CPU flags, and the dtype the model runs fastest in.

``model.dtype: auto`` (the default) resolves here. bfloat16 is chosen only where it is faster:

* CUDA devices: bfloat16 (tensor cores; no micro-benchmark).
* CPUs with AMX (``amx_bf16`` and ``amx_tile`` flags): bfloat16 — AMX runs bf16 matmuls several
  times faster than fp32.
* Every other CPU (AVX-512 with or without ``avx512_bf16``, AVX2, ARM): a start-up
  micro-benchmark times one forward pass of a one-layer copy of the model's architecture (random
  weights, 64 tokens, one thread) in both dtypes and keeps bfloat16 only if it is at least
  :data:`BF16_MARGIN` faster. The result is cached per process and in the cache directory, keyed
  by CPU model, CPU flags, torch version and the model's shapes, so a machine pays for it once.

Nothing here imports torch at module level; the benchmark itself is supplied by the backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "BF16_MARGIN",
    "DtypeChoice",
    "ForeignLoad",
    "choice_key",
    "choose_dtype",
    "clear_memo",
    "cpu_flags",
    "cpu_model",
    "decide",
    "has_amx",
    "idle_cores_probe",
    "usable_cores",
]


log = logging.getLogger(__name__)

#: bfloat16 must take at most this fraction of float32's time to be chosen.
BF16_MARGIN = 0.85
_CACHE_FILE = "dtype-choice.json"
_memo: dict[str, DtypeChoice] = {}
_memo_lock = threading.Lock()


def usable_cores() -> int:
    """CPU cores this process may run on (affinity-aware where the OS supports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key not in out:
            out[key] = value.strip()
        if not line.strip() and out:
            break  # the first processor's block is enough
    return out


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("cpu model") or platform.processor() or "unknown"


def cpu_flags() -> frozenset[str]:
    """CPU feature flags (x86 ``flags``, ARM ``features``); empty where unknown."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("features") or "").split())


def has_amx(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return "amx_bf16" in flags and "amx_tile" in flags


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a model runs in, and why."""

    dtype: str  # "float32" | "bfloat16"
    reason: str  # "configured" | "cuda" | "amx" | "measured" | "measured (cached)" | "fallback"
    float32_ms: float | None = None
    bfloat16_ms: float | None = None

    def describe(self) -> str:
        if self.float32_ms is not None and self.bfloat16_ms is not None:
            return (
                f"{self.dtype} ({self.reason}: one layer, 64 tokens, float32 "
                f"{self.float32_ms:.2f} ms vs bfloat16 {self.bfloat16_ms:.2f} ms)"
            )
        return f"{self.dtype} ({self.reason})"


def decide(float32_ms: float, bfloat16_ms: float, margin: float = BF16_MARGIN) -> str:
    """bfloat16 only when it is clearly faster than float32."""
    return "bfloat16" if bfloat16_ms <= margin * float32_ms else "float32"


def choice_key(shape_tag: str, torch_version: str) -> str:
    flags = " ".join(sorted(cpu_flags()))
    raw = f"{cpu_model()}|{flags}|{torch_version}|{shape_tag}|{BF16_MARGIN}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def choose_dtype(
    requested: str,
    device: str,
    *,
    bench: Callable[[str], float] | None = None,
    cache_dir: Path | None = None,
    shape_tag: str = "",
    torch_version: str = "",
    flags: frozenset[str] | None = None,
) -> DtypeChoice:
    """Resolve ``model.dtype`` (``auto`` | ``float32`` | ``bfloat16``) for ``device``.

    ``bench(dtype)`` returns the seconds of one representative forward pass in that dtype; it is
    called only for ``auto`` on a CPU without AMX, and only when no cached answer exists.
    """
    if requested != "auto":
        return DtypeChoice(requested, "configured")
    if device.startswith("cuda"):
        return DtypeChoice("bfloat16", "cuda")
    if device != "cpu":
        return DtypeChoice("float32", "fallback")
    if has_amx(flags):
        return DtypeChoice("bfloat16", "amx")
    if bench is None:
        return DtypeChoice("float32", "fallback")
    key = choice_key(shape_tag, torch_version)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
        cached = _read_cache(cache_dir, key)
        if cached is not None:
            _memo[key] = cached
            return cached
        t0 = time.perf_counter()
        try:
            f32 = bench("float32") * 1000
            b16 = bench("bfloat16") * 1000
        except Exception as exc:  # a failing probe must not stop the model from loading
            log.warning("dtype micro-benchmark failed (%s); using float32", exc)
            return DtypeChoice("float32", "fallback")
        choice = DtypeChoice(decide(f32, b16), "measured", round(f32, 3), round(b16, 3))
        log.info(
            "model.dtype auto: %s; micro-benchmark took %.0f ms",
            choice.describe(),
            (time.perf_counter() - t0) * 1000,
        )
        _memo[key] = choice
        _write_cache(cache_dir, key, choice)
        return choice


def _read_cache(cache_dir: Path | None, key: str) -> DtypeChoice | None:
    if cache_dir is None:
        return None
    try:
        data = json.loads((cache_dir / _CACHE_FILE).read_text())
        entry = data[key]
        return DtypeChoice(
            entry["dtype"], "measured (cached)", entry.get("float32_ms"), entry.get("bfloat16_ms")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(cache_dir: Path | None, key: str, choice: DtypeChoice) -> None:
    if cache_dir is None:
        return
    path = cache_dir / _CACHE_FILE
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = {**asdict(choice), "cpu": cpu_model(), "measured_at": time.time()}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs a re-measurement next start
        log.debug("could not cache the dtype choice in %s: %s", path, exc)


def clear_memo() -> None:
    """Forget per-process choices (tests)."""
    with _memo_lock:
        _memo.clear()


class ForeignLoad:
    """How many cores *other* processes kept busy recently (Linux ``/proc/stat`` minus this
    process's CPU time), sampled at most every ``interval_s``.

    Intra-op threads wait for each other at every operator: when another process holds a core,
    a 2-thread forward waits for a descheduled thread hundreds of times (measured here: 161 ms
    on one thread, 1,636 ms on two with the other core busy). A lone request therefore bursts
    onto every core only while the machine's other cores are free.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self._interval = interval_s
        self._lock = threading.Lock()
        self._last: tuple[float, float, float] | None = self._sample()
        self._value = 0.0

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(wall s, busy CPU s of the machine, CPU s of this process), or None off Linux."""
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                fields = fh.readline().split()[1:]
            ticks = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return None
        values = [int(x) for x in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        busy = (sum(values[:8]) - idle) / ticks  # user..steal; guest is counted in user
        t = os.times()
        return time.monotonic(), busy, t.user + t.system

    def cores(self) -> float:
        """Cores used by everything but this process since the previous sample (0 if unknown)."""
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] < self._interval:
                return self._value
            cur = self._sample()
            if cur is None:
                return self._value
            wall = cur[0] - self._last[0]
            foreign = (cur[1] - self._last[1]) - (cur[2] - self._last[2])
            self._value = max(0.0, foreign / wall) if wall > 0 else self._value
            self._last = cur
            return self._value


def idle_cores_probe(interval_s: float = 0.5) -> Callable[[], float]:
    """``probe() -> cores not used by other processes`` (for the pool's lone-request burst)."""
    cores = usable_cores()
    load = ForeignLoad(interval_s)
    return lambda: max(0.0, cores - load.cores())
