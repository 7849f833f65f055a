"""The transformers implementation of :class:`~alknet_firewall.model.base.ActivationModel`:
a Hugging Face model truncated after its deepest requested layer, pooled per window.

torch and transformers are imported inside the methods, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import constants
from ..config import ModelSettings
from ..errors import ConfigurationError, ModelError, require
from ..features import PoolPlan, Window, WindowFeatures
from ..hardware import DtypeChoice, choose_dtype
from .base import PoolingModel
from .buckets import CudaGraphs, padded_shape, seq_buckets
from .sources import ModelLocation, quiet_transformers

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["TransformersActivationModel", "pool_torch"]

log = logging.getLogger(__name__)


class TransformersActivationModel(PoolingModel):
    """A Hugging Face model truncated after its deepest requested layer (no head; no final norm
    unless the last layer is requested)."""

    def __init__(self, location: ModelLocation, settings: ModelSettings) -> None:
        require("torch")
        require("transformers")
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.settings = settings
        self.location = location
        self.name = location.name
        self.revision = location.revision
        self.weights_digest = location.weights_digest
        self.layers = tuple(settings.reading.layers)
        self.pooling = settings.reading.pooling
        self.max_tokens = settings.reading.max_tokens
        self.window_overlap = settings.reading.window_overlap
        self._device = torch.device(settings.device)
        try:
            with quiet_transformers():
                config = AutoConfig.from_pretrained(str(location.path))
                total = int(config.num_hidden_layers)
                deepest = max(self.layers)
                if deepest > total:
                    raise ConfigurationError(
                        f"model.reading.layers asks for layer {deepest} but {self.name} has "
                        f"{total} layers"
                    )
                self.tokenizer = AutoTokenizer.from_pretrained(str(location.path))
                self.dtype_choice = _choose_dtype(settings, config)
                self.dtype = self.dtype_choice.dtype
                self._torch_dtype = getattr(torch, self.dtype)
                model = AutoModel.from_pretrained(
                    str(location.path),
                    num_hidden_layers=deepest,
                    dtype=self._torch_dtype,
                    use_safetensors=True,
                )
        except (ConfigurationError, ModelError):
            raise
        except Exception as exc:
            raise ModelError(f"could not load the model from {location.path}: {exc}") from exc
        # Exact early stop: the truncated stack's last hidden state must equal the full model's
        # hidden_states[deepest], so the final norm must not be applied - unless deepest is the
        # model's last layer, whose entry in the full model's hidden_states is normed.
        if hasattr(model, "norm") and deepest < total:
            model.norm = torch.nn.Identity()
        model.eval()
        model.requires_grad_(False)
        self._model = model.to(self._device)
        self.total_layers = total
        self.hidden_size = int(config.hidden_size)
        self.feature_size = self.hidden_size * (2 if self.pooling == "both" else 1)
        self._prefix, self._suffix = self._template()
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self._warm = threading.Lock()
        if settings.dtype == "auto":
            log.info("model.dtype auto: %s", self.dtype_choice.describe())
        # Shape buckets (CUDA by default) and CUDA graphs replayed per bucket.
        on_cuda = self._device.type == "cuda"
        buckets = settings.shape_buckets if settings.shape_buckets is not None else on_cuda
        longest = len(self._prefix) + settings.reading.max_tokens + len(self._suffix)
        self._buckets: tuple[int, ...] = seq_buckets(longest) if buckets else ()
        self._graphs: CudaGraphs | None = None
        if settings.cuda_graphs and not on_cuda:
            log.warning("model.cuda_graphs needs a CUDA device; ignored on %s", self._device)
        elif settings.cuda_graphs:
            self._graphs = CudaGraphs(self._hidden, self._device)

    # -- tokenisation ------------------------------------------------------------------------
    def _template(self) -> tuple[list[int], list[int]]:
        if not self.settings.reading.chat_template or not getattr(
            self.tokenizer, "chat_template", None
        ):
            return [], []
        sentinel = "\u0000ALKNET\u0000"
        turns = [{"role": "user", "content": sentinel}]
        if self.settings.reading.system_prompt is not None:
            turns.insert(0, {"role": "system", "content": self.settings.reading.system_prompt})
        rendered = self.tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=True
        )
        if not isinstance(rendered, str) or rendered.count(sentinel) != 1:
            raise ModelError("the tokenizer's chat template does not render a user turn")
        pre, suf = rendered.split(sentinel)
        enc = self.tokenizer
        return (
            list(enc(pre, add_special_tokens=False)["input_ids"]),
            list(enc(suf, add_special_tokens=False)["input_ids"]),
        )

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.tokenize(texts)]

    def _ids_and_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if not getattr(self.tokenizer, "is_fast", False):
            raise ModelError(
                f"{self.name} has no fast tokenizer, so its tokens have no character offsets: "
                f"put the model's tokenizer.json in {self.location.path} (transformers loads a "
                "fast tokenizer from it)"
            )
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    # -- forward -------------------------------------------------------------------------------
    def encode_token_windows(self, wins: list[Window], n_texts: int) -> WindowFeatures:
        import torch

        if self.settings.threads and torch.get_num_threads() != self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        with torch.inference_mode():
            return super().encode_token_windows(wins, n_texts)

    def _pool(self, plan: PoolPlan) -> list[np.ndarray]:
        import torch

        seqs = plan.seqs
        n_rows, width = len(seqs), max(len(x) for x in seqs)
        if self._buckets:
            # A few fixed shapes (rows padded too when graphs replay them); the padding rows
            # attend to one pad token and are dropped below.
            n_rows, width = padded_shape(
                [len(x) for x in seqs], self._buckets, self.settings.batch_size,
                pad_rows=self._graphs is not None,
            )  # fmt: skip
        ids = torch.full((n_rows, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, width), dtype=torch.long)
        mask[len(seqs) :, 0] = 1
        for r, x in enumerate(seqs):
            ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        run = self._graphs if self._graphs is not None else self._hidden
        hidden = run(ids.to(self._device), mask.to(self._device))
        return pool_torch(plan, [hs[: len(seqs)] for hs in hidden])

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Hidden states of the requested layers, in ``self.layers`` order."""
        out = self._model(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
        )
        return tuple(out.hidden_states[k] for k in self.layers)

    def hidden_states(self, text: str) -> torch.Tensor:  # pragma: no cover - debugging aid
        """All hidden states of one text (template applied), shape [layers+1, tokens, hidden]."""
        import torch

        ids = self._prefix + self.tokenize([text])[0] + self._suffix
        with torch.inference_mode():
            out = self._model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return torch.stack([x[0] for x in out.hidden_states])

    def warmup(self) -> None:
        """Run one tiny forward pass (installs lazy hooks before threads share the model)."""
        with self._warm:
            self.encode(["warm-up"])

    def init_worker(self, threads: int | None) -> None:
        """Called once in each pool worker thread: torch's intra-op threads for that thread."""
        if threads is not None:
            import torch

            # torch initialises a thread's count lazily from the last value any thread set;
            # touch it first so that later lazy init cannot overwrite ours.
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    def close(self) -> None:
        """Nothing to release: the weights go with the object."""

    def describe(self) -> dict[str, Any]:
        return {
            **self._identity(),
            "source": self.location.source,
            "path": str(self.location.path),
            "dtype_reason": self.dtype_choice.reason,
            "dtype_float32_ms": self.dtype_choice.float32_ms,
            "dtype_bfloat16_ms": self.dtype_choice.bfloat16_ms,
            "backend": "local",
            "device": str(self._device),
            "shape_buckets": list(self._buckets),
            "cuda_graphs": self._graphs is not None,
            "cache_dir": str(self.settings.cache_dir or constants.cache_dir()),
            **self.location.extra,
        }


