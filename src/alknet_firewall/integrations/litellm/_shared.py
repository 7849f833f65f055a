"""One firewall per process and per distinct settings, shared by every guardrail instance.

Built lazily on first use, in a thread (never on the event loop). Imports no litellm.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time

from ...config import Settings
from ...firewall import Firewall

__all__ = ["RETRY_BUILD_AFTER_S", "close_firewalls", "get_firewall"]

log = logging.getLogger(__name__)

#: Seconds before a failed firewall construction is tried again.
RETRY_BUILD_AFTER_S = 10.0


@dataclasses.dataclass
class _Cell:
    future: concurrent.futures.Future[Firewall]
    failed_at: float | None = None


_CELLS: dict[str, _Cell] = {}
_CELLS_LOCK = threading.Lock()


def _settings_key(settings: Settings) -> str:
    return settings.model_dump_json()


def _build(settings: Settings, cell: _Cell) -> None:
    try:
        fw = Firewall(settings)
    except BaseException as exc:  # any failure is reported to every waiter
        log.error("alknet-firewall could not be built: %s", exc)
        cell.failed_at = time.monotonic()
        cell.future.set_exception(exc)
    else:
        cell.future.set_result(fw)


async def get_firewall(settings: Settings) -> Firewall:
    """The process's firewall for ``settings``; the first call builds it in a thread.

    Concurrent callers share one construction; a cancelled caller does not cancel it. A failed
    construction is retried after :data:`RETRY_BUILD_AFTER_S` seconds.
    """
    key = _settings_key(settings)
    with _CELLS_LOCK:
        cell = _CELLS.get(key)
        if (
            cell is not None
            and cell.failed_at is not None
            and time.monotonic() - cell.failed_at >= RETRY_BUILD_AFTER_S
        ):
            cell = None
        start = cell is None
        if cell is None:
            cell = _Cell(concurrent.futures.Future())
            _CELLS[key] = cell
    if start:
        # A dedicated thread rather than the loop's executor: construction takes seconds and
        # must finish (and be cached) even when the request that started it is cancelled.
        threading.Thread(
            target=_build, args=(settings, cell), name="alknet-firewall-load", daemon=True
        ).start()
    if cell.future.done():
        return cell.future.result()
    return await asyncio.shield(asyncio.wrap_future(cell.future))


def close_firewalls(timeout: float = 30.0) -> None:
    """Close and forget every firewall built here (tests, hot reload)."""
    with _CELLS_LOCK:
        cells = list(_CELLS.values())
        _CELLS.clear()
    for cell in cells:
        if cell.future.done() and cell.future.exception() is None:
            cell.future.result().close(timeout)
