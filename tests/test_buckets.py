"""Shape buckets and CUDA-graph bookkeeping, tested on the CPU up to the device boundary.

No GPU here: the capture itself is replaced by a recording fake; what is tested is which shapes
get padded to what, which shapes are captured, and the eager fallback.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from alknet_firewall.model.buckets import (
    CudaGraphs,
    batch_bucket,
    bucket_for,
    padded_shape,
    seq_buckets,
)


def test_seq_buckets_end_at_the_longest_window() -> None:
    assert seq_buckets(137) == (16, 32, 48, 64, 96, 128, 137)
    assert seq_buckets(64) == (16, 32, 48, 64)
    assert seq_buckets(10) == (10,)
    with pytest.raises(ValueError):
        seq_buckets(0)


@pytest.mark.parametrize(("n", "want"), [(1, 16), (16, 16), (17, 32), (65, 96), (137, 137)])
def test_bucket_for_picks_the_smallest_that_fits(n: int, want: int) -> None:
    assert bucket_for(n, seq_buckets(137)) == want


def test_longer_than_every_bucket_is_left_alone() -> None:
    assert bucket_for(500, (16, 32)) == 500


@pytest.mark.parametrize(("rows", "want"), [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 17)])
def test_batch_bucket_is_a_power_of_two_up_to_the_batch_size(rows: int, want: int) -> None:
    assert batch_bucket(rows, 16) == want


def test_padded_shape() -> None:
    buckets = seq_buckets(137)
    assert padded_shape([20, 70, 40], buckets, 16, pad_rows=False) == (3, 96)
    assert padded_shape([20, 70, 40], buckets, 16, pad_rows=True) == (4, 96)
    assert padded_shape([5], buckets, 16, pad_rows=True) == (1, 16)


class FakeTensor:
    def __init__(self, shape: tuple[int, int], value: float = 0.0) -> None:
        self.shape = shape
        self.value = value


class FakeReplay:
    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.replays = 0

    def replay(self, ids: Any, mask: Any) -> tuple[Any, ...]:
        assert ids.shape == self.shape
        self.replays += 1
        return ("graph", self.shape)


def make_graphs(max_graphs: int = 2, fail: set[tuple[int, int]] | None = None) -> Any:
    eager: list[tuple[int, int]] = []
    captured: dict[tuple[int, int], FakeReplay] = {}

    def forward(ids: Any, mask: Any) -> tuple[Any, ...]:
        eager.append(ids.shape)
        return ("eager", ids.shape)

    def capture(shape: tuple[int, int], ids: Any, mask: Any) -> FakeReplay:
        if fail and shape in fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        captured[shape] = FakeReplay(shape)
        return captured[shape]

    graphs = CudaGraphs(forward, "cuda:0", max_graphs=max_graphs, capture=capture)
    return graphs, eager, captured


def test_each_shape_is_captured_once_and_replayed() -> None:
    graphs, eager, captured = make_graphs()
    for _ in range(3):
        assert graphs(FakeTensor((1, 32)), FakeTensor((1, 32))) == ("graph", (1, 32))
    assert list(captured) == [(1, 32)] and captured[(1, 32)].replays == 3
    assert eager == []


def test_beyond_max_graphs_shapes_run_eagerly() -> None:
    graphs, eager, _captured = make_graphs(max_graphs=2)
    for shape in [(1, 16), (1, 32), (1, 64), (1, 16)]:
        graphs(FakeTensor(shape), FakeTensor(shape))
    assert graphs.shapes == [(1, 16), (1, 32)]
    assert eager == [(1, 64)]


def test_a_failed_capture_falls_back_to_eager_for_that_shape() -> None:
    graphs, _eager, _ = make_graphs(fail={(2, 32)})
    assert graphs(FakeTensor((2, 32)), FakeTensor((2, 32))) == ("eager", (2, 32))
    assert graphs(FakeTensor((2, 32)), FakeTensor((2, 32))) == ("eager", (2, 32))
    assert graphs.shapes == [] and not graphs.should_capture((2, 32))
    assert graphs(FakeTensor((1, 16)), FakeTensor((1, 16))) == ("graph", (1, 16))


# -- the torch path up to the device: bucketed batches give the same features on the CPU ------
@pytest.mark.slow
def test_bucketed_padding_keeps_features(embedded_location: Any, texts: list[str]) -> None:
    from alknet_firewall.config import ModelSettings
    from alknet_firewall.model import load_model

    plain = load_model(ModelSettings(dtype="float32", batch_size=2, reading={"layers": (4,)}))
    bucketed = load_model(
        ModelSettings(dtype="float32", batch_size=2, shape_buckets=True, reading={"layers": (4,)})
    )
    assert plain.describe()["shape_buckets"] == []
    longest = len(bucketed._prefix) + 128 + len(bucketed._suffix)
    assert bucketed.describe()["shape_buckets"][-1] == longest
    a, b = plain.encode(texts)[4], bucketed.encode(texts)[4]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


@pytest.mark.slow
def test_cuda_graphs_are_ignored_on_the_cpu(embedded_location: Any) -> None:
    from alknet_firewall.config import ModelSettings
    from alknet_firewall.model import load_model

    model = load_model(ModelSettings(dtype="float32", cuda_graphs=True, reading={"layers": (2,)}))
    assert model.describe()["cuda_graphs"] is False
    assert model.encode(["hello"])[2].shape == (1, model.hidden_size)
