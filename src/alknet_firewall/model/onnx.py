"""ONNX Runtime backend: the truncated model exported once, run without torch.

Size (~490 lines): the export (torch side) and the runtime (onnxruntime side) must agree on
one graph signature and one directory layout; they are kept together so they change together.

``alknet-firewall model prepare --format onnx [--quantize int8]`` (needs torch + transformers,
once, on any machine) writes a directory into the cache::

    <cache>/onnx/<model>-L<layers>-<precision>/
        model.onnx          inputs input_ids, attention_mask [batch, seq] (int64);
                            outputs hidden_<layer> [batch, seq, hidden] for each codebook layer
        tokenizer.json      the model's fast tokenizer (read with the `tokenizers` package)
        alknet-onnx.json    identity (name, revision, weights_digest, layers), the chat-template
                            prefix/suffix token ids, pad id, precision

:class:`OnnxActivationModel` runs that directory with onnxruntime; importing and running it
needs ``onnxruntime``, ``tokenizers`` and numpy only — never torch (``model.backend: onnx``).
Pooling follows the same :func:`~alknet_firewall.features.plan_pooling` plan as the torch
backend; :func:`pool_numpy` is its numpy reduction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import constants
from ..config import ModelSettings
from ..errors import ConfigurationError, ModelError, ModelNotFoundError, require
from ..features import PoolPlan
from ..hardware import usable_cores
from .base import PoolingModel

__all__ = [
    "EXPORT_FORMAT",
    "INT8_KEEP_FLOAT",
    "META_FILE",
    "MODEL_FILE",
    "OPSET",
    "PRECISIONS",
    "TOKENIZER_FILE",
    "OnnxActivationModel",
    "default_onnx_dir",
    "export_onnx",
    "find_onnx_dir",
    "matmuls_in",
    "pool_numpy",
]


log = logging.getLogger(__name__)

META_FILE = "alknet-onnx.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
#: Bumped when the exported graph's inputs/outputs change.
EXPORT_FORMAT = 1
OPSET = 18
PRECISIONS = ("float32", "int8")
#: Windows per session run: ONNX Runtime's arena keeps the peak of the largest run, and 16
#: windows of 137 tokens raised the process by ~150 MiB against ~35 MiB for 4 (CPU batching
#: gains little: measurements.md).
MAX_WINDOWS_PER_RUN = 4
#: Modules whose MatMuls stay float32 in the int8 export.
INT8_KEEP_FLOAT = ("down_proj",)


# --------------------------------------------------------------------------------------------
# Where the export lives
# --------------------------------------------------------------------------------------------
def _layers_tag(layers: Sequence[int]) -> str:
    return "-".join(str(x) for x in sorted(set(layers)))


def default_onnx_dir(settings: ModelSettings, model_dir_name: str, precision: str) -> Path:
    root = settings.cache_dir or constants.cache_dir()
    return (
        Path(root)
        / "onnx"
        / f"{model_dir_name}-L{_layers_tag(settings.reading.layers)}-{precision}"
    )


def find_onnx_dir(settings: ModelSettings) -> Path:
    """The export directory for these settings: ``model.onnx.path`` if set, else the cache's."""
    precision = settings.onnx.precision
    if settings.onnx.path is not None:
        path = Path(settings.onnx.path).expanduser()
    else:
        root = Path(settings.cache_dir or constants.cache_dir()) / "onnx"
        want = f"-L{_layers_tag(settings.reading.layers)}-{precision}"
        found = sorted(root.glob(f"*{want}")) if root.is_dir() else []
        found = [p for p in found if (p / META_FILE).is_file()]
        if settings.source == "embedded":
            with contextlib.suppress(ModelNotFoundError):
                from .sources import embedded_cache_path

                name = embedded_cache_path(settings).name
                found = [p for p in found if p.name == f"{name}{want}"] or found
        if len(found) > 1:
            raise ConfigurationError(
                f"several ONNX exports match layers {list(settings.reading.layers)} "
                f"({precision}) in {root}: {[p.name for p in found]}; set model.onnx.path to "
                "the one to use"
            )
        if not found:
            raise ModelNotFoundError(
                f"no ONNX export of layers {list(settings.reading.layers)} ({precision}) in "
                f"{root}. Build "
                "it once with `alknet-firewall model prepare --format onnx"
                + (" --quantize int8" if precision == "int8" else "")
                + "` where torch is installed (python -m pip install "
                "'alknet-firewall[torch,onnx-export]' torch==2.13.0), or copy an export and set "
                "model.onnx.path."
            )
        path = found[0]
    if not (path / META_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise ModelNotFoundError(
            f"{path} is not an ONNX export ({META_FILE} and {MODEL_FILE} expected); build one "
            "with `alknet-firewall model prepare --format onnx`"
        )
    return path


# --------------------------------------------------------------------------------------------
# Export (torch + transformers; run once)
# --------------------------------------------------------------------------------------------
def export_onnx(settings: ModelSettings, precision: str = "float32") -> Path:
    """Export the truncated model for ``settings`` (layers, template) into the cache; return the
    directory. Idempotent: an existing export with the same identity is kept."""
    if precision not in PRECISIONS:
        raise ConfigurationError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    require("torch")
    require("transformers")
    require("onnxruntime", extra="onnx-export")
    require("onnxscript", extra="onnx-export")
    from filelock import FileLock

    from .sources import resolve
    from .transformers import TransformersActivationModel

    location = resolve(settings)
    target = (
        Path(settings.onnx.path).expanduser()
        if settings.onnx.path is not None
        else default_onnx_dir(settings, location.path.name, precision)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1200):
        meta_path = target / META_FILE
        if meta_path.is_file():
            with contextlib.suppress(OSError, ValueError):
                meta = json.loads(meta_path.read_text())
                if _same_export(meta, location.weights_digest, settings, precision):
                    return target
        fp32_settings = settings.model_copy(
            update={"dtype": "float32", "device": "cpu", "backend": "local"}
        )
        model = TransformersActivationModel(location, fp32_settings)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the export is meant to be copied around
        try:
            t0 = time.perf_counter()
            _torch_export(model, tmp / "fp32.onnx")
            if precision == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                # MatMul weights only (the embedding stays float32), per-channel scales, and
                # the MLP down-projections kept in float32: they write the few very large
                # activations of a Llama-style residual stream, and quantising them tripled
                # the feature error (standardised RMS 0.67 -> 0.19 without them).
                quantize_dynamic(
                    str(tmp / "fp32.onnx"),
                    str(tmp / MODEL_FILE),
                    op_types_to_quantize=["MatMul"],
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=matmuls_in(tmp / "fp32.onnx", INT8_KEEP_FLOAT),
                )
                (tmp / "fp32.onnx").unlink()
            else:
                os.replace(tmp / "fp32.onnx", tmp / MODEL_FILE)
            for extra in tmp.glob("*.data"):  # external-data leftovers of the fp32 file
                extra.unlink()
            shutil.copy2(location.path / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            info = model.describe()
            meta = {
                "format": EXPORT_FORMAT,
                "precision": precision,
                "int8_float_modules": list(INT8_KEEP_FLOAT) if precision == "int8" else [],
                "opset": OPSET,
                "exported_s": round(time.perf_counter() - t0, 1),
                "torch": __import__("torch").__version__,
                "name": model.name,
                "revision": model.revision,
                "source": location.source,
                "weights_digest": model.weights_digest,
                "total_layers": model.total_layers,
                "hidden_size": model.hidden_size,
                "layers": list(model.layers),
                "prefix": list(model._prefix),
                "suffix": list(model._suffix),
                "pad_id": model._pad_id,
                "chat_template": settings.reading.chat_template,
                "system_prompt": settings.reading.system_prompt,
                "model_path": info["path"],
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            log.info(
                "exported %s (%s) to %s in %.0f s",
                model.name,
                precision,
                target,
                meta["exported_s"],
            )
        finally:
            model.close()
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def matmuls_in(path: Path, scopes: Sequence[str]) -> list[str]:
    """Names of the MatMul nodes exported from modules whose name contains one of ``scopes``
    (the dynamo exporter records each node's module path in its metadata)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        where = meta.get("pkg.torch.onnx.name_scopes", "") + meta.get("namespace", "")
        if any(scope in where for scope in scopes):
            names.append(node.name)
    return names


def _same_export(
    meta: dict[str, Any], digest: str, settings: ModelSettings, precision: str
) -> bool:
    return (
        meta.get("format") == EXPORT_FORMAT
        and meta.get("weights_digest") == digest
        and meta.get("precision") == precision
        and meta.get("int8_float_modules", [])
        == (list(INT8_KEEP_FLOAT) if precision == "int8" else [])
        and meta.get("layers") == list(settings.reading.layers)
        and meta.get("chat_template") == settings.reading.chat_template
        and meta.get("system_prompt") == settings.reading.system_prompt
    )


def _torch_export(model: Any, path: Path) -> None:
    """torch.onnx.export of the truncated stack: hidden states of the requested layers."""
    import torch

    layers = tuple(model.layers)

    class _Hidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=True,
                use_cache=False,
            )
            return tuple(out.hidden_states[k] for k in layers)

    wrapper = _Hidden(model._model).eval()
    ids = torch.randint(0, 1000, (2, 24), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 16:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    with torch.inference_mode(False), torch.no_grad(), _quiet_export():
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=[f"hidden_{k}" for k in layers],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
        )


@contextlib.contextmanager
def _quiet_export() -> Any:
    """The dynamo exporter prints progress and warns about torchvision; keep logs clean."""
    import io
    import warnings
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(buf):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch").setLevel(level)


# --------------------------------------------------------------------------------------------
# The runtime model (onnxruntime + tokenizers + numpy)
# --------------------------------------------------------------------------------------------
class OnnxActivationModel(PoolingModel):
    """:class:`~alknet_firewall.model.base.ActivationModel` on ONNX Runtime, without torch.

    One session serves every pool worker (concurrent ``run`` calls are safe in ONNX Runtime);
    its intra-op pool has ``model.onnx.threads`` threads (default: every usable core), so a lone
    request uses all cores and concurrent requests share them. A second session per thread
    count would double the weights in memory, which is what the backend is for avoiding.
    """

    _max_batch = MAX_WINDOWS_PER_RUN

    def __init__(self, settings: ModelSettings, path: Path | None = None) -> None:
        require("onnxruntime", extra="onnx")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.settings = settings
        self.path = path or find_onnx_dir(settings)
        try:
            meta = json.loads((self.path / META_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {self.path / META_FILE}: {exc}") from exc
        if meta.get("format") != EXPORT_FORMAT:
            raise ModelError(
                f"{self.path} was exported in format {meta.get('format')}, this version reads "
                f"{EXPORT_FORMAT}; re-run `alknet-firewall model prepare --format onnx`"
            )
        missing = [k for k in settings.reading.layers if k not in meta["layers"]]
        if missing:
            raise ConfigurationError(
                f"the ONNX export in {self.path} holds layers {meta['layers']}, not {missing}; "
                "export the codebook's layers with `alknet-firewall model prepare --format onnx`"
            )
        for key in ("chat_template", "system_prompt"):
            if meta.get(key) != getattr(settings.reading, key):
                raise ConfigurationError(
                    f"the ONNX export in {self.path} was made with {key}={meta.get(key)!r}, the "
                    f"settings ask for {getattr(settings.reading, key)!r}; re-export with these "
                    "settings"
                )
        self.meta = meta
        self.name = str(meta["name"])
        self.revision = str(meta["revision"])
        self.weights_digest = str(meta["weights_digest"])
        self.layers = tuple(settings.reading.layers)
        self.pooling = settings.reading.pooling
        self.hidden_size = int(meta["hidden_size"])
        self.feature_size = self.hidden_size * (2 if self.pooling == "both" else 1)
        self.total_layers = int(meta["total_layers"])
        self.max_tokens = settings.reading.max_tokens
        self.window_overlap = settings.reading.window_overlap
        self.precision = str(meta["precision"])
        self.dtype = self.precision
        self._prefix = [int(x) for x in meta["prefix"]]
        self._suffix = [int(x) for x in meta["suffix"]]
        self._pad_id = int(meta["pad_id"])
        self._outputs = [f"hidden_{k}" for k in self.layers]
        self.tokenizer = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.threads = settings.onnx.threads or usable_cores()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_mem_pattern = False  # shapes change every call
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # Idle pool threads sleep instead of spinning: the session is shared by every pool
        # worker, and spinning threads took the cores the other callers needed (2 callers on a
        # busy 2-core machine: 5.2 runs/s spinning, 11.5 without).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(self.path / MODEL_FILE), so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"onnxruntime could not load {self.path / MODEL_FILE}: {exc}") from exc
        self._warm = threading.Lock()

    # -- tokenisation ------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encs]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.tokenize(texts)]

    def _ids_and_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    # -- forward -------------------------------------------------------------------------------
    def _pool(self, plan: PoolPlan) -> list[np.ndarray]:
        seqs = plan.seqs
        width = max(len(x) for x in seqs)
        ids = np.full((len(seqs), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for r, x in enumerate(seqs):
            ids[r, : len(x)] = x
            mask[r, : len(x)] = 1
        hidden = self._session.run(self._outputs, {"input_ids": ids, "attention_mask": mask})
        return pool_numpy(plan, hidden)

    # -- lifecycle -----------------------------------------------------------------------------
    def init_worker(self, threads: int | None) -> None:
        """Nothing to do per thread: the one session's intra-op pool is shared."""

    def warmup(self) -> None:
        with self._warm:
            self.encode(["warm-up"])

    def describe(self) -> dict[str, Any]:
        return {
            **self._identity(),
            "source": self.meta.get("source", "onnx"),
            "backend": "onnx",
            "path": str(self.path),
            "dtype_reason": "onnx export precision",
            "device": "cpu",
            "threads": self.threads,
            "onnx_opset": self.meta.get("opset"),
            "cache_dir": str(self.settings.cache_dir or constants.cache_dir()),
        }

    def close(self) -> None:
        """Sessions free their memory with the object; nothing to release early."""


def pool_numpy(plan: PoolPlan, hidden: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The plan's rows (float32, in ``plan.rows`` order) from each layer's hidden states
    ``[len(plan.seqs), width, hidden]``: the numpy reduction of :class:`PoolPlan`."""
    if not len(hidden):
        return []
    mask = plan.mean_mask(np.shape(hidden[0])[1])
    denom = mask.sum(1, keepdims=True)
    seq_idx = np.arange(len(plan.seqs))
    r, a, n = plan.span_seq, plan.span_start, plan.span_len
    out = []
    for hs in hidden:
        hs = np.asarray(hs, dtype=np.float32)
        parts = []
        if plan.mean:
            parts.append(np.einsum("bt,bth->bh", mask, hs) / denom)
        if plan.last:
            parts.append(hs[seq_idx, plan.last_pos])
        rows = [np.concatenate(parts, axis=1)]
        if len(n):
            csum = np.cumsum(hs, axis=1, dtype=np.float64)
            csum = np.concatenate([np.zeros_like(csum[:, :1]), csum], axis=1)
            rows.append(((csum[r, a + n] - csum[r, a]) / n[:, None]).astype(np.float32))
        out.append(np.concatenate(rows))
    return out
