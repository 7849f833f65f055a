"""Batch isolation with the real model and the real pool: when a shared forward pass fails,
only the request that fails on its own gets an error (a generic one, never the exception
text); the valid request batched with it gets its features (issue 19, item 2).

Validation now stops every known bad input before it joins a batch, so the failure is made
here: the real model, wrapped so that a window starting at MARKER raises as an
out-of-vocabulary id did inside the model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from alknet_firewall.features import Window, WindowFeatures
from alknet_firewall.model import wire
from tests.integration_helpers import ServerThread, acquire_firewall, release_firewall
from tests.scaleout_helpers import screening_settings

pytestmark = pytest.mark.slow

MARKER = 777_777


class FailsOnMarker:
    """The real model, except that a forward pass holding a window at MARKER raises."""

    def __init__(self, model: Any) -> None:
        self._real = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def encode_token_windows(self, wins: list[Window], n_texts: int) -> WindowFeatures:
        if any(w.start == MARKER for w in wins):
            raise IndexError("index out of range in self (/srv/internal/embedding.py)")
        return self._real.encode_token_windows(wins, n_texts)


def _together(url: str, bodies: dict[str, bytes]) -> dict[str, httpx.Response]:
    """POST every body at once (a barrier releases the threads together)."""
    barrier = threading.Barrier(len(bodies), timeout=30)
    got: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        barrier.wait()
        got[name] = httpx.post(url + wire.ENCODE_PATH, content=bodies[name], timeout=60)

    threads = [threading.Thread(target=send, args=(name,)) for name in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert set(got) == set(bodies)
    return got


@pytest.fixture(scope="module")
def model() -> Iterator[Any]:
    fw = acquire_firewall()
    try:
        yield fw.model
    finally:
        release_firewall()


def test_only_the_failing_request_of_a_batch_fails(model: Any) -> None:
    from alknet_firewall.modelserver.app import ModelServer, create_model_app

    # One worker that waits 300 ms to fill a batch: concurrent requests share a forward pass.
    settings = screening_settings(model_server={"workers": 1, "max_wait_ms": 300})
    srv = ModelServer(settings, model=FailsOnMarker(model))
    wins = model.windows(model.tokenize(["What is the capital of France?"]))
    good = wire.encode_request(wins, 1, layers=model.layers)
    bad = wire.encode_request([Window(0, 0, MARKER, wins[0].content)], 1, layers=model.layers)
    alone = srv.service.run([srv.service.parse(good)])[0]
    shared_batches = 0
    try:
        with ServerThread(create_model_app(settings, server=srv)) as http:
            for _ in range(4):
                got = _together(http.url, {"good": good, "bad": bad})
                assert got["good"].status_code == 200, got["good"].text[:300]
                header, _ = wire.decode_features(got["good"].content)
                feats = wire.features_from_body(got["good"].content, WindowFeatures)
                for k in model.layers:
                    np.testing.assert_allclose(feats.features[k], alone.features[k], atol=1e-5)
                assert got["bad"].status_code == 500
                err = got["bad"].json()["error"]
                assert err["code"] == "internal_error"
                assert "IndexError" not in err["message"] and "/srv" not in err["message"]
                shared_batches += header["batch_requests"] == 2
    finally:
        srv.close()
    # The two requests did share a forward pass (else nothing was isolated).
    assert shared_batches >= 1
