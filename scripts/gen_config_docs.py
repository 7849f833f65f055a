#!/usr/bin/env python
"""Generate the settings reference of ``docs/configuration.md`` from the pydantic models.

Every field's ``Field(description=...)`` is its documentation; the tables between the
``BEGIN``/``END`` markers are written from them, so the reference never drifts from the code
(``tests/test_config_docs.py`` fails while it does). After changing a setting run:

    .venv/bin/python scripts/gen_config_docs.py          # rewrite the tables
    .venv/bin/python scripts/gen_config_docs.py --check  # exit 1 when they are out of date

A field whose default is computed at start-up (``default_factory`` reading the machine) names it
in words with ``json_schema_extra={"doc_default": "..."}``.
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

from alknet_firewall.config import PolicySettings, Settings

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


def render() -> str:
    """The generated reference: one table per section, then the top-level fields."""
    out: list[str] = []
    top: dict[str, FieldInfo] = {}
    for name, info in Settings.model_fields.items():
        ann = info.annotation
        section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if name == "policies":
            section = PolicySettings
        if section is None:
            top[name] = info
            continue
        title = f"`{name}`" if name != "policies" else "`policies.<name>`"
        out += [f"### {title}", ""]
        doc = (section.__doc__ or "").strip().split("\n\n")[0]
        if info.description:
            doc = info.description
        out += [" ".join(doc.split()), "", *_table(section.model_fields), ""]
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
