"""A real ``alknet-firewall serve`` process for the gateway tests, and an upstream that
records every request it receives (path, headers, body size) whatever the path."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration_helpers import (
    COMPLETION,
    child_env,
    codebook_path,
    free_port,
    wait_healthy,
)


def piped_output(proc: subprocess.Popen[str]) -> str:
    """What a process wrote to its stdout pipe (it is killed first if it still runs)."""
    proc.kill()
    return proc.communicate()[0]


class Serve:
    """``alknet-firewall serve`` in a subprocess, with a YAML config; output in a file."""

    def __init__(self, tmp: Path, server: dict[str, Any], **env: str) -> None:
        self.port = free_port()
        server = {"host": "127.0.0.1", "port": self.port, **server}
        cfg = tmp / f"serve-{self.port}.yaml"
        cfg.write_text(yaml.safe_dump({"server": server, "pool": {"workers": 1}}))
        self.log = tmp / f"serve-{self.port}.log"
        exe = Path(sys.executable).with_name("alknet-firewall")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "alknet_firewall.cli"]
        self.cmd = [
            *cmd,
            "--config",
            str(cfg),
            "serve",
            "--codebook",
            str(codebook_path()),
            "--log-level",
            "info",
        ]
        self.env = child_env(ALKNET_FIREWALL_POOL__WARMUP="false", **env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> Serve:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_healthy(
                self.proc, self.url + "/healthz", self.output, timeout=timeout, what="serve"
            )
        except BaseException:
            self.proc.kill()  # a server that never became healthy must not outlive the test
            self.proc.wait(10)
            raise
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("serve did not exit\n" + self.output()) from None


class EchoUpstream:
    """Raw ASGI upstream: records every request (method, raw path, headers, body size) on any
    path, and answers a chat completion (``/models...``: a model list)."""

    def __init__(self) -> None:
        self.recorded: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        raw = scope.get("raw_path") or scope["path"].encode()
        self.recorded.append(
            {
                "method": scope["method"],
                "path": raw.decode("latin-1"),
                "headers": headers,
                "size": size,
            }
        )
        path = scope["path"]
        body = {"object": "list", "data": []} if "/models" in path else COMPLETION
        content = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def paths(self) -> list[str]:
        return [r["path"] for r in self.recorded]


def raw_http(
    port: int,
    target: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request with the request target sent exactly as given (``..``, ``%2e``,
    backslashes: what ``curl --path-as-is`` sends); the status and the response body."""
    import socket

    head = {"host": f"127.0.0.1:{port}", "connection": "close", **(headers or {})}
    if body:
        head["content-length"] = str(len(body))
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    request = f"{method} {target} HTTP/1.1\r\n{lines}\r\n".encode("latin-1") + body
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), data[:200]
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def trickle(port: int, head: bytes, body: bytes, *, drain: bool = False) -> bytes:
    """Send ``head``, then ``body`` one byte per recv timeout (1 s) until the server answers
    (an error body ends in ``}}``), closes, or ``body`` is spent; the reply. ``drain``: then
    read on until the server closes the connection (at most 5 s)."""
    import socket

    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(1.0)
        for i in range(len(body)):
            try:
                sock.sendall(body[i : i + 1])
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            reply += data
            if b"}}" in reply:
                break
        if drain:
            sock.settimeout(5)
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except OSError:
                pass
    return reply


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
