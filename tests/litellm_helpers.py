"""Helpers for the LiteLLM guardrail tests.

Two roles:

* Imported by the tests: :class:`Proxy` starts a real ``litellm`` proxy process on a free
  loopback port and always stops it (the whole process group).
* Imported by that proxy process (``general_settings.custom_auth: litellm_helpers.custom_auth``,
  with this directory on ``PYTHONPATH``): a database-free stand-in for LiteLLM virtual keys that
  gives each test key the team and metadata a real key would carry.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.integration_helpers import free_port, wait_healthy

REPO = Path(__file__).resolve().parents[1]
MASTER_KEY = "sk-test"

#: Test keys -> the UserAPIKeyAuth fields a DB-backed virtual key would have.
KEYS: dict[str, dict[str, Any]] = {
    MASTER_KEY: {},
    "sk-team-internal": {"team_id": "team-internal", "key_alias": "internal-app"},
    "sk-team-public": {"team_id": "team-public", "key_alias": "public-app"},
    "sk-key-meta": {
        "team_id": "team-public",
        "key_alias": "meta-app",
        "metadata": {"alknet_policy": "lenient"},
    },
    "sk-batch": {"key_alias": "batch-jobs"},
}


async def custom_auth(request: Any, api_key: str) -> Any:
    """LiteLLM ``custom_auth``: a fixed key table, no database."""
    from litellm.proxy._types import ProxyException, UserAPIKeyAuth

    fields = KEYS.get(api_key)
    if fields is None:
        raise ProxyException("invalid api key", type="auth_error", param="api_key", code=401)
    return UserAPIKeyAuth(api_key=api_key, **fields)


# --------------------------------------------------------------------------------------------
# Proxy process
# --------------------------------------------------------------------------------------------
def litellm_exe() -> str:
    exe = Path(sys.executable).with_name("litellm")
    if not exe.exists():  # pragma: no cover - the extra is not installed
        raise FileNotFoundError(f"{exe} not found; pip install 'alknet-firewall[litellm]'")
    return str(exe)


def proxy_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without ALKNET_FIREWALL_* settings, plus what the proxy needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_FIREWALL_")}
    for keep in ("ALKNET_FIREWALL_CACHE", "ALKNET_FIREWALL_GGUF"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    paths = [str(REPO / "src"), str(REPO / "tests")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        {
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    env.update(extra or {})
    return env


class Proxy:
    """A ``litellm --config`` process on 127.0.0.1; use as a context manager."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        ready_timeout: float = 120.0,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.env = proxy_env(env)
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Proxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        cmd = [litellm_exe(), "--config", str(self.config)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=str(REPO),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as a whole
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None
        wait_healthy(
            self.proc,
            f"{self.base_url}/health/liveliness",
            self.log_tail,
            timeout=self.ready_timeout,
            what="litellm",
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        # stragglers of the group (and the leader, if SIGTERM was not enough)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10.0)

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def client(self, key: str = MASTER_KEY, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            trust_env=False,
        )
