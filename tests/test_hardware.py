"""``model.dtype: auto``: which dtype a machine gets, and that the measurement is cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from alknet_firewall import hardware
from alknet_firewall.hardware import choose_dtype, decide

NO_AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
AMX = NO_AMX | {"amx_bf16", "amx_tile"}


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    hardware.clear_memo()


class Bench:
    def __init__(self, f32_s: float, b16_s: float, fail: bool = False) -> None:
        self.times = {"float32": f32_s, "bfloat16": b16_s}
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, dtype: str) -> float:
        self.calls.append(dtype)
        if self.fail:
            raise RuntimeError("no bf16 kernels")
        return self.times[dtype]


def test_decide_needs_a_clear_margin() -> None:
    assert decide(10.0, 5.0) == "bfloat16"
    assert decide(10.0, 8.5) == "bfloat16"
    assert decide(10.0, 9.0) == "float32"  # 10 % faster is within noise: keep float32
    assert decide(10.0, 13.0) == "float32"


def test_configured_dtypes_are_kept_and_never_measured(tmp_path: Path) -> None:
    bench = Bench(1.0, 0.1)
    for dtype in ("float32", "bfloat16"):
        got = choose_dtype(dtype, "cpu", bench=bench, cache_dir=tmp_path, flags=NO_AMX)
        assert (got.dtype, got.reason) == (dtype, "configured")
    assert bench.calls == []


def test_cuda_and_amx_choose_bfloat16_without_measuring(tmp_path: Path) -> None:
    bench = Bench(1.0, 2.0)  # would say float32 if it were asked
    assert choose_dtype("auto", "cuda:0", bench=bench, cache_dir=tmp_path).dtype == "bfloat16"
    got = choose_dtype("auto", "cpu", bench=bench, cache_dir=tmp_path, flags=AMX)
    assert (got.dtype, got.reason) == ("bfloat16", "amx")
    assert bench.calls == []


@pytest.mark.parametrize(
    ("f32", "b16", "want"), [(0.010, 0.014, "float32"), (0.010, 0.005, "bfloat16")]
)
def test_without_amx_the_measurement_decides(
    tmp_path: Path, f32: float, b16: float, want: str
) -> None:
    bench = Bench(f32, b16)
    got = choose_dtype("auto", "cpu", bench=bench, cache_dir=tmp_path, shape_tag="t", flags=NO_AMX)
    assert got.dtype == want
    assert got.reason == "measured"
    assert got.float32_ms == pytest.approx(f32 * 1000)
    assert sorted(bench.calls) == ["bfloat16", "float32"]
    assert want in got.describe()


def test_the_measurement_is_cached_per_process_and_on_disk(tmp_path: Path) -> None:
    bench = Bench(0.010, 0.014)
    first = choose_dtype(
        "auto", "cpu", bench=bench, cache_dir=tmp_path, shape_tag="a", flags=NO_AMX
    )
    again = choose_dtype(
        "auto", "cpu", bench=bench, cache_dir=tmp_path, shape_tag="a", flags=NO_AMX
    )
    assert again == first and len(bench.calls) == 2
    hardware.clear_memo()  # a new process: the file answers
    cached = choose_dtype(
        "auto", "cpu", bench=bench, cache_dir=tmp_path, shape_tag="a", flags=NO_AMX
    )
    assert (cached.dtype, cached.reason) == ("float32", "measured (cached)")
    assert len(bench.calls) == 2
    # Another model shape (or torch version, CPU) is measured on its own.
    choose_dtype("auto", "cpu", bench=bench, cache_dir=tmp_path, shape_tag="b", flags=NO_AMX)
    assert len(bench.calls) == 4


def test_a_failing_measurement_falls_back_to_float32(tmp_path: Path) -> None:
    got = choose_dtype(
        "auto", "cpu", bench=Bench(1, 1, fail=True), cache_dir=tmp_path, flags=NO_AMX
    )
    assert (got.dtype, got.reason) == ("float32", "fallback")


def test_cpu_facts_are_readable() -> None:
    assert hardware.usable_cores() >= 1
    assert isinstance(hardware.cpu_model(), str)
    assert hardware.has_amx(AMX) and not hardware.has_amx(NO_AMX)
