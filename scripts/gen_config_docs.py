#!/usr/bin/env python
"""Generate the settings reference of ``docs/configuration.md`` from the pydantic models.

Every field's ``Field(description=...)`` is its documentation; the tables between the
``BEGIN``/``END`` markers are written from them, so the reference never drifts from the code
(``tests/test_config_docs.py`` fails while it does). After changing a setting run:

    .venv/bin/python scripts/gen_config_docs.py          # rewrite the tables
    .venv/bin/python scripts/gen_config_docs.py --check  # exit 1 when they are out of date

A field whose default is computed at start-up (``default_factory`` reading the machine) names it
in words with ``json_schema_extra={"doc_default": "..."}``. A group of fields inside a section
(``model.reading``, ``model.onnx``) gets its own table below the section's, with its environment
variable prefix.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from alknet_firewall.config import LEGACY_MODEL_KEYS, ModelSettings, PolicySettings, Settings
from alknet_firewall.constants import ENV_PREFIX

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: settings reference (scripts/gen_config_docs.py) -->"
END = "<!-- END GENERATED: settings reference -->"

__all__ = ["BEGIN", "DOC", "END", "render", "update"]


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _default(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "doc_default" in extra:
        return str(extra["doc_default"])
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    if value is None:
        return "–"
    if isinstance(value, str) and value and " " not in value:
        return f"`{value}`"
    return "`" + json.dumps(_json(value), ensure_ascii=False, separators=(", ", ": ")) + "`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(fields: dict[str, FieldInfo]) -> list[str]:
    lines = ["| field | default | meaning |", "|---|---|---|"]
    for name, info in fields.items():
        lines.append(f"| `{name}` | {_cell(_default(info))} | {_cell(info.description or '')} |")
    return lines


def _group(info: FieldInfo) -> type[BaseModel] | None:
    ann = info.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _legacy_note() -> list[str]:
    moved: dict[str, list[str]] = {}
    for old, (group, _) in LEGACY_MODEL_KEYS.items():
        moved.setdefault(group, []).append(f"`{old}`")
    names = "; ".join(f"{', '.join(olds)} → `model.{group}.*`" for group, olds in moved.items())
    return [
        "Deprecated: the flat names of 0.1 still load (YAML, environment, keyword arguments) "
        f"with a `DeprecationWarning` naming the new one, until the next release: {names} "
        "(`onnx_path` is `onnx.path`, `backend_url` is `remote.url`; giving both names with "
        "different values is an error).",
        "",
    ]


def _section(path: str, model: type[BaseModel], doc: str, depth: int = 0) -> list[str]:
    """``path``'s heading, description and table, then one per group of fields inside it."""
    heading = "#" * (3 + depth) + f" `{path}`"
    out = [heading, "", " ".join(doc.split()), ""]
    if depth:
        env = ENV_PREFIX + path.upper().replace(".", "__")
        first = next(iter(model.model_fields)).upper()
        out += [f"Environment: `{env}__<FIELD>`, e.g. `{env}__{first}`.", ""]
    fields = {n: i for n, i in model.model_fields.items() if _group(i) is None}
    groups = {n: i for n, i in model.model_fields.items() if _group(i) is not None}
    if groups:
        listed = ", ".join(f"`{path}.{n}`" for n in groups)
        out += [f"Groups below: {listed}.", ""]
    out += [*_table(fields), ""]
    if model is ModelSettings:
        out += _legacy_note()
    for name, info in groups.items():
        group = _group(info)
        assert group is not None
        out += _section(f"{path}.{name}", group, info.description or "", depth + 1)
    return out


def render() -> str:
    """The generated reference: one table per section (and per group inside one), then the
    top-level fields."""
    out: list[str] = []
    top: dict[str, FieldInfo] = {}
    for name, info in Settings.model_fields.items():
        section = PolicySettings if name == "policies" else _group(info)
        if section is None:
            top[name] = info
            continue
        doc = info.description or (section.__doc__ or "").strip().split("\n\n")[0]
        out += _section("policies.<name>" if name == "policies" else name, section, doc)
    out += ["### top level", "", *_table(top)]
    return "\n".join(out)


def update(text: str) -> str:
    """``text`` (the whole document) with the generated block replaced."""
    head, sep, rest = text.partition(BEGIN)
    if not sep or END not in rest:
        raise SystemExit(f"{DOC} lacks the {BEGIN!r} / {END!r} markers")
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n\n{render()}\n\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="generate docs/configuration.md's settings tables")
    ap.add_argument("--check", action="store_true", help="exit 1 when the doc is out of date")
    args = ap.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    new = update(current)
    if args.check:
        if new != current:
            print(f"{DOC} is out of date: run scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    if new != current:
        DOC.write_text(new, encoding="utf-8")
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
