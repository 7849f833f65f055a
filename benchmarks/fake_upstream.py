"""A raw ASGI OpenAI stand-in that answers every request at once with a fixed body: the
upstream of the gateway benchmark.

    python -m benchmarks.fake_upstream PORT      # serves on 127.0.0.1:PORT until terminated
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

_FAKE_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "OK."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
_FAKE_MODELS = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model"}]}).encode()


async def fake_upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI OpenAI stand-in: answers every request at once with a fixed body."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        more = bool(msg.get("more_body"))
    body = _FAKE_MODELS if scope["method"] == "GET" else _FAKE_COMPLETION
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(
        fake_upstream_app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fake OpenAI upstream for the gateway benchmark.")
    p.add_argument("port", type=int, help="port on 127.0.0.1")
    serve(p.parse_args(argv).port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
