"""The ``alknet-firewall`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import FirewallError


def _settings(args: argparse.Namespace) -> Any:
    from .config import load_settings

    return load_settings(getattr(args, "config", None))


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, ensure_ascii=False) + "\n")


def cmd_model_prepare(args: argparse.Namespace) -> int:
    from .model import resolve

    loc = resolve(_settings(args).model)
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


def cmd_model_info(args: argparse.Namespace) -> int:
    from .model import load_model

    _print_json(load_model(_settings(args)).describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alknet-firewall",
        description="Screen untrusted LLM input with a small model's activations.",
    )
    parser.add_argument("--config", help="YAML settings file (default: $ALKNET_FIREWALL_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="prepare or describe the activation model")
    msub = model.add_subparsers(dest="model_command", required=True)
    msub.add_parser(
        "prepare", help="locate, convert and cache the model; print where"
    ).set_defaults(func=cmd_model_prepare)
    msub.add_parser("info", help="load the model and print a JSON description").set_defaults(
        func=cmd_model_info
    )
    for extend in _EXTENSIONS:
        extend(sub)
    return parser


#: Sub-command registrars added by other modules (detection, serving) without circular imports.
_EXTENSIONS: list[Callable[[Any], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except FirewallError as exc:
        sys.stderr.write(f"alknet-firewall: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
