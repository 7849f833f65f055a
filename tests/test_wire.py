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


# --------------------------------------------------------------------------------------------
# Every field is validated before a request may join a batch (issue 19, item 2)
# --------------------------------------------------------------------------------------------
_LIMITS = wire.RequestLimits(max_windows=4, max_tokens=8, vocab_size=100)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"n_texts": 1, "windows": [[0, 0, 0, [100]]]}, "vocabulary"),
        ({"n_texts": 1, "windows": [[0, 0, 0, [10**30]]]}, "vocabulary"),
        ({"n_texts": 1, "windows": [[0, 0, 0, list(range(9))]]}, "max_tokens=8"),
        ({"n_texts": 1, "windows": [[0, 0, 0, [1]]] * 5}, "above 4"),
        ({"n_texts": 5, "windows": [[0, 0, 0, [1]]]}, "n_texts"),
        ({"texts": ["a"] * 5}, "above 4"),
        ({"n_texts": 1, "windows": [[0, -1, 0, [1]]]}, "index and start"),
        ({"n_texts": 1, "windows": [[0, 0, 2**31, [1]]]}, "index and start"),
        ({"n_texts": 1, "windows": [[False, 0, 0, [1]]]}, "integers"),
        ({"n_texts": 1.0, "windows": []}, "n_texts"),
        ({"n_texts": True, "windows": []}, "n_texts"),
        ({"n_texts": 1, "windows": [[0, 0, 0, [[1]]]]}, "integers"),
        ({"n_texts": 1, "windows": [[0, 0, 0, {"a": 1}]]}, "window 0"),
        ({"n_texts": 1, "windows": [[0, 0, 0, [1], "junk"]]}, "window 0"),
        ({"n_texts": 1, "windows": [[0, 0, 0, [1]]], "extra": {"a": [1]}}, "unknown field"),
        ({"protocol": True, "texts": []}, "protocol"),
        ({"texts": [], "n_texts": 0, "windows": []}, "either"),
        ({"texts": [], "layers": [8, 8]}, "twice"),
        ({"texts": [], "layers": [-1]}, "layers"),
        ({"texts": [], "identity": {"layers": 5}}, r"identity\.layers"),
        ({"texts": [], "identity": {"layers": [True]}}, r"identity\.layers"),
        ({"texts": [], "identity": {"name": {"nested": [1]}}}, r"identity\.name"),
        ({"texts": [], "identity": [1]}, "identity"),
    ],
)
def test_every_field_is_checked(body: object, words: str) -> None:
    with pytest.raises(wire.WireError, match=words):
        wire.decode_request(json.dumps(body).encode(), _LIMITS)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n_texts": 1, "windows": [[0, 0, 0, [NaN]]]}',
        b'{"n_texts": Infinity, "windows": []}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"texts": ["\xff"]}',
    ],
)
def test_bodies_that_are_not_plain_json_are_refused(raw: bytes) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.decode_request(raw, _LIMITS)
    assert len(str(info.value)) < 200  # never the body itself


def test_too_many_windows_is_too_large_not_bad() -> None:
    body = json.dumps({"n_texts": 1, "windows": [[0, 0, 0, [1]]] * 5}).encode()
    with pytest.raises(wire.WireTooLarge):
        wire.decode_request(body, _LIMITS)
    # Within the limits the same shape passes, at the vocabulary's last id.
    ok = wire.decode_request(
        json.dumps({"n_texts": 1, "windows": [[0, 0, 0, [99]]] * 4}).encode(), _LIMITS
    )
    assert len(ok["windows"]) == 4


def test_the_service_checks_ids_against_the_models_vocabulary() -> None:
    from alknet_firewall.modelserver.service import EncodeService

    model = _ServedFake()
    model.vocab_size = 1000  # type: ignore[attr-defined]
    service = EncodeService(model, max_request_windows=8)
    assert service.describe()["limits"]["vocab_size"] == 1000
    with pytest.raises(BadInputError, match="vocabulary"):
        service.parse(b'{"protocol":1,"n_texts":1,"windows":[[0,0,0,[1000]]]}')
    with pytest.raises(BadInputError, match=r"identity\.layers"):
        service.parse(b'{"texts":["x"],"identity":{"layers":5}}')
    with pytest.raises(InputTooLargeError):
        service.parse(json.dumps({"n_texts": 1, "windows": [[0, 0, 0, [1]]] * 9}).encode())
    assert service.parse(b'{"n_texts":1,"windows":[[0,0,0,[999]]]}').tokens == 1
    # 8 windows of 32 tokens, 8 bytes per id and 64 per window, plus 64 KiB.
    assert service.body_limit() == 8 * (32 * 8 + 64) + 65536
    assert service.body_limit(4096) == 4096


class _FailsOnMarker(_ServedFake):
    """Raises (as an out-of-vocabulary id did inside the real model) for a batch holding a
    window that starts at MARKER."""

    MARKER = 777_777

    def encode_token_windows(self, wins: list[Window], n_texts: int) -> WindowFeatures:
        if any(w.start == self.MARKER for w in wins):
            raise IndexError("index out of range in self (internal detail)")
        return super().encode_token_windows(wins, n_texts)


def test_a_failing_batch_fails_only_the_request_that_fails_alone() -> None:
    from alknet_firewall.modelserver.service import EncodeService

    model = _FailsOnMarker()
    service = EncodeService(model, max_request_windows=8)
    good = [Window(0, 0, 0, [1, 2, 3])]
    bad = [Window(0, 0, _FailsOnMarker.MARKER, [4])]
    jobs = [service.parse(wire.encode_request(w, 1)) for w in (good, bad, good)]
    with pytest.raises(IndexError):
        service.run(jobs)  # the batch as a whole fails
    out = service.run_each(jobs)
    assert isinstance(out[1], IndexError)
    for got in (out[0], out[2]):
        assert isinstance(got, WindowFeatures)
        np.testing.assert_array_equal(got.features[8], service.run([jobs[0]])[0].features[8])
    assert isinstance(service.run_each([jobs[1]])[0], IndexError)


def test_server_errors_never_carry_exception_text() -> None:
    from alknet_firewall.modelserver.service import error_reply

    status, code, message = error_reply(IndexError("index out of range /srv/secret/model.py"))
    assert (status, code) == (500, "internal_error")
    assert "secret" not in message and "IndexError" not in message and "ref " in message
    assert error_reply(BadInputError("window 0: token id 5 is outside")) == (
        400,
        "bad_input",
        "window 0: token id 5 is outside",
    )
