"""Join or start Ray for ``model serve --engine ray`` and ``scan --engine ray``.

``ray.init(object_store_memory=...)`` raises a bare ``ValueError`` when a Ray cluster already
runs on the machine (``ray start``, ``RAY_ADDRESS``): ``ray.init()`` without an address joins
that cluster, and a joined cluster keeps its own object store. So the cluster Ray would join is
looked up first (:func:`running_cluster`); :func:`ray_init_kwargs` joins it, and starts a local
Ray with a bounded object store only when there is none. Importing this module loads no Ray.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import RaySettings
from ..errors import ConfigurationError

__all__ = [
    "DEFAULT_OBJECT_STORE_BYTES",
    "init_ray",
    "ray_init_kwargs",
    "running_cluster",
]


log = logging.getLogger(__name__)

#: Object store of a Ray started here when ``ray.object_store_memory`` is not set.
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024 * 1024


def ray_init_kwargs(r: RaySettings, running: str | None) -> dict[str, Any]:
    """``ray.init`` arguments: ``ray.address`` when set; else the cluster already running
    here (``running``, from :func:`running_cluster`), joined as it is; else a local Ray with
    an object store of ``ray.object_store_memory`` (512 MiB by default)."""
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if r.address:
        kwargs["address"] = r.address
    elif running:
        kwargs["address"] = running
        if r.object_store_memory:
            log.warning(
                "ray.object_store_memory is ignored: joining the Ray cluster already running at "
                "%s (it keeps its own object store)",
                running,
            )
    else:
        kwargs["object_store_memory"] = r.object_store_memory or DEFAULT_OBJECT_STORE_BYTES
    return kwargs


def running_cluster() -> str | None:
    """The address of the Ray cluster that ``ray.init()`` would join on this machine
    (``RAY_ADDRESS``, or the one ``ray start`` recorded), or ``None``."""
    try:
        from ray._private.services import get_ray_address_from_environment
    except ImportError:  # pragma: no cover - Ray moved its private helper
        import os

        return os.environ.get("RAY_ADDRESS") or None
    try:
        return get_ray_address_from_environment(None, None)
    except Exception as exc:  # a stale record of a cluster that is gone: start our own
        log.warning("could not look for a running Ray cluster (%s); starting one", exc)
        return None


def init_ray(r: RaySettings) -> None:
    """``ray.init`` per :func:`ray_init_kwargs`; Ray's own refusals become a
    :class:`~alknet_firewall.errors.ConfigurationError` that says what to set."""
    import ray

    kwargs = ray_init_kwargs(r, None if r.address else running_cluster())
    try:
        ray.init(**kwargs)
    except (ValueError, ConnectionError, RuntimeError) as exc:
        where = kwargs.get("address", "a new local Ray")
        raise ConfigurationError(
            f"could not start or join Ray ({where}): {exc}. Set ray.address to the cluster to "
            "join ('auto': the one running on this machine), or stop the running one "
            "(`ray stop`) to let alknet-firewall start its own"
        ) from None
