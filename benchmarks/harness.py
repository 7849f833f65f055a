"""Shared pieces of the benchmark harness: run profiles, timing and statistics, the machine and
its background load, the firewalls under test, and the section registry.

A *section* is one measurement (``latency``, ``gateway``, ...). Each lives in a
``benchmarks/bench_<topic>.py`` module (or ``baselines.py``) and registers itself with
:func:`section`; ``run.py`` imports every such module and runs the registered sections in
phase order (see ``run.py``'s docstring for how to add one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from benchmarks.schema import Results, Stats, Target

ROOT = Path(__file__).resolve().parents[1]

LENGTHS = (16, 64, 256, 1024, 8192)
CONCURRENCY = (1, 8, 32, 128)


@dataclass(frozen=True)
class Profile:
    """Iteration counts and durations of one kind of run."""

    name: str
    warmup: int
    lat_budget_s: float  # per length and pool configuration
    lat_min: int
    lat_max: int
    long_min: int  # timed iterations at 8,192 tokens
    msgs_per_length: int
    base_budget_s: float  # per baseline configuration
    base_min: int
    base_max: int
    breakdown_n: int
    duration_s: float  # per concurrency level (ascreen and HTTP)
    gw_latency_n: int
    cold_repeats: int
    rss_messages: int
    conversations: int
    tfidf_per_source: int | None
    tfidf_folds: int
    #: DeBERTa content lengths (empty: every length, capped at 510).
    base_lengths: tuple[int, ...] = ()


FULL = Profile(
    name="full",
    warmup=2,
    lat_budget_s=8.0,
    lat_min=10,
    lat_max=300,
    long_min=3,
    msgs_per_length=32,
    base_budget_s=3.0,
    base_min=5,
    base_max=100,
    breakdown_n=60,
    duration_s=12.0,
    gw_latency_n=150,
    cold_repeats=3,
    rss_messages=200,
    conversations=6,
    tfidf_per_source=None,
    tfidf_folds=5,
)
QUICK = Profile(
    name="quick",
    warmup=1,
    lat_budget_s=0.4,
    lat_min=2,
    lat_max=10,
    long_min=1,
    msgs_per_length=4,
    base_budget_s=0.2,
    base_min=1,
    base_max=3,
    breakdown_n=3,
    duration_s=1.5,
    gw_latency_n=6,
    cold_repeats=1,
    rss_messages=20,
    conversations=1,
    tfidf_per_source=60,
    tfidf_folds=3,
    base_lengths=(64,),
)

_T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - _T0:7.1f}s] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Statistics and timing
# --------------------------------------------------------------------------------------------
def summarize(ms: Sequence[float]) -> Stats:
    """n, p50/p95/p99 (linear interpolation), mean, min, max of millisecond samples."""
    a = np.asarray(list(ms), dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "n": int(a.size),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def time_loop(
    call: Callable[[int], Any], *, warmup: int, min_n: int, max_n: int, budget_s: float
) -> list[float]:
    """Milliseconds of ``call(i)``: ``warmup`` untimed calls, then at least ``min_n`` and at most
    ``max_n`` timed ones, stopping once ``budget_s`` of timed calls have passed."""
    for i in range(warmup):
        call(i)
    out: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < min_n or (i < max_n and time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        call(warmup + i)
        out.append((time.perf_counter() - t) * 1000.0)
        i += 1
    return out


# --------------------------------------------------------------------------------------------
# Machine and background load
# --------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
                return [f for f in wanted if f in flags]
    return []


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _own_cpu_s() -> float:
    """CPU seconds of this process, its finished children and its live descendants."""
    import psutil

    p = psutil.Process()
    t = p.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for c in p.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ct = c.cpu_times()
            total += ct.user + ct.system
    return total


def _system_busy_s() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine incl. steal, steal seconds) since boot."""
    import psutil

    t = psutil.cpu_times()
    fields = [f for f in t._fields if f not in ("guest", "guest_nice")]
    total = sum(getattr(t, f) for f in fields)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, getattr(t, "steal", 0.0)


