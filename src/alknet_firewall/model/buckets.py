"""Shape buckets for accelerators: pad batches to a few fixed (rows, tokens) shapes.

On a GPU a forward pass at batch 1 is bound by kernel launches, not arithmetic: replaying a
captured CUDA graph cut SmolLM2's 8 layers from 4.5 ms to 0.97 ms (docs/benchmarks.md, GPU).
A graph only replays the exact shapes it was captured with, and every new shape costs a
capture, so windows are padded up to a handful of lengths and batches to powers of two. On a
CPU, padding is pure extra arithmetic, so buckets are off there unless asked for.

numpy/stdlib only; :class:`CudaGraphs` imports torch when it is built.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "BASE_LENGTHS",
    "CudaGraphs",
    "batch_bucket",
    "bucket_for",
    "padded_shape",
    "seq_buckets",
]


log = logging.getLogger(__name__)

#: Token lengths (template included) windows are padded up to; the longest window is added.
BASE_LENGTHS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def seq_buckets(longest: int, base: Sequence[int] = BASE_LENGTHS) -> tuple[int, ...]:
    """Bucket lengths up to ``longest`` (the longest possible window, template included)."""
    if longest < 1:
        raise ValueError("longest must be >= 1")
    return (*sorted({b for b in base if b < longest}), longest)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n``; ``n`` itself beyond the largest."""
    for b in buckets:
        if n <= b:
            return b
    return n


def batch_bucket(rows: int, max_rows: int) -> int:
    """Rows padded to the next power of two (at most ``max_rows``, never below ``rows``)."""
    b = 1
    while b < rows:
        b *= 2
    return max(rows, min(b, max_rows))


def padded_shape(
    lengths: Sequence[int], buckets: Sequence[int], max_rows: int, pad_rows: bool
) -> tuple[int, int]:
    """(rows, width) of the padded batch for sequences of ``lengths``."""
    width = bucket_for(max(lengths), buckets)
    rows = batch_bucket(len(lengths), max_rows) if pad_rows else len(lengths)
    return rows, width


class CudaGraphs:
    """Captured forward passes, one per padded (rows, width) shape, replayed on later calls.

    ``forward(ids, mask)`` must return a tuple of tensors. A shape whose capture fails (an op
    that syncs with the host, say) is remembered and runs eagerly from then on; at most
    ``max_graphs`` shapes are captured (the common window sizes), later shapes run eagerly.
    """

    def __init__(
        self,
        forward: Callable[[Any, Any], tuple[Any, ...]],
        device: Any,
        *,
        max_graphs: int = 16,
        capture: Callable[..., Any] | None = None,
    ) -> None:
        self._forward = forward
        self._device = device
        self._max = max_graphs
        self._graphs: dict[tuple[int, int], Any] = {}
        self._eager: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._capture = capture or self._capture_cuda

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)

    def should_capture(self, shape: tuple[int, int]) -> bool:
        return shape not in self._eager and (shape in self._graphs or len(self._graphs) < self._max)

    def __call__(self, ids: Any, mask: Any) -> tuple[Any, ...]:
        shape = (int(ids.shape[0]), int(ids.shape[1]))
        with self._lock:
            if not self.should_capture(shape):
                return self._forward(ids, mask)
            entry = self._graphs.get(shape)
            if entry is None:
                try:
                    entry = self._capture(shape, ids, mask)
                except Exception as exc:
                    log.warning("CUDA graph capture for shape %s failed (%s); eager", shape, exc)
                    self._eager.add(shape)
                    return self._forward(ids, mask)
                self._graphs[shape] = entry
            return entry.replay(ids, mask)

    def _capture_cuda(self, shape: tuple[int, int], ids: Any, mask: Any) -> Any:
        import torch

        static_ids = ids.clone()
        static_mask = mask.clone()
        stream = torch.cuda.Stream(device=self._device)
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up on a side stream, as torch.cuda.graphs asks
                self._forward(static_ids, static_mask)
        torch.cuda.current_stream(self._device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self._forward(static_ids, static_mask)
        return _Replay(graph, static_ids, static_mask, outputs)


class _Replay:
    def __init__(self, graph: Any, ids: Any, mask: Any, outputs: tuple[Any, ...]) -> None:
        self.graph, self.ids, self.mask, self.outputs = graph, ids, mask, outputs

    def replay(self, ids: Any, mask: Any) -> tuple[Any, ...]:
        self.ids.copy_(ids)
        self.mask.copy_(mask)
        self.graph.replay()
        return tuple(o.clone() for o in self.outputs)
