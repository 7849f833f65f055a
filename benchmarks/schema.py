"""The shape of ``benchmarks/results.json`` (what ``run.py`` writes and ``report.py`` renders).

Every section stores its result under its own name; a new section adds its key here.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = [
    "RSS",
    "Background",
    "DebertaRow",
    "Environment",
    "LoadSection",
    "Meta",
    "Results",
    "Stats",
    "Target",
]


class Stats(TypedDict, total=False):
    """Millisecond samples summarised by :func:`harness.summarize` (``n == 0``: no samples)."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float
    errors: int


class Background(TypedDict):
    """Cores kept busy by other processes before the run."""

    busy_cores: float
    steal_cores: float
    loadavg_1m: float
    loadavg_5m: float


class LoadSection(TypedDict):
    """CPU use while one metered section ran."""

    wall_s: float
    own_cores: float
    foreign_cores: float
    steal_cores: float
    loadavg_start: float
    loadavg_end: float


class Environment(TypedDict):
    machine: str
    platform: str
    arch: str
    cpu_model: str
    cpu_flags: list[str]
    physical_cores: int | None
    logical_cpus: int | None
    usable_cpus: int | None
    memory_gib: float
    torch_threads_default: int
    torch_interop_threads: int
    versions: dict[str, str]
    git_commit: str
    git_dirty: bool


class Meta(TypedDict, total=False):
    profile: str
    profile_settings: dict[str, Any]
    command: str
    started: str
    duration_s: float
    model: dict[str, Any]
    codebook: str
    inputs: dict[str, Any]


class Target(TypedDict):
    target: str
    measured: str
    bound: str
    met: bool | None
    note: str


class DebertaRow(Stats, total=False):
    model: str
    dtype: str
    threads: int
    tokens: int
    seq_len: int


class RSS(TypedDict):
    messages: int
    errors: int
    pool: str
    peak_rss_polled_mib: float
    vm_hwm_mib: float
    rss_after_load_mib: float
    rss_end_mib: float
    wall_s: float
    peak_rss_mib: float


class Results(TypedDict, total=False):
    """One run. Section keys are present only for the sections that ran (``--only``)."""

    meta: Meta
    background: Background
    load: dict[str, LoadSection]
    environment: Environment
    partial: list[str]
    #: pool label (``2×1``) -> token count -> stats
    latency: dict[str, dict[str, Stats]]
    #: torch threads (``"1"``, ``"2"``) -> stage -> stats, plus ``pool``
    breakdown: dict[str, dict[str, Any]]
    throughput: dict[str, Any]
    multiturn: dict[str, Any]
    gateway: dict[str, Any]
    baselines: dict[str, list[DebertaRow]]
    tfidf: dict[str, Any]
    coldstart: dict[str, Any]
    rss: RSS
    #: bench_dtype.py: torch float32/bfloat16 at 1 and 2 threads; what dtype auto chose
    dtype: dict[str, Any]
    #: bench_dtype.py: the lone-request burst on and off, 1 and 32 clients
    cores: dict[str, Any]
    #: bench_onnx.py: ONNX Runtime latency, throughput, verdict deltas; fresh-process figures
    onnx: dict[str, Any]
    onnx_process: dict[str, Any]
    targets: list[Target]