def pool_torch(plan: PoolPlan, hidden: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The plan's rows (float32, in ``plan.rows`` order) from each layer's hidden states
    ``[len(plan.seqs), width, hidden]``: the torch reduction of :class:`PoolPlan`."""
    import torch

    if not hidden:
        return []
    dev = hidden[0].device
    mask = torch.from_numpy(plan.mean_mask(hidden[0].shape[1])).to(dev)
    denom = mask.sum(1, keepdim=True)
    seq_idx = torch.arange(len(plan.seqs), device=dev)
    last_pos = torch.from_numpy(plan.last_pos).to(dev)
    r, a, n = (torch.from_numpy(x).to(dev) for x in (plan.span_seq, plan.span_start, plan.span_len))
    out = []
    for hs in hidden:
        hs = hs.float()
        parts = []
        if plan.mean:
            parts.append((hs * mask[:, :, None]).sum(1) / denom)
        if plan.last:
            parts.append(hs[seq_idx, last_pos])
        rows = [torch.cat(parts, dim=1)]
        if len(n):
            # Span means from a running sum over positions: one gather for all spans.
            csum = torch.cumsum(hs, dim=1)
            csum = torch.cat([torch.zeros_like(csum[:, :1]), csum], dim=1)
            rows.append((csum[r, a + n] - csum[r, a]) / n[:, None])
        out.append(torch.cat(rows).cpu().numpy())
    return out


def _choose_dtype(settings: ModelSettings, config: Any) -> DtypeChoice:
    """``model.dtype`` resolved for this machine (``auto``: see :mod:`alknet_firewall.hardware`)."""
    import torch

    shape = ":".join(
        str(getattr(config, k, ""))
        for k in ("model_type", "hidden_size", "intermediate_size", "num_attention_heads",
                  "num_key_value_heads")
    )  # fmt: skip
    return choose_dtype(
        settings.dtype,
        settings.device,
        bench=_layer_bench(config),
        cache_dir=Path(settings.cache_dir or constants.cache_dir()),
        shape_tag=shape,
        torch_version=torch.__version__,
    )


def _layer_bench(config: Any, tokens: int = 72, repeats: int = 5) -> Callable[[str], float]:
    """Seconds of one forward pass of a one-layer copy of the architecture (random weights,
    small vocabulary, ``tokens`` tokens, one thread) in a dtype: the start-up micro-benchmark
    behind ``model.dtype: auto`` (~0.1-0.3 s for both dtypes)."""

    def bench(dtype: str) -> float:
        import copy

        import torch
        from transformers import AutoModel

        cfg = copy.deepcopy(config)
        cfg.num_hidden_layers = 1
        cfg.vocab_size = 256
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if hasattr(cfg, key):
                setattr(cfg, key, None)
        # (runs inside the caller's quiet_transformers(); nesting it would re-enable bars)
        model = AutoModel.from_config(cfg, dtype=getattr(torch, dtype)).eval()
        ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(0))
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for _ in range(2):
                    model(input_ids=ids, use_cache=False)
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    model(input_ids=ids, use_cache=False)
                    best = min(best, time.perf_counter() - t0)
        finally:
            torch.set_num_threads(previous)
        return best

    return bench