class LoadMeter:
    """Per section: wall time, CPU used by this process tree and by everything else."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        log(f"== {name}")
        la0 = os.getloadavg()[0]
        b0, s0 = _system_busy_s()
        o0 = _own_cpu_s()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            wall = max(time.perf_counter() - t0, 1e-9)
            b1, s1 = _system_busy_s()
            own = _own_cpu_s() - o0
            self.sections[name] = {
                "wall_s": wall,
                "own_cores": own / wall,
                "foreign_cores": max(0.0, (b1 - b0) - own) / wall,
                "steal_cores": (s1 - s0) / wall,
                "loadavg_start": la0,
                "loadavg_end": os.getloadavg()[0],
            }
            log(
                f"   {name}: {wall:.1f}s, others used "
                f"{self.sections[name]['foreign_cores']:.2f} cores"
            )


def background_load(seconds: float = 2.0) -> dict[str, float]:
    """Cores kept busy by other processes while this one sleeps."""
    b0, s0 = _system_busy_s()
    o0 = _own_cpu_s()
    time.sleep(seconds)
    b1, s1 = _system_busy_s()
    own = _own_cpu_s() - o0
    return {
        "busy_cores": max(0.0, (b1 - b0) - own) / seconds,
        "steal_cores": (s1 - s0) / seconds,
        "loadavg_1m": os.getloadavg()[0],
        "loadavg_5m": os.getloadavg()[1],
    }


def environment() -> dict[str, Any]:
    import psutil
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions["transformers"] = transformers.__version__
    for mod in ("numpy", "sklearn", "httpx", "uvicorn", "starlette", "tokenizers"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    try:
        from importlib import metadata

        versions["alknet-firewall"] = metadata.version("alknet-firewall")
    except Exception:
        pass
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "machine": platform.node(),
        "platform": platform.platform(),
        "arch": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cpus": psutil.cpu_count(logical=True),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch_threads_default": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "versions": versions,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": dirty,
    }


# --------------------------------------------------------------------------------------------
# Firewalls
# --------------------------------------------------------------------------------------------
def firewall_settings(
    workers: int,
    threads: int,
    *,
    cache_size: int = 0,
    warmup: bool = True,
    detection: dict[str, Any] | None = None,
) -> Any:
    from alknet_firewall.config import load_settings

    extra: dict[str, Any] = {"detection": detection} if detection else {}
    return load_settings(
        None,
        pool={
            "workers": workers,
            "threads_per_worker": threads,
            "cache_size": cache_size,
            "warmup": warmup,
        },
        **extra,
    )


def make_firewall(
    workers: int,
    threads: int,
    *,
    cache_size: int = 0,
    like: Any = None,
    detection: dict[str, Any] | None = None,
) -> Any:
    """A Firewall; with ``like``, one that shares that firewall's model and codebook."""
    from alknet_firewall.firewall import Firewall

    s = firewall_settings(workers, threads, cache_size=cache_size, detection=detection)
    if like is None:
        return Firewall(s)
    return Firewall(s, model=like.model, codebook=like.codebook)


def has_seams() -> bool:
    """Whether this version screens the seams between messages (``detection.seams``)."""
    from alknet_firewall.config import DetectionSettings

    return "seams" in DetectionSettings.model_fields


def pool_label(workers: int, threads: int) -> str:
    return f"{workers}×{threads}"


def cli_command() -> list[str]:
    """The ``alknet-firewall`` command of this environment."""
    exe = Path(sys.executable).parent / "alknet-firewall"
    if exe.exists():
        return [str(exe)]
    return [
        sys.executable,
        "-c",
        "import sys; from alknet_firewall.cli import main; sys.exit(main())",
    ]


# --------------------------------------------------------------------------------------------
# Section registry
# --------------------------------------------------------------------------------------------
#: When a section runs: ``firewall`` while the shared 2×1 firewall is open (``ctx.firewall``);
#: ``model`` after it was closed (``ctx.model`` still tokenises); ``process`` after both were
#: released (fresh processes measure themselves).
Phase = Literal["firewall", "model", "process"]
PHASES: tuple[Phase, ...] = ("firewall", "model", "process")


@dataclass
class Context:
    """What every section gets: the run's options, profile and load meter, the corpus, the
    shared firewall and the messages cut to exact token counts, and the results so far."""

    args: argparse.Namespace
    prof: Profile
    meter: LoadMeter
    results: Results
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: The shared firewall (pool 2×1, cache off); open during the ``firewall`` phase only.
    firewall: Any = None
    #: Its model (``tokenize``, ``count_tokens``), until the ``process`` phase.
    model: Any = None
    #: Benign messages of exactly n content tokens, for each n in :data:`LENGTHS`.
    msgs_by_len: dict[int, list[str]] = field(default_factory=dict)
    #: More 64-token messages (throughput, gateway, multi-turn) and assistant replies.
    msgs64: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)

    @property
    def quick(self) -> bool:
        return self.prof.name == "quick"


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable[[Context], Any]
    phase: Phase
    order: int
    #: LoadMeter label around the whole section; None: the section meters its own parts.
    meter: str | None
    render: Callable[[Results], list[str]] | None = None
    targets: Callable[[Results], list[Target]] | None = None


_REGISTRY: dict[str, Section] = {}
F = TypeVar("F", bound=Callable[[Context], Any])


def section(
    name: str,
    *,
    phase: Phase,
    order: int,
    meter: str | Literal[True] | None = True,
    render: Callable[[Results], list[str]] | None = None,
    targets: Callable[[Results], list[Target]] | None = None,
) -> Callable[[F], F]:
    """Register ``fn(ctx) -> result`` as section ``name``: its result is stored as
    ``results[name]``. ``order`` sorts sections within a phase (built-ins use 10, 20, ...);
    ``meter`` is the load-meter label (default: ``name``; None: ``fn`` meters itself);
    ``render(results)`` returns markdown lines for ``docs/benchmarks.md`` (placed after the
    built-in tables), ``targets(results)`` extra rows of the targets table."""

    def register(fn: F) -> F:
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            raise ValueError(f"benchmark section {name!r} registered twice")
        label = name if meter is True else meter
        _REGISTRY[name] = Section(name, fn, phase, order, label, render, targets)
        return fn

    return register


def sections() -> list[Section]:
    """Registered sections in run order (phase, then order)."""
    return sorted(_REGISTRY.values(), key=lambda s: (PHASES.index(s.phase), s.order, s.name))


def run_section(sec: Section, ctx: Context) -> None:
    """Run one section and store its result under its name."""
    if sec.meter is None:
        ctx.results[sec.name] = sec.run(ctx)  # type: ignore[literal-required]
        return
    with ctx.meter.section(sec.meter):
        ctx.results[sec.name] = sec.run(ctx)  # type: ignore[literal-required]
