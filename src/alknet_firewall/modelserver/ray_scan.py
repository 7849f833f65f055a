"""Offline scans on Ray Data (extra ``alknet-firewall[ray]``): ``alknet-firewall scan --engine
ray INPUT --output OUT``, or :func:`scan` from Python.

Each actor of the pool (``map_batches``, ``compute=ActorPoolStrategy(size=ray.scan_actors)``)
builds one :class:`~alknet_firewall.firewall.Firewall` and screens its batches exactly as the
local scan does (the same :func:`~alknet_firewall.scan.scan_chunk`), so verdicts are identical
(up to bf16 noise between batch shapes, and cache hits, which depend on batching); the driver
writes the output lines in input order, in the local scan's format. JSONL inputs are read as
text so that every output line is its input line with ``"verdict"`` appended; a Parquet row
becomes the JSON object of its columns.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Settings, coerce_settings

log = logging.getLogger(__name__)

__all__ = [
    "scan",
]


class _ScanActor:
    """One firewall per actor; ``__call__`` screens one batch of lines."""

    def __init__(self, settings_json: str, policy: str | None) -> None:
        from ..firewall import Firewall

        settings = Settings.model_validate_json(settings_json)
        self.fw = Firewall(settings)
        self.policy = policy

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from ..scan import scan_chunk

        lines = [str(x).rstrip("\r\n") for x in batch["text"]]
        keep = [i for i, line in enumerate(lines) if line.strip()]
        screened = scan_chunk(self.fw, [lines[i] for i in keep], self.policy)
        results = dict(zip(keep, screened, strict=True))
        outcome, out = [], []
        for i in range(len(lines)):
            o, text = results.get(i, ("skip", ""))
            outcome.append(o)
            out.append(json.dumps(text) if isinstance(text, dict) else text)
            if isinstance(text, dict):
                outcome[-1] = "error_record"
        return {"outcome": outcome, "out": out}


def _rows_as_lines(batch: Any) -> dict[str, list[str]]:
    """A Parquet batch (pandas) as JSON lines, one object per row."""
    records = batch.to_dict(orient="records")
    return {"text": [json.dumps(_plain(r), ensure_ascii=False) for r in records]}


def _plain(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _fit_actors(wanted: int, cpus: float, r: Any) -> tuple[int, float]:
    """Actors (and CPUs each) that leave the cluster half a CPU for the read tasks: an actor
    pool holding every CPU would wait forever for its input."""
    import ray

    if r.scan_gpus_per_actor:
        return wanted, cpus
    total = float(ray.cluster_resources().get("CPU", 1.0))
    if cpus > total - 0.5:
        cpus = max(0.1, total / 2)
    fit = max(1, int((total - 0.5) // cpus))
    if fit < wanted:
        log.warning(
            "ray.scan_actors=%d x %.2f CPUs do not fit %.1f CPUs with room to read: using %d",
            wanted,
            cpus,
            total,
            fit,
        )
    return min(wanted, fit), cpus


def _is_parquet(paths: Sequence[str]) -> bool:
    p = Path(paths[0])
    if p.is_dir():
        return any(x.suffix == ".parquet" for x in p.iterdir())
    return p.suffix == ".parquet"


def scan(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    settings: Settings | dict[str, Any] | str | None = None,
    *,
    policy: str | None = None,
    codebook: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    actors: int | None = None,
) -> dict[str, int]:
    """Screen every line (JSONL) or row (Parquet) of ``inputs`` with an actor pool and write
    ``output`` (``-`` for stdout) in input order. Uses the running Ray (``ray.init`` first to
    choose the cluster) or starts one per ``ray.address``. Returns ``scanned`` and the outcome
    counts of :func:`~alknet_firewall.scan.scan_chunk` (action, ``error``, ``failed:<code>``)."""
    import sys

    import ray

    settings = coerce_settings(settings)
    if codebook:
        settings = settings.merged(detection={"codebook": str(codebook)})
    r = settings.ray
    # One firewall per actor: one worker on the actor's CPUs (never more: other actors share
    # the node), no warm-up.
    threads = max(1, int(r.scan_cpus_per_actor))
    settings = settings.merged(
        pool={
            "workers": 1,
            "threads_per_worker": threads,
            "burst_threads": threads,
            "warmup": False,
        }
    )
    started = False
    if not ray.is_initialized():
        from .ray_init import init_ray

        init_ray(r)
        started = True
    try:
        n_actors, cpus = _fit_actors(actors or r.scan_actors, r.scan_cpus_per_actor, r)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        paths = (
            [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(p) for p in inputs]
        )
        if _is_parquet(paths):
            ds = ray.data.read_parquet(paths).map_batches(_rows_as_lines, batch_format="pandas")
        else:
            ds = ray.data.read_text(paths, drop_empty_lines=True)
        ds = ds.map_batches(
            _ScanActor,
            fn_constructor_args=(settings.model_dump_json(), policy),
            batch_size=batch_size or r.scan_batch_size,
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=cpus,
            num_gpus=r.scan_gpus_per_actor or None,
            batch_format="numpy",
        )
        counts: dict[str, int] = {}
        n = 0
        out = sys.stdout if str(output) == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
        try:
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                for outcome, text in zip(batch["outcome"], batch["out"], strict=True):
                    outcome, text = str(outcome), str(text)
                    if outcome == "skip":
                        continue
                    n += 1
                    if outcome == "error_record":
                        outcome = "error"
                        text = json.dumps({"line": n, **json.loads(text)})
                    counts[outcome] = counts.get(outcome, 0) + 1
                    out.write(text + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
        return {"scanned": n, **counts}
    finally:
        if started:
            ray.shutdown()
