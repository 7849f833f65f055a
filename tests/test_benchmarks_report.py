"""The benchmark harness's layout and report, without running any benchmark: the stored results
render to the stored page, the sections register in the documented order, and the GPU script
and the architectures stay free of the package."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import harness, report, run, targets
from benchmarks.schema import Results

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = (
    "latency",
    "breakdown",
    "throughput",
    "multiturn",
    "gateway",
    "baselines",
    "tfidf",
    "coldstart",
    "rss",
)


def test_stored_results_render_to_the_stored_page() -> None:
    """docs/benchmarks.md is what report.render makes of benchmarks/results.json (the analysis
    and GPU sections are kept from the page itself)."""
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text(encoding="utf-8"))
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    run.load_sections()
    assert report.render(results, page) == page


def test_sections_register_in_run_order() -> None:
    names = run.load_sections()
    assert tuple(n for n in names if n in BUILT_IN) == BUILT_IN
    by_name = {s.name: s for s in harness.sections()}
    assert [by_name[n].phase for n in BUILT_IN] == ["firewall"] * 5 + ["model"] * 2 + [
        "process"
    ] * 2
    # load-meter labels as in the stored results ("load" table)
    assert by_name["tfidf"].meter == "baseline tfidf"
    assert by_name["latency"].meter is None and by_name["baselines"].meter is None


@pytest.fixture
def extra_section() -> Iterator[str]:
    def render(results: Results) -> list[str]:
        return ["## Extra", "", f"value {results['extra']['value']}", ""]  # type: ignore[typeddict-item]

    def extra_targets(results: Results) -> list[harness.Target]:
        return [{"target": "extra", "measured": "1", "bound": "≤ 2", "met": True, "note": ""}]

    harness.section("extra", phase="model", order=65, render=render, targets=extra_targets)(
        lambda ctx: {"value": 42}
    )
    yield "extra"
    del harness._REGISTRY["extra"]


def test_a_registered_section_runs_renders_and_adds_targets(extra_section: str) -> None:
    assert [s.name for s in harness.sections()].index(extra_section) > 0
    results: Results = {"load": {}}
    ctx = harness.Context(args=None, prof=harness.QUICK, meter=harness.LoadMeter(), results=results)  # type: ignore[arg-type]
    sec = next(s for s in harness.sections() if s.name == extra_section)
    harness.run_section(sec, ctx)
    assert results["extra"] == {"value": 42}  # type: ignore[typeddict-item]
    assert "extra" in ctx.meter.sections
    assert [t["target"] for t in targets.evaluate_targets(results)] == ["extra"]
    stored = json.loads((ROOT / "benchmarks" / "results.json").read_text(encoding="utf-8"))
    md = report.render({**stored, "extra": {"value": 42}}, "")
    assert "## Extra\n\nvalue 42" in md
    assert md.index("## Extra") < md.index("## CPU use per section")


def test_gpu_script_and_architectures_import_no_package() -> None:
    script = ROOT / "benchmarks" / "gpu_bench.py"
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("g", {str(script)!r})
        m = importlib.util.module_from_spec(spec); sys.modules["g"] = m; spec.loader.exec_module(m)
        assert m.deberta_config("base").hidden_size == 768
        assert m.smollm2_config(8).num_hidden_layers == 8
        bad = [k for k in sys.modules if k.startswith(("alknet_firewall", "benchmarks"))]
        assert not bad, bad
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """A benchmarks entry point in this interpreter, from the repository root."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_cli_lists_the_sections_and_has_no_hidden_upstream_flag() -> None:
    for args in (("benchmarks/run.py", "--help"), ("-m", "benchmarks.run", "--help")):
        out = _run(*args)
        assert out.returncode == 0, out.stderr
        listed = "".join(out.stdout.split()).rsplit("subsetof:", 1)[1].split(",")
        assert [n for n in listed if n in BUILT_IN] == list(BUILT_IN)
    assert _run("benchmarks/run.py", "--fake-upstream", "1").returncode == 2
    up = _run("-m", "benchmarks.fake_upstream", "--help")
    assert up.returncode == 0 and "port" in up.stdout
