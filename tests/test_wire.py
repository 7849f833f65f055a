"""The activation wire protocol without a server: bodies round-trip exactly, malformed ones are
refused, identities compare key by key, and a model server's batch splits back per request."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from alknet_firewall.errors import BadInputError, CodebookMismatchError, InputTooLargeError
from alknet_firewall.features import Window, WindowFeatures
from alknet_firewall.model import wire
from tests.fakes import FakeModel


def _features(rows: int = 5, layers: tuple[int, ...] = (4, 8)) -> WindowFeatures:
    rng = np.random.default_rng(0)
    return WindowFeatures(
        features={k: rng.standard_normal((rows, 6)).astype(np.float32) for k in layers},
        text_index=np.array([0, 0, 1, 2, 2][:rows], dtype=np.int64),
        window_index=np.array([0, 1, 0, 0, 0][:rows], dtype=np.int64),
        token_start=np.array([0, 112, 0, 0, 3][:rows], dtype=np.int64),
        n_tokens=np.array([128, 20, 7, 9, 4][:rows], dtype=np.int64),
        n_texts=3,
        is_sub=np.array([False, False, False, False, True][:rows]),
    )


def test_features_round_trip_exactly() -> None:
    feats = _features()
    body = wire.encode_features(feats, server_ms=1.5)
    assert body[:4] == wire.MAGIC
    got = wire.features_from_body(body, WindowFeatures)
    assert got.n_texts == 3 and sorted(got.features) == [4, 8]
    for name in ("text_index", "window_index", "token_start", "n_tokens", "is_sub"):
        np.testing.assert_array_equal(getattr(got, name), getattr(feats, name))
    for k in feats.features:
        np.testing.assert_array_equal(got.features[k], feats.features[k])
    header, _ = wire.decode_features(body)
    assert header["server_ms"] == 1.5 and header["rows"] == 5


def test_only_requested_layers_are_sent() -> None:
    got = wire.features_from_body(wire.encode_features(_features(), [8]), WindowFeatures)
    assert list(got.features) == [8]


def test_empty_features_round_trip() -> None:
    got = wire.features_from_body(wire.encode_features(_features(0)), WindowFeatures)
    assert got.features[8].shape == (0, 6) and len(got.text_index) == 0


@pytest.mark.parametrize(
    "body",
    [b"", b"XXXX\x00\x00\x00\x00", struct.pack("<4sI", wire.MAGIC, 99) + b"{}"],
)
def test_bad_feature_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.features_from_body(body, WindowFeatures)


def test_truncated_body_is_refused() -> None:
    body = wire.encode_features(_features())
    with pytest.raises(wire.WireError, match="past the end"):
        wire.decode_features(body[:-64])


def test_requests_round_trip() -> None:
    wins = [Window(0, 0, 0, [1, 2, 3]), Window(1, 0, 0, []), Window(1, 1, 112, [9])]
    req = wire.decode_request(
        wire.encode_request(wins, 2, layers=[8], identity={"weights_digest": "sha256:x"})
    )
    assert req["windows"] == [(0, 0, 0, [1, 2, 3]), (1, 0, 0, []), (1, 1, 112, [9])]
    assert req["n_texts"] == 2 and req["layers"] == [8]
    assert req["identity"] == {"weights_digest": "sha256:x"}
    assert wire.decode_request(wire.encode_request(texts=["a", ""]))["texts"] == ["a", ""]


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"protocol": 2, "texts": []},
        {"texts": "abc"},
        {"n_texts": -1, "windows": []},
        {"n_texts": 1, "windows": [[0, 0, 0]]},
        {"n_texts": 1, "windows": [[1, 0, 0, [1]]]},  # text index out of range
        {"n_texts": 1, "windows": [[0, 0, 0, [-1]]]},
        {"n_texts": 1, "windows": [[0, 0, 0, [True]]]},
        {"n_texts": 1, "windows": [[0, 0, 0, [1.5]]]},
        {"texts": [], "layers": ["8"]},
    ],
)
def test_bad_requests_are_refused(data: object) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_request(json.dumps(data).encode())


def test_identity_problems_name_each_key() -> None:
    served = {"name": "m", "weights_digest": "sha256:a", "layers": [8], "max_tokens": 128}
    assert wire.identity_problems({"name": "m", "layers": [8]}, served, ("name", "layers")) == []
    problems = wire.identity_problems(
        {"weights_digest": "sha256:b", "layers": [4, 8], "pooling": "mean", "max_tokens": 128},
        served,
        ("weights_digest", "layers", "pooling", "max_tokens"),
    )
    assert len(problems) == 3
    assert "weights_digest" in problems[0] and "[4]" in problems[1] and "pooling" in problems[2]


# --------------------------------------------------------------------------------------------
# The server side, with the deterministic stand-in model
# --------------------------------------------------------------------------------------------
class _ServedFake(FakeModel):
    def tokenizer_json(self) -> bytes:
        return b'{"version": "1.0"}'

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "revision": self.revision,
            "weights_digest": self.weights_digest,
            "layers": list(self.layers),
            "pooling": self.pooling,
            "max_tokens": self.max_tokens,
            "window_overlap": self.window_overlap,
            "dtype": self.dtype,
            "hidden_size": self.hidden_size,
            "feature_size": self.feature_size,
        }


def test_a_batch_of_requests_splits_back_exactly() -> None:
    from alknet_firewall.modelserver.service import EncodeService

    model = _ServedFake()
    service = EncodeService(model, max_request_windows=8)
    texts_a = ["one two three", "ATTACK now please " * 12]
    texts_b = ["four five"]
    jobs = [
        service.parse(wire.encode_request(model.windows(model.tokenize(t)), len(t)))
        for t in (texts_a, texts_b)
    ]
    together = service.run(jobs)
    alone = [service.run([job])[0] for job in jobs]
    assert len(model.calls) == 3 and model.calls[0] == sum(model.calls[1:])
    for a, b in zip(together, alone, strict=True):
        assert a.n_texts == b.n_texts
        np.testing.assert_array_equal(a.text_index, b.text_index)
        np.testing.assert_array_equal(a.features[8], b.features[8])
    body = service.body(together[0], jobs[0])
    assert wire.features_from_body(body, WindowFeatures).n_texts == 2


def test_server_refuses_what_it_cannot_serve() -> None:
    from alknet_firewall.modelserver.service import EncodeService, error_status

    model = _ServedFake()
    service = EncodeService(model, max_request_windows=2)
    with pytest.raises(CodebookMismatchError):
        service.parse(wire.encode_request(texts=["x"], identity={"weights_digest": "other"}))
    with pytest.raises(CodebookMismatchError, match="layers"):
        service.parse(wire.encode_request(texts=["x"], layers=[3]))
    with pytest.raises(InputTooLargeError):
        service.parse(wire.encode_request(texts=["a", "b", "c"]))
    with pytest.raises(BadInputError, match="max_tokens"):
        service.parse(wire.encode_request([Window(0, 0, 0, list(range(40)))], 1))
    assert error_status(InputTooLargeError("x")) == (413, "input_too_large")
    assert error_status(CodebookMismatchError("x"))[0] == 409
    info = service.describe(max_batch_tokens=64)
    assert info["protocol"] == 1 and info["tokenizer"]["sha256"].startswith("sha256:")
